"""Counters and last-change times across refreshes."""

from __future__ import annotations

from dataclasses import replace

from exporter.jobs import Job, Phase, QueueClock
from exporter.tracker import JobTracker

T0 = 1_000_000.0


def job(
    job_id: str,
    phase: Phase = Phase.RUNNING,
    *,
    ok: int = 0,
    bad: int = 0,
    pending: int = 10,
    started: float | None = T0 - 100,
) -> Job:
    return Job(
        id=job_id,
        action="a",
        object="",
        status=phase.value,
        phase=phase,
        pending=pending,
        succeeded=ok,
        failed=bad,
        progress=0.0,
        started_at=started,
        completed_at=None,
    )


def test_baseline_history_is_not_counted() -> None:
    t = JobTracker(QueueClock.START_KNOWN)
    t.apply([job("1", Phase.COMPLETED, ok=5), job("2", ok=3)], T0, complete=True)
    assert sum(t.finished.values()) == 0
    assert sum(t.items.values()) == 0
    assert t.jobs["2"].last_change == T0 - 100  # first sight: its start time
    t.apply(
        [job("1", Phase.COMPLETED, ok=5), job("2", Phase.FAILED, ok=4, bad=2)],
        T0 + 10,
        complete=True,
    )
    assert t.finished == {("a", "failed"): 1}
    assert t.items == {("a", "succeeded"): 1, ("a", "failed"): 2}
    assert t.jobs["2"].last_change == T0 + 10


def test_new_jobs_after_baseline() -> None:
    t = JobTracker(QueueClock.START_KNOWN)
    t.apply([], T0, complete=True)
    t.apply(
        [
            job("new", Phase.COMPLETED, ok=7, bad=1, started=T0 + 5),
            job("late-history", Phase.COMPLETED, ok=9, started=T0 - 50),
            job("queued", Phase.QUEUED, started=None),
        ],
        T0 + 10,
        complete=True,
    )
    assert t.finished == {("a", "completed"): 1}
    assert t.items == {("a", "succeeded"): 7, ("a", "failed"): 1}
    assert t.jobs["queued"].last_change == T0 + 10  # no start time: now


def test_unchanged_job_keeps_last_change_and_decreases_are_ignored() -> None:
    t = JobTracker(QueueClock.START_KNOWN)
    t.apply([job("1", ok=5)], T0, complete=True)
    t.apply([job("1", ok=5)], T0 + 60, complete=True)
    assert t.jobs["1"].last_change == T0 - 100
    t.apply([job("1", ok=3)], T0 + 120, complete=True)
    assert sum(t.items.values()) == 0
    t.apply([job("1", ok=6)], T0 + 180, complete=True)
    assert t.items == {("a", "succeeded"): 3}  # from 3 to 6
    # A change to the progress ratio alone is not a change of counts or status.
    t.apply([replace(job("1", ok=6), progress=0.9)], T0 + 240, complete=True)
    assert t.jobs["1"].last_change == T0 + 180


def test_a_job_that_drops_out_and_returns_is_not_counted_twice() -> None:
    t = JobTracker(QueueClock.START_KNOWN)
    t.apply([job("1")], T0, complete=True)
    t.apply([job("1", Phase.COMPLETED, ok=10, pending=0)], T0 + 10, complete=True)
    t.apply([], T0 + 20, complete=True)
    assert "1" not in t.jobs
    t.apply([job("1", Phase.COMPLETED, ok=10, pending=0)], T0 + 30, complete=True)
    assert t.finished == {("a", "completed"): 1}
    assert t.items == {("a", "succeeded"): 10}
    assert "1" in t.jobs


def test_finish_counted_once_even_if_status_flaps() -> None:
    t = JobTracker(QueueClock.START_KNOWN)
    t.apply([job("1")], T0, complete=True)
    t.apply([job("1", Phase.FAILED)], T0 + 1, complete=True)
    t.apply([job("1", Phase.RUNNING)], T0 + 2, complete=True)
    t.apply([job("1", Phase.COMPLETED)], T0 + 3, complete=True)
    assert sum(t.finished.values()) == 1
