"""exporter.garbage: the collector's settings for a process that keeps many objects."""

from __future__ import annotations

import subprocess
import sys

from exporter import garbage


def test_tune_sets_the_thresholds() -> None:
    # In a process of its own: the settings are the whole interpreter's.
    code = "import gc; from exporter import garbage; garbage.tune(); print(*gc.get_threshold())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert [int(n) for n in out] == [garbage.YOUNG, garbage.MIDDLE, garbage.OLD]
    assert garbage.YOUNG > 700  # larger than the interpreter's default, which is the point
