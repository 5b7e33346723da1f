"""exporter.garbage: the collector's settings for a process that keeps many objects."""

from __future__ import annotations

import subprocess
import sys

from exporter import garbage


def test_tune_sets_the_thresholds_and_freezes_what_start_up_made() -> None:
    # In a process of its own: the settings are the whole interpreter's.
    code = (
        "import gc; from exporter import garbage; kept = [object() for _ in range(10)]; "
        "garbage.tune(); print(gc.get_threshold(), gc.get_freeze_count() > 0, "
        "gc.get_count()[0] < 100)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    threshold = (garbage.YOUNG, garbage.MIDDLE, garbage.OLD)
    assert " ".join(out) == f"{threshold} True True"
