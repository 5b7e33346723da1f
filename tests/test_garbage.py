"""exporter.garbage: the collector's settings for a process that keeps many objects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter import garbage
from exporter.config import load_config
from exporter.runtime import Runtime, Shard
from tests.helpers import config_from, serving_hooks


def test_tune_sets_the_thresholds_by_the_number_of_sources() -> None:
    # In a process of its own: the settings are the whole interpreter's.
    code = (
        "import gc; from exporter import garbage\n"
        "garbage.tune(0); print(*gc.get_threshold())\n"
        "garbage.tune(1000); print(*gc.get_threshold())\n"
        "garbage.tune(3); print(*gc.get_threshold())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    few = [garbage.YOUNG, garbage.MIDDLE, garbage.OLD]
    many = [garbage.YOUNG_PER_SOURCE * 1000, garbage.MIDDLE, garbage.OLD]
    # A reload to fewer sources lowers it again.
    assert [[int(n) for n in line.split()] for line in out] == [few, many, few]
    assert garbage.YOUNG > 700  # larger than the interpreter's default, which is the point


def test_the_young_threshold_grows_with_the_sources_past_the_floor() -> None:
    assert garbage.young_threshold(0) == garbage.YOUNG
    assert garbage.young_threshold(100) == garbage.YOUNG
    assert garbage.young_threshold(200) == 80_000
    assert garbage.young_threshold(1000) == 400_000


def test_the_serving_command_has_the_service_size_the_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The command owns its process and hands the service the tuning; the service also runs
    # inside test processes, which get no tuning and keep their collector as it is.
    assert serving_hooks(monkeypatch)["on_sources"] is garbage.tune


SOURCES = """sources:
""" + "".join(
    f"""  - name: fp-{i}
    platform: firstpromoter
    base_url: http://127.0.0.1:9/
    account_id: acc
    api_key: key
"""
    for i in range(6)
)


async def test_the_runtime_tells_how_many_sources_it_runs_at_start_and_on_reload(
    tmp_path: Path,
) -> None:
    told: list[int] = []
    path = tmp_path / "config.yaml"
    path.write_text(SOURCES)
    runtime = Runtime(load_config(path), path, on_sources=told.append)
    try:
        assert told == [6]
        path.write_text(SOURCES.split("  - name: fp-2")[0])  # two sources left
        await runtime.reload()
        assert told == [6, 2]
    finally:
        await runtime.close()


async def test_a_shard_counts_only_the_sources_it_owns() -> None:
    told: list[int] = []
    runtime = Runtime(config_from(SOURCES), shard=Shard(0, 2), on_sources=told.append)
    try:
        assert told == [len(runtime.sources)]
        assert 0 < told[0] < 6
    finally:
        await runtime.close()
