"""Counters and last-change times across refreshes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from exporter import eta
from exporter.collector import source_families
from exporter.jobs import STALL_AFTER, Failure, Job, Phase, QueueClock
from exporter.settings import Settings
from exporter.source import SourceSnapshot
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
    # Counted past the highest count seen (5), not from the dip: a stale answer adds nothing.
    assert t.items == {("a", "succeeded"): 1}
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


# --- the ETA: the pace the exporter saw -------------------------------------------------------


def running(done: int, total: int = 1000, *, progress: float | None = None) -> Job:
    """A running job with `done` of `total` items processed."""
    return replace(
        job("r", ok=done, pending=total - done),
        progress=done / total if progress is None else progress,
    )


def eta_of(t: JobTracker, at: float, job_id: str = "r") -> float | None:
    """The job's ETA as the collector and the landing page compute it."""
    tracked = t.jobs[job_id]
    return eta.completion(tracked.job, tracked.last_change, t.rates.get(job_id), at)


def watch(t: JobTracker, seen: list[tuple[float, Job]]) -> None:
    for moment, j in seen:
        t.apply([j], moment, complete=True)


def test_no_eta_until_two_observations_show_progress() -> None:
    t = JobTracker(QueueClock.START_KNOWN)
    t.apply([running(100)], T0, complete=True)
    assert eta_of(t, T0) is None  # one observation
    t.apply([running(100)], T0 + 30, complete=True)
    assert eta_of(t, T0 + 30) is None  # two, but no progress
    t.apply([running(160)], T0 + 60, complete=True)
    # 60 items in the 60 s since first seen: 1 a second, 840 left.
    assert eta_of(t, T0 + 60) == T0 + 60 + 840


def test_the_rate_is_the_average_over_the_last_ten_minutes() -> None:
    t = JobTracker(QueueClock.START_KNOWN)
    # 2 items a second for 20 minutes, then 10 a second for the last 10 minutes.
    watch(t, [(T0 + s, running(2 * s, 100_000)) for s in range(0, 1201, 15)])
    base = 2 * 1200
    watch(t, [(T0 + 1200 + s, running(base + 10 * s, 100_000)) for s in range(15, 601, 15)])
    at = T0 + 1800
    done = base + 6000
    estimate = eta_of(t, at)
    assert estimate is not None
    # The change of pace is placed to within the spacing of the points kept.
    assert (100_000 - done) / (estimate - at) == pytest.approx(10, rel=0.02)
    # What is kept stays small whatever the number of refreshes.
    assert len(t.rates["r"]) <= eta.MAX_POINTS


def test_one_slow_refresh_does_not_swing_the_eta() -> None:
    """A job that processes 5 items a second, watched every 15 s for ten minutes. Then one
    refresh sees it unchanged (a pause of 15 s), and another comes a minute late: each moves
    the estimated rate by its share of the ten minutes only."""
    t = JobTracker(QueueClock.START_KNOWN)
    watch(t, [(T0 + s, running(5 * s, 50_000)) for s in range(0, 601, 15)])

    def rate_at(at: float) -> float:
        """The pace the estimate implies: items left / seconds left."""
        estimate = eta_of(t, at)
        assert estimate is not None
        return t.jobs["r"].job.pending / (estimate - at)

    assert rate_at(T0 + 600) == pytest.approx(5.0)
    t.apply([running(3000, 50_000)], T0 + 615, complete=True)  # no progress in 15 s
    assert rate_at(T0 + 615) == pytest.approx(5.0 * 585 / 600, rel=0.01)  # not 0
    # The next refresh comes a minute late; the job kept its pace meanwhile.
    t.apply([running(3000 + 5 * 60, 50_000)], T0 + 675, complete=True)
    assert rate_at(T0 + 675) == pytest.approx(5.0 * 585 / 600, rel=0.02)


def test_firstpromoter_eta_from_the_percentage_when_counts_stand_still() -> None:
    t = JobTracker(QueueClock.CREATION_KNOWN)
    t.apply([running(10, 100, progress=0.1)], T0, complete=True)
    t.apply([running(10, 100, progress=0.3)], T0 + 60, complete=True)
    # 0.2 of the job in 60 s; 0.7 left.
    estimate = eta_of(t, T0 + 60)
    assert estimate == pytest.approx(T0 + 60 + 0.7 / (0.2 / 60))


