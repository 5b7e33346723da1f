"""Job duration and queue-wait histograms, the last finish per action and phase, skipped rows
and bulk_history_loaded: unit tests on JobTracker, then over real HTTP against the simulator,
then the demo's world, which the dashboards' histogram panels depend on."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from exporter.demo import DEMO_TICK, Demo
from exporter.jobs import Job, Phase, QueueClock
from exporter.platforms import firstpromoter, kizen
from exporter.simulator import Fault
from exporter.simulator.world import World
from exporter.tracker import BUCKETS, Histogram, JobTracker
from tests.conftest import ExporterFactory, SimHandle
from tests.helpers import (
    Samples,
    add_kizen_history,
    eventually,
    one,
    scrape,
    select,
)

T0 = 1_000_000.0
UPLOAD = "custom_object_upload"
# The documented bucket bounds (docs/metrics.md), written out rather than read from the code.
DOCUMENTED_LE = (
    "1.0",
    "5.0",
    "15.0",
    "30.0",
    "60.0",
    "120.0",
    "300.0",
    "600.0",
    "1200.0",
    "1800.0",
    "3600.0",
    "7200.0",
    "14400.0",
    "28800.0",
    "86400.0",
    "+Inf",
)
KZ = {"platform": "kizen", "source": "kz"}
FP = {"platform": "firstpromoter", "source": "fp"}
BOTH = pytest.mark.parametrize("clock", list(QueueClock), ids=lambda c: c.name)


def job(
    job_id: str,
    phase: Phase = Phase.RUNNING,
    *,
    started: float | None = T0 - 100,
    completed: float | None = None,
    action: str = "a",
) -> Job:
    return Job(
        id=job_id,
        action=action,
        object="",
        status=phase.value,
        phase=phase,
        pending=0 if phase.terminal else 10,
        succeeded=0,
        failed=0,
        progress=0.0,
        started_at=started,
        completed_at=completed,
    )


def done(job_id: str, started: float, completed: float, phase: Phase = Phase.COMPLETED) -> Job:
    return job(job_id, phase, started=started, completed=completed)


def observed(histograms: dict[Any, Histogram]) -> dict[Any, tuple[int, float]]:
    """key -> (count, sum) of every histogram with an observation."""
    return {k: (sum(h.counts), h.total) for k, h in histograms.items() if sum(h.counts)}


def bucket(value: float) -> str:
    """The `le` of the first cumulative bucket a value lands in."""
    h = Histogram()
    h.observe(value)
    return next(le for le, n in h.cumulative() if n)


# --- buckets -------------------------------------------------------------------------------


def test_buckets_are_the_documented_ones() -> None:
    assert tuple(le for le, _ in Histogram().cumulative()) == DOCUMENTED_LE
    assert tuple(f"{float(b)}" for b in BUCKETS) == DOCUMENTED_LE[:-1]
    # `le` is inclusive: a value on a bound lands in that bound's bucket.
    assert bucket(0) == "1.0"
    assert bucket(1) == "1.0"
    assert bucket(1.001) == "5.0"
    assert bucket(120) == "120.0"
    assert bucket(86400) == "86400.0"
    assert bucket(86400.5) == "+Inf"
    h = Histogram()
    for v in (3, 3, 100, 1e6):
        h.observe(v)
    assert h.cumulative()[1] == ("5.0", 2.0)
    assert h.cumulative()[5] == ("120.0", 3.0)
    assert h.cumulative()[-2] == ("86400.0", 3.0)
    assert h.cumulative()[-1] == ("+Inf", 4.0)
    assert (sum(h.counts), h.total) == (4, 1_000_106.0)


# --- durations -----------------------------------------------------------------------------


@BOTH
def test_duration_observed_once_per_finish_with_its_value(clock: QueueClock) -> None:
    t = JobTracker(clock)
    t.apply([job("1"), job("2", started=T0 - 50)], T0, complete=True)
    assert observed(t.durations) == {}
    finished = [
        done("1", T0 - 100, T0 + 20),  # 120 s: the 120 bucket's bound
        done("2", T0 - 50, T0 + 25, Phase.FAILED),  # 75 s
        done("3", T0 + 5, T0 + 28, Phase.CANCELLED),  # new since the baseline, first seen done
    ]
    t.apply(finished, T0 + 30, complete=True)
    expected = {
        ("a", "completed"): (1, 120.0),
        ("a", "failed"): (1, 75.0),
        ("a", "cancelled"): (1, 23.0),
    }
    assert observed(t.durations) == expected
    assert t.durations[("a", "completed")].cumulative()[4:6] == [("60.0", 0.0), ("120.0", 1.0)]
    assert t.durations[("a", "cancelled")].cumulative()[2:4] == [("15.0", 0.0), ("30.0", 1.0)]
    # The same jobs again, incrementally and in full reads: nothing more.
    t.apply(finished[:1], T0 + 60, complete=False)
    t.apply(finished, T0 + 90, complete=True)
    t.apply(finished, T0 + 120, complete=True, protect={"2"})
    assert observed(t.durations) == expected
    # The same jobs as bulk_jobs_finished_total.
    assert t.finished == {k: n for k, (n, _) in expected.items()}


@BOTH
def test_history_is_never_observed(clock: QueueClock) -> None:
    t = JobTracker(clock)
    t.apply(
        [done("old", T0 - 500, T0 - 400), done("old-failed", T0 - 90, T0 - 1, Phase.FAILED)],
        T0,
        complete=True,
    )
    t.apply(
        [
            done("old", T0 - 500, T0 - 400),
            done("old-failed", T0 - 90, T0 - 1, Phase.FAILED),
            # First seen in a later full read, but finished before the baseline...
            done("late-history", T0 - 300, T0 - 200),
            # ... or started before it (it was not among the jobs the baseline saw running).
            done("started-before", T0 - 300, T0 + 30),
            # Neither: a job of its own, finished after the baseline.
            done("new", T0 + 10, T0 + 40),
        ],
        T0 + 60,
        complete=True,
    )
    assert observed(t.durations) == {("a", "completed"): (1, 30.0)}
    assert t.finished == {("a", "completed"): 1}


@BOTH
def test_history_from_a_background_full_read_after_an_active_baseline(clock: QueueClock) -> None:
    """A cold start whose full read did not fit: the active jobs are the baseline, the full
    read (begun before them) arrives later with the history."""
    t = JobTracker(clock)
    t.begin_sync()
    t.apply([job("running")], T0, complete=False)  # the active read: the baseline
    t.apply([done("running", T0 - 100, T0 + 15)], T0 + 15, complete=False)  # incremental
    full = [
        job("running"),  # older than what the incremental read saw: protected
        done("h1", T0 - 900, T0 - 800),
        done("h2", T0 - 700, T0 - 600, Phase.FAILED),
    ]
    t.apply(full, T0 + 20, complete=True, protect=t.touched)
    assert observed(t.durations) == {("a", "completed"): (1, 115.0)}
    assert t.jobs["running"].job.phase is Phase.COMPLETED
    assert set(t.jobs) == {"running", "h1", "h2"}
    # The history still gives the last finish of its phase.
    assert t.last_finished == {("a", "completed"): T0 + 15, ("a", "failed"): T0 - 600}


@BOTH
def test_a_status_flap_is_observed_once(clock: QueueClock) -> None:
    t = JobTracker(clock)
    t.apply([job("1")], T0, complete=True)
    t.apply([done("1", T0 - 100, T0 + 10)], T0 + 10, complete=True)
    t.apply([job("1")], T0 + 20, complete=True)  # running again (a retry, a stale page)
    t.apply([done("1", T0 - 100, T0 + 500)], T0 + 500, complete=True)
    t.apply([done("1", T0 - 100, T0 + 900, Phase.FAILED)], T0 + 900, complete=True)
    assert observed(t.durations) == {("a", "completed"): (1, 110.0)}
    assert sum(t.finished.values()) == 1


@BOTH
def test_a_job_that_drops_out_and_returns_is_observed_once(clock: QueueClock) -> None:
    t = JobTracker(clock)
    t.apply([job("1"), job("2")], T0, complete=True)
    t.apply([done("1", T0 - 100, T0 + 10), job("2")], T0 + 10, complete=True)
    t.apply([], T0 + 20, complete=True)  # both drop out of the list
    assert t.jobs == {}
    # 1 returns as it was; 2 returns finished: it finished while out of sight.
    t.apply([done("1", T0 - 100, T0 + 10), done("2", T0 - 100, T0 + 25)], T0 + 30, complete=True)
    t.apply([], T0 + 40, complete=False, gone={"1", "2"})  # a by-id read says gone
    t.apply([done("1", T0 - 100, T0 + 10), done("2", T0 - 100, T0 + 25)], T0 + 50, complete=True)
    assert observed(t.durations) == {("a", "completed"): (2, 235.0)}


def test_no_duration_without_both_times() -> None:
    t = JobTracker(QueueClock.START_KNOWN)
    t.apply([job("q", Phase.QUEUED, started=None)], T0, complete=True)
    # Cancelled while queued: finished, but it never started.
    t.apply([job("q", Phase.CANCELLED, started=None, completed=T0 + 5)], T0 + 10, complete=True)
    t.apply([job("x", Phase.FAILED, started=T0 + 11, completed=None)], T0 + 20, complete=True)
    assert t.finished == {("a", "cancelled"): 1, ("a", "failed"): 1}
    assert observed(t.durations) == {}


# --- queue waits ---------------------------------------------------------------------------


def test_kizen_queue_wait_is_started_at_minus_first_seen_queued() -> None:
    t = JobTracker(QueueClock.START_KNOWN)
    t.apply([job("at-baseline", Phase.QUEUED, started=None)], T0, complete=True)
    queued = job("q", Phase.QUEUED, started=None)
    t.apply([queued], T0 + 10, complete=True)  # first seen queued
    # Kizen's `initialize` is still queued; `started_at` may appear (and move) meanwhile.
    t.apply([job("q", Phase.QUEUED, started=T0 + 15)], T0 + 20, complete=True)
    assert observed(t.queue_waits) == {}
    t.apply(
        [job("q", started=T0 + 35), job("at-baseline", started=T0 + 12)], T0 + 40, complete=True
    )
    # q: 35 - 10 = 25 s; at-baseline: seen queued at the baseline, T0: 12 s.
    assert observed(t.queue_waits) == {"a": (2, 37.0)}
    assert t.queue_waits["a"].cumulative()[2:4] == [("15.0", 1.0), ("30.0", 2.0)]
    t.apply(
        [done("q", T0 + 35, T0 + 90), done("at-baseline", T0 + 12, T0 + 95)],
        T0 + 100,
        complete=True,
    )
    assert observed(t.queue_waits) == {"a": (2, 37.0)}


def test_firstpromoter_queue_wait_is_first_seen_running_minus_created_at() -> None:
    t = JobTracker(QueueClock.CREATION_KNOWN)
    t.apply([job("at-baseline", Phase.QUEUED, started=T0 - 30)], T0, complete=True)
    t.apply([job("p", Phase.QUEUED, started=T0 + 5)], T0 + 10, complete=True)
    t.apply([job("p", Phase.QUEUED, started=T0 + 5)], T0 + 40, complete=True)
    assert observed(t.queue_waits) == {}
    t.apply([job("p", started=T0 + 5), job("at-baseline", started=T0 - 30)], T0 + 70, complete=True)
    # p: 70 - 5 = 65 s; at-baseline: 70 + 30 = 100 s.
    assert observed(t.queue_waits) == {"a": (2, 165.0)}
    assert t.queue_waits["a"].cumulative()[4:6] == [("60.0", 0.0), ("120.0", 2.0)]
    t.apply([done("p", T0 + 5, T0 + 80)], T0 + 80, complete=True)
    assert observed(t.queue_waits) == {"a": (2, 165.0)}


def test_first_seen_running_after_the_baseline() -> None:
    """FirstPromoter knows the creation time: observed. Kizen never saw it queued: not."""
    fp, kz = JobTracker(QueueClock.CREATION_KNOWN), JobTracker(QueueClock.START_KNOWN)
    for t in (fp, kz):
        t.apply([], T0, complete=True)
        t.apply([job("r", started=T0 + 8), done("d", T0 + 9, T0 + 15)], T0 + 20, complete=True)
    # Running first seen at T0+20, created T0+8: 12 s; finished first seen: 20 - 9 = 11 s.
    assert observed(fp.queue_waits) == {"a": (2, 23.0)}
    assert observed(kz.queue_waits) == {}


@BOTH
def test_never_for_a_job_running_at_the_baseline(clock: QueueClock) -> None:
    t = JobTracker(clock)
    t.apply([job("r", started=T0 - 50), done("d", T0 - 90, T0 - 10)], T0, complete=True)
    t.apply([job("r", Phase.QUEUED, started=T0 - 50)], T0 + 10, complete=True)  # a flap
    t.apply([job("r", started=T0 + 15)], T0 + 20, complete=True)
    t.apply([done("r", T0 - 50, T0 + 30)], T0 + 30, complete=True)
    assert observed(t.queue_waits) == {}


@BOTH
def test_queue_wait_once_through_flaps_and_returns(clock: QueueClock) -> None:
    kizen_clock = clock is QueueClock.START_KNOWN

    def at(job_id: str, phase: Phase, started: float) -> Job:
        # Kizen: no started_at while queued; FirstPromoter: created_at, always the same.
        if kizen_clock:
            return job(job_id, phase, started=None if phase is Phase.QUEUED else started)
        return job(job_id, phase, started=T0 + 1)

    t = JobTracker(clock)
    t.apply([], T0, complete=True)
    t.apply([at("1", Phase.QUEUED, 0), at("2", Phase.QUEUED, 0)], T0 + 10, complete=True)
    # 1 starts; 2 drops out of the list while queued.
    t.apply([at("1", Phase.RUNNING, T0 + 30)], T0 + 40, complete=True)
    t.apply([at("1", Phase.QUEUED, 0)], T0 + 50, complete=True)  # 1 flaps back
    t.apply(
        [at("1", Phase.RUNNING, T0 + 55), at("2", Phase.RUNNING, T0 + 60)],
        T0 + 70,
        complete=True,
    )
    t.apply([at("1", Phase.COMPLETED, T0 + 55)], T0 + 80, complete=True)
    # Each job once. Kizen: 30 - 10 and 60 - 10 (2 was first seen queued at T0+10).
    # FirstPromoter: 40 - 1 and 70 - 1 (first seen running minus created).
    expected = 20.0 + 50.0 if kizen_clock else 39.0 + 69.0
    assert observed(t.queue_waits) == {"a": (2, expected)}


# --- last finish ---------------------------------------------------------------------------


def test_last_finished_is_the_newest_completion_of_every_known_job() -> None:
    t = JobTracker(QueueClock.START_KNOWN)
    t.apply([], T0 - 1000, complete=False)
    assert t.last_finished == {}
    t = JobTracker(QueueClock.START_KNOWN)
    t.apply(
        [
            done("h1", T0 - 900, T0 - 400),
            done("h2", T0 - 900, T0 - 100),
            done("h3", T0 - 900, T0 - 300),
            done("f", T0 - 900, T0 - 500, Phase.FAILED),
            job("r"),
            job("other-action", action="b"),
        ],
        T0,
        complete=True,
    )
    # History included; no cancelled job known, so no cancelled entry; none for action b.
    assert t.last_finished == {("a", "completed"): T0 - 100, ("a", "failed"): T0 - 500}
    t.apply([done("r", T0 - 100, T0 + 50)], T0 + 60, complete=False)
    # An older job first seen later does not move it back.
    t.apply([done("older", T0 - 990, T0 - 950, Phase.FAILED)], T0 + 70, complete=False)
    assert t.last_finished == {("a", "completed"): T0 + 50, ("a", "failed"): T0 - 500}
    # Forgetting jobs does not forget when the last one finished.
    t.apply([], T0 + 80, complete=True)
    assert t.last_finished == {("a", "completed"): T0 + 50, ("a", "failed"): T0 - 500}


# --- over HTTP -----------------------------------------------------------------------------


def histogram(s: Samples, name: str, **labels: str) -> dict[str, float]:
    """One histogram series: its cumulative buckets by `le`, plus `count` and `sum`."""
    out = {dict(k)["le"]: v for k, v in select(s, f"{name}_bucket", **labels).items()}
    out["count"] = one(s, f"{name}_count", **labels)
    out["sum"] = one(s, f"{name}_sum", **labels)
    return out


def histogram_series(s: Samples) -> Samples:
    """The histograms' samples that are not zero (every known action has zero histograms,
    so that rate() sees its first observation)."""
    names = ("bulk_job_duration_seconds", "bulk_job_queue_wait_seconds")
    return {k: v for k, v in s.items() if k[0].startswith(names) and v != 0}


@pytest.mark.parametrize("reads", ["incremental", "full"])
async def test_histograms_and_last_finish_over_http(
    sim: SimHandle, exporter: ExporterFactory, reads: str
) -> None:
    now = time.time()
    w = sim.world
    for started, completed in ((now - 5000, now - 4000), (now - 3000, now - 2500)):
        w.add_kizen_job(
            status="completed", pending=0, success=5, started_at=started, completed_at=completed
        )
    w.add_kizen_job(
        status="failed", pending=0, failed=5, started_at=now - 6000, completed_at=now - 5900
    )
    running = w.add_kizen_job(status="in_progress", pending=10, started_at=now - 100)
    queued = w.add_kizen_job(status="queued", pending=10)
    w.add_fp_batch(
        status="completed", selected_total=5, processed=5, created_at=now - 5000, updated_at=now
    )
    batch = w.add_fp_batch(status="in_progress", selected_total=10, created_at=now - 1000)
    pending = w.add_fp_batch(status="pending", selected_total=10, created_at=now - 30)
    extra = "    incremental: false\n" if reads == "full" else ""
    client = await exporter(kizen_extra=extra, fp_extra=extra)

    before = time.time()
    s = await scrape(client)
    after = time.time()
    # The baseline: nothing observed; the history's last finishes are known.
    assert histogram_series(s) == {}
    assert one(s, "bulk_history_loaded", **KZ) == one(s, "bulk_history_loaded", **FP) == 1
    last = "bulk_last_finished_timestamp_seconds"
    assert one(s, last, **KZ, action=UPLOAD, phase="completed") == pytest.approx(now - 2500)
    assert one(s, last, **KZ, action=UPLOAD, phase="failed") == pytest.approx(now - 5900)
    assert select(s, last, **KZ, phase="cancelled") == {}
    assert one(s, last, **FP, phase="completed") == pytest.approx(now, abs=0.002)
    assert select(s, last, **FP, phase="failed") == {}

    started = time.time()
    queued.status, queued.started_at = "in_progress", started
    running.status, running.pending, running.success = "completed", 0, 10
    running.completed_at = now + 150  # 250 s after it started
    pending.status = "in_progress"
    batch.status, batch.updated_at = "failed", now  # 1000 s after its creation
    seen = time.time()
    s = await scrape(client)
    seen_after = time.time()

    duration = histogram(s, "bulk_job_duration_seconds", **KZ, action=UPLOAD, phase="completed")
    assert tuple(duration)[:-2] == DOCUMENTED_LE
    assert (duration["120.0"], duration["300.0"], duration["+Inf"]) == (0, 1, 1)
    assert duration["count"] == 1
    assert duration["sum"] == pytest.approx(250, abs=1e-3)
    observed = select(s, "bulk_job_duration_seconds_count", **KZ)
    assert {dict(k)["phase"] for k, v in observed.items() if v} == {"completed"}
    duration = histogram(s, "bulk_job_duration_seconds", **FP, phase="failed")
    assert (duration["600.0"], duration["1200.0"], duration["count"]) == (0, 1, 1)
    assert duration["sum"] == pytest.approx(1000, abs=0.002)
    assert sum(1 for v in select(s, "bulk_job_duration_seconds_count", **FP).values() if v) == 1

    # Kizen: started_at minus when first seen queued (the baseline scrape).
    wait = histogram(s, "bulk_job_queue_wait_seconds", **KZ, action=UPLOAD)
    assert tuple(wait)[:-2] == DOCUMENTED_LE
    assert wait["count"] == 1
    assert started - after - 1e-3 <= wait["sum"] <= started - before + 1e-3
    # FirstPromoter: when first seen running minus created_at.
    wait = histogram(s, "bulk_job_queue_wait_seconds", **FP)
    assert (wait["15.0"], wait["30.0"], wait["60.0"], wait["count"]) == (0, 0, 1, 1)
    assert seen - (now - 30) - 2e-3 <= wait["sum"] <= seen_after - (now - 30) + 2e-3

    assert one(s, last, **KZ, action=UPLOAD, phase="completed") == pytest.approx(now + 150)
    assert one(s, last, **FP, phase="failed") == pytest.approx(now, abs=0.002)

    # Nothing observed twice, whatever is read again.
    observed_once = histogram_series(s)
    for _ in range(2):
        assert histogram_series(await scrape(client)) == observed_once


async def test_history_read_in_the_background_is_never_observed(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    now = time.time()
    add_kizen_history(sim.world, 40)
    sim.world.add_kizen_job(
        status="failed", pending=0, started_at=now - 7100, completed_at=now - 7000, at_end=True
    )
    running = sim.world.add_kizen_job(status="in_progress", pending=10, started_at=now - 60)
    sim.sim.latency["kizen"] = 0.2
    # 5 pages at 0.2 s, one at a time: more than the 1 s timeout; the active jobs come first.
    client = await exporter(
        fp=False,
        defaults="  timeout: 1s\n",
        kizen_extra="    page_size: 10\n    max_concurrency: 1\n",
    )
    s = await scrape(client)
    assert one(s, "bulk_up", **KZ) == 1
    assert one(s, "bulk_history_loaded", **KZ) == 0
    assert select(s, "bulk_last_finished_timestamp_seconds") == {}

    running.status, running.pending, running.completed_at = "completed", 0, now

    async def history_loaded() -> Samples | None:
        s = await scrape(client)
        return s if one(s, "bulk_history_loaded", **KZ) == 1 else None

    # A scrape every quarter second: back-to-back scrapes would spend the rate-limit bucket
    # (100 tokens) that the background read shares, and a busy machine would then starve it.
    s = await eventually(history_loaded, "the background full read taken in", interval=0.25)
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="completed") == 41
    # Only the job that finished after the baseline; the background read's 41 are history.
    assert one(s, "bulk_jobs_finished_total", **KZ, action=UPLOAD, phase="completed") == 1
    duration = histogram(s, "bulk_job_duration_seconds", **KZ, action=UPLOAD, phase="completed")
    assert duration["count"] == 1
    assert duration["sum"] == pytest.approx(60, abs=1e-3)
    assert set(select(s, "bulk_job_duration_seconds_count", phase="failed").values()) == {0}
    # ... but they tell when the last job of each phase finished.
    last = "bulk_last_finished_timestamp_seconds"
    assert one(s, last, **KZ, phase="completed") == pytest.approx(now)
    assert one(s, last, **KZ, phase="failed") == pytest.approx(now - 7000)


async def test_history_loaded_once_the_first_full_read_succeeds(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    sim.sim.set_fault("kizen", Fault(status=403))
    client = await exporter()
    s = await scrape(client)
    assert (one(s, "bulk_up", **KZ), one(s, "bulk_history_loaded", **KZ)) == (0, 0)
    assert (one(s, "bulk_up", **FP), one(s, "bulk_history_loaded", **FP)) == (1, 1)
    sim.sim.set_fault("kizen", None)
    s = await scrape(client)
    assert (one(s, "bulk_up", **KZ), one(s, "bulk_history_loaded", **KZ)) == (1, 1)


def hostile_pages(sim: SimHandle) -> tuple[bytes, bytes]:
    """A Kizen page and a FirstPromoter list, each with one good row among bad ones:
    Kizen 3 not_an_object, 3 missing_id, 3 bad_field; FirstPromoter 2, 2 and 3."""
    good_kizen = sim.world.add_kizen_job(status="in_progress", pending=5).to_json()
    other = "0b6f8b2e-1111-4111-8111-00000000000"
    no_id = {k: v for k, v in good_kizen.items() if k != "id"}
    kizen_rows: list[object] = [
        "not a row",
        42,
        None,
        no_id,
        {**good_kizen, "id": None},
        {**good_kizen, "id": ""},
        {**good_kizen, "id": "x" * 101},
        {**good_kizen, "id": other + "1", "success_count": 2**53 + 1},
        {**good_kizen, "id": other + "2", "started_at": "yesterday"},
        good_kizen,
    ]
    page = {"count": len(kizen_rows), "next": None, "previous": None, "results": kizen_rows}
    good_fp = sim.world.add_fp_batch(status="in_progress").to_json()
    fp_rows: list[object] = [
        "not a row",
        [good_fp],
        {k: v for k, v in good_fp.items() if k != "id"},
        {**good_fp, "id": ""},
        {**good_fp, "id": str(good_fp["id"])},
        {**good_fp, "id": 10**101},
        {**good_fp, "id": 9999, "processed_count": -1},
        good_fp,
    ]
    return json.dumps(page).encode(), json.dumps(fp_rows).encode()


def skip_warnings(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    return [
        (r.fields["source"], r.fields["count"])  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "skipped malformed rows"
    ]


async def test_rows_skipped_by_reason_and_logged_once_per_refresh(
    sim: SimHandle, exporter: ExporterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    kizen_page, fp_list = hostile_pages(sim)
    lists = frozenset({"list"})
    sim.sim.set_fault("kizen", Fault(status=200, body=kizen_page, endpoints=lists))
    sim.sim.set_fault("firstpromoter", Fault(status=200, body=fp_list, endpoints=lists))
    # Kizen read whole every time: one list request a refresh. FirstPromoter incremental: its
    # active list (the hostile one) and the progress map.
    client = await exporter(kizen_extra="    incremental: false\n")
    caplog.set_level(logging.WARNING, logger="exporter")
    skipped = "bulk_rows_skipped_total"
    expected = {
        "kizen": {"not_an_object": 3, "missing_id": 3, "bad_field": 3},
        "firstpromoter": {"not_an_object": 2, "missing_id": 2, "bad_field": 3},
    }
    for refresh in (1, 2, 3):
        s = await scrape(client)
        for labels in (KZ, FP):
            counts = {
                dict(k)["reason"]: v
                for k, v in select(s, skipped, **labels, endpoint="list").items()
            }
            assert counts == {r: n * refresh for r, n in expected[labels["platform"]].items()}
            assert len(select(s, skipped, **labels)) == 3  # the list endpoint only
            # The good row still counts.
            assert one(s, "bulk_jobs", **labels, phase="running") == 1
        assert sorted(skip_warnings(caplog)) == [("fp", 7), ("kz", 9)], refresh
        caplog.clear()


async def test_skipped_rows_logged_once_per_refresh_when_a_full_read_lands(
    sim: SimHandle, exporter: ExporterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A refresh that takes in a finished background full read and makes its own incremental
    read sees the bad rows twice, and logs them once."""
    _, fp_list = hostile_pages(sim)
    sim.sim.set_fault(
        "firstpromoter", Fault(status=200, body=fp_list, endpoints=frozenset({"list"}))
    )
    client = await exporter(kizen=False, defaults="  full_sync_interval: 1ms\n")
    caplog.set_level(logging.WARNING, logger="exporter")
    for _ in range(4):
        await scrape(client)
        assert [source for source, _ in skip_warnings(caplog)] == ["fp"]
        caplog.clear()


