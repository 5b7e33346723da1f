"""Shared test helpers: parsing exposition text, building configurations, tool lookup."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import Config, parse_config
from exporter.simulator import Credentials

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