def test_no_eta_for_queued_finished_stalled_or_unknown_jobs() -> None:
    t = JobTracker(QueueClock.START_KNOWN)
    moving = [running(0), running(50)]
    t.apply([moving[0]], T0, complete=True)
    t.apply([moving[1]], T0 + 60, complete=True)
    assert eta_of(t, T0 + 60) is not None
    # Still running but unchanged for the stall alert's 30 minutes: no estimate.
    t.apply([moving[1]], T0 + 60 + STALL_AFTER, complete=True)
    assert eta_of(t, T0 + 60 + STALL_AFTER) is None
    for phase in (Phase.QUEUED, Phase.COMPLETED, Phase.UNKNOWN):
        other = JobTracker(QueueClock.START_KNOWN)
        other.apply([replace(moving[0], phase=phase)], T0, complete=True)
        other.apply([replace(moving[1], phase=phase)], T0 + 60, complete=True)
        assert "r" not in other.rates, phase
        assert eta_of(other, T0 + 60) is None, phase


def test_counts_that_go_back_start_the_pace_again() -> None:
    t = JobTracker(QueueClock.START_KNOWN)
    watch(t, [(T0, running(500)), (T0 + 60, running(560))])
    assert eta_of(t, T0 + 60) is not None
    t.apply([running(20)], T0 + 120, complete=True)
    assert eta_of(t, T0 + 120) is None


def test_the_collector_serves_the_eta_of_running_jobs_only() -> None:
    t = JobTracker(QueueClock.START_KNOWN)
    queued = replace(job("q", Phase.QUEUED, started=None), pending=50)
    stalled_first = replace(job("s", ok=10, started=T0 - 7200), progress=0.1)
    stalled_then = replace(stalled_first, succeeded=20, progress=0.2)
    t.apply([running(0), queued, stalled_first], T0 - 3600, complete=True)
    t.apply([running(0), queued, stalled_then], T0 - 3540, complete=True)
    t.apply([running(60), queued, stalled_then], T0, complete=True)
    snapshot = SourceSnapshot(
        name="kp",
        platform="kizen",
        up=True,
        duration=0.1,
        refreshed_at=T0,
        last_success=T0,
        error=None,
        settings=Settings(),
        jobs=tuple(t.jobs.values()),
        actions=frozenset(t.actions),
        rates=dict(t.rates),
    )
    samples = {
        sample.labels["job_id"]: sample.value
        for family in source_families([snapshot], T0)
        if family.name == "bulk_job_estimated_completion_timestamp_seconds"
        for sample in family.samples
    }
    # 60 items between two refreshes 59 minutes apart (nothing is known of the pace between
    # them, so it is taken as even): 60/3540 a second, 940 left.
    assert samples == {"r": pytest.approx(T0 + 940 / (60 / 3540))}


# --- failure details, kept within the per-job series bound -------------------------------------


def failed(job_id: str, completed: float, errors: tuple[str, ...] = ("boom",)) -> Job:
    return replace(
        job(job_id, Phase.FAILED, started=completed - 10),
        completed_at=completed,
        failure=Failure(errors, "failures.csv"),
    )


def test_failure_details_are_kept_only_within_the_per_job_series_bound() -> None:
    t = JobTracker(QueueClock.START_KNOWN, max_details=2, detail_retention=3600)
    history = failed("old", T0 - 7200)
    recent = [failed(f"f{i}", T0 - 100 * i) for i in range(4)]
    t.apply([history, *recent], T0, complete=True)
    kept = {i for i, tr in t.jobs.items() if tr.job.failure is not None}
    assert kept == {"f0", "f1"}  # the newest two; none for the job finished 2 h ago
    assert t.jobs["old"].job.failure is None
    assert t.jobs["f3"].job.failure is None
    # Read again, the trimmed ones stay trimmed and nothing is rewritten.
    t.mark_saved()
    t.apply([history, *recent], T0 + 10, complete=True)
    assert t.dirty == set()
    # An hour later the two with details have aged out of the retention too.
    t.apply([history, *recent], T0 + 3700, complete=True)
    assert not any(tr.job.failure for tr in t.jobs.values())


def test_the_baseline_is_when_the_first_read_began() -> None:
    """A job that starts while a long first read pages (taken in 30 s after it began) and
    finishes later is counted: it is not history."""
    t = JobTracker(QueueClock.START_KNOWN)
    t.apply([], T0 + 30, complete=True, started=T0)
    assert t.baseline == T0
    t.apply([job("late", Phase.COMPLETED, ok=3, started=T0 + 10)], T0 + 60, complete=True)
    assert t.finished == {("a", "completed"): 1}
    assert t.items == {("a", "succeeded"): 3}