# --- the demo ------------------------------------------------------------------------------


def observations(tracker: JobTracker) -> tuple[int, int]:
    def total(hs: dict[Any, Histogram]) -> int:
        return sum(sum(h.counts) for h in hs.values())

    return total(tracker.durations), total(tracker.queue_waits)


def test_the_demo_feeds_both_histograms_of_both_platforms_within_a_minute() -> None:
    """The demo's world, stepped by hand on a simulated clock at the demo's tick and read
    whole every 15 s (prometheus/prometheus.yml) or 30 s, from whenever the exporter's first
    scrape happens (any of the first three minutes, or ten minutes in): within a minute of that
    baseline each platform has observed at least one duration and one queue wait, so the
    dashboards' histogram panels have data."""
    demo = Demo()
    world: World = demo.running.simulator.world
    clock = [time.time()]
    world.clock = lambda: clock[0]
    window = 60
    # (first scrape, scrape interval) -> a Kizen and a FirstPromoter tracker.
    trackers = {
        (start, interval): (
            JobTracker(QueueClock.START_KNOWN),
            JobTracker(QueueClock.CREATION_KNOWN),
        )
        for start in [*range(0, 181, 5), 600]
        for interval in (15, 30)
    }
    for second in range(600 + window + 1):
        due = [
            pair
            for (start, interval), pair in trackers.items()
            if start <= second <= start + window and (second - start) % interval == 0
        ]
        if due:
            # What the exporter's full read maps the simulator's rows to.
            rows = [kizen.parse_row(j.to_json()) for j in world.kizen]
            progress = {str(b.id): float(b.percent) for b in world.fp.values()}
            batches = [firstpromoter.parse_row(b.to_json(), progress) for b in world.fp.values()]
            for kz, fp in due:
                kz.apply(rows, clock[0], complete=True)
                fp.apply(batches, clock[0], complete=True)
        clock[0] += DEMO_TICK
        world.step()
    empty = {
        key: (platform, what)
        for key, pair in trackers.items()
        for platform, tracker in zip(("kizen", "firstpromoter"), pair, strict=True)
        for what, histograms in (
            ("duration", tracker.durations),
            ("queue wait", tracker.queue_waits),
        )
        if not any(sum(h.counts) for h in histograms.values())
    }
    assert not empty, f"(first scrape, interval) with an empty histogram: {empty}"
