"""Shared test helpers: parsing exposition text, building configurations, tool lookup."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import Config, parse_config
from exporter.logs import JsonFormatter, LogfmtFormatter
from exporter.simulator import Credentials
from exporter.simulator.world import World

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def select(samples: Samples, name: str, **labels: str) -> dict[Labels, float]:
    """Samples of `name` whose labels include `labels`."""
    return {
        key: value
        for (sample_name, key), value in samples.items()
        if sample_name == name and all(dict(key).get(k) == v for k, v in labels.items())
    }


def one(samples: Samples, name: str, **labels: str) -> float:
    found = select(samples, name, **labels)
    assert len(found) == 1, f"expected one {name}{labels}, found {found}"
    return next(iter(found.values()))


def source_yaml(
    kizen_url: str | None,
    fp_url: str | None,
    creds: Credentials | None = None,
    defaults: str = "",
    kizen_extra: str = "",
    fp_extra: str = "",
) -> str:
    c = creds or Credentials()
    parts = ["defaults:\n  timeout: 5s\n" + defaults, "sources:"]
    if kizen_url:
        parts.append(
            f"""  - name: kz
    platform: kizen
    base_url: {kizen_url}
    business_id: {c.kizen_business_id}
    user_id: {c.kizen_user_id}
    api_key: {c.kizen_api_key}
{kizen_extra}"""
        )
    if fp_url:
        parts.append(
            f"""  - name: fp
    platform: firstpromoter
    base_url: {fp_url}
    account_id: {c.fp_account_id}
    api_key: {c.fp_api_key}
{fp_extra}"""
        )
    return "\n".join(parts)


def config_from(text: str, env: Mapping[str, str] | None = None) -> Config:
    return parse_config(text, filename="test.yaml", env=env or {})


def require_tool(name: str) -> str:
    """The path of an external tool; a skip locally when missing, a failure in CI."""
    # Tools installed with the dev extras live beside the interpreter, maybe not on PATH.
    path = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if path is None:
        message = f"{name} is not installed (make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextmanager
def capture_logs() -> Iterator[io.StringIO]:
    """Everything logged meanwhile, at debug level, formatted both as logfmt and as JSON."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers = [logging.StreamHandler(stream), logging.StreamHandler(stream)]
    handlers[0].setFormatter(LogfmtFormatter())
    handlers[1].setFormatter(JsonFormatter())
    level = root.level
    root.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield stream
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(level)


async def promtool_check_metrics(text: str) -> str:
    """Run `promtool check metrics` on exposition text; fail on any finding. Returns its output."""
    promtool = require_tool("promtool")
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def add_kizen_history(world: World, n: int) -> None:
    """`n` Kizen jobs that completed over two hours ago (history at any baseline, past the
    default retention), appended at the end of the list as old jobs are."""
    now = time.time()
    for i in range(n):
        world.add_kizen_job(
            status="completed",
            pending=0,
            success=5,
            started_at=now - 9000 + i,
            completed_at=now - 8000 + i,
            at_end=True,
        )
