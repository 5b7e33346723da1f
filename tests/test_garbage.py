"""exporter.garbage: the collector's settings for a process that keeps many objects."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exporter import cli, garbage


def test_tune_sets_the_thresholds() -> None:
    # In a process of its own: the settings are the whole interpreter's.
    code = "import gc; from exporter import garbage; garbage.tune(); print(*gc.get_threshold())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert [int(n) for n in out] == [garbage.YOUNG, garbage.MIDDLE, garbage.OLD]
    assert garbage.YOUNG > 700  # larger than the interpreter's default, which is the point


def test_the_serving_command_tunes_the_collector_before_the_service_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The command owns its process; the service also runs inside test processes, whose
    # collector it must leave alone.
    calls: list[str] = []

    class Service:
        def __init__(self, **_: object) -> None:
            calls.append("service")

        async def run(self) -> None:
            calls.append("run")

    monkeypatch.setattr(garbage, "tune", lambda: calls.append("tune"))
    monkeypatch.setattr(cli, "Service", Service)
    assert cli.main(["--demo"], env={}) == 0
    assert calls == ["service", "tune", "run"]
