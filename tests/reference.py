"""What the exporter's numbers must be, computed from the simulator's own jobs.

The tests that read the simulator through an exporter compare its answer with this: the
truth of the simulated accounts (what each job really is, whatever the platform's answers
look like in the world being simulated), observed at the same moments the exporter is
scraped, with the rules the metrics are documented by (docs/metrics.md): what is finished
at the baseline is history; after it a job reaching a terminal phase counts once, items count
by their increase, a job seen leaving the queue has its wait observed once.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from exporter.jobs import Phase, QueueClock, parse_timestamp
from exporter.platforms.firstpromoter import PHASES as FP_PHASES
from exporter.platforms.kizen import PHASES as KIZEN_PHASES
from exporter.simulator.world import FPBatch, KizenJob, World, fp_time, kizen_time
from exporter.tracker import Histogram
from tests.helpers import Labels, Samples

# The series compared: aggregates, counters, histograms and the history's last finishes.
COMPARED = (
    "bulk_jobs",
    "bulk_pending_items",
    "bulk_jobs_finished_total",
    "bulk_items_processed_total",
    "bulk_job_duration_seconds_bucket",
    "bulk_job_duration_seconds_count",
    "bulk_job_duration_seconds_sum",
    "bulk_job_queue_wait_seconds_count",
    "bulk_last_finished_timestamp_seconds",
)
# Floating-point sums and times: compared to a microsecond.
APPROXIMATE = ("bulk_job_duration_seconds_sum", "bulk_last_finished_timestamp_seconds")


@dataclass(frozen=True)
class Truth:
    """One job as it really is."""

    id: str
    action: str
    phase: Phase
    pending: int
    succeeded: int
    failed: int
    started: float | None
    completed: float | None


def _time(text: str | None) -> float | None:
    # The simulator publishes times as text, to the precision its platform does.
    return parse_timestamp(text, "time")


def kizen_truth(job: KizenJob) -> Truth:
    phase = KIZEN_PHASES.get(job.status, Phase.UNKNOWN)
    return Truth(
        job.id,
        job.action,
        phase,
        job.pending,
        job.success,
        job.failed,
        _time(kizen_time(job.started_at)),
        _time(kizen_time(job.completed_at)) if phase.terminal else None,
    )


def fp_truth(batch: FPBatch) -> Truth:
    phase = FP_PHASES.get(batch.status, Phase.UNKNOWN)
    basis = batch.selected_total if batch.selected_total is not None else batch.total
    return Truth(
        str(batch.id),
        batch.action_label,
        phase,
        max((basis or 0) - batch.processed - batch.failed, 0),
        batch.processed,
        batch.failed,
        _time(fp_time(batch.created_at)),
        _time(fp_time(batch.updated_at)) if phase.terminal else None,
    )


class Reference:
    """One source's expected numbers, from observations of the truth at each scrape."""

    def __init__(self, platform: str, source: str, clock: QueueClock) -> None:
        self.base = (("platform", platform), ("source", source))
        self.clock = clock
        self.seen: dict[str, Truth] = {}
        self.counted: set[str] = set()
        self.waited: set[str] = set()
        self.baseline = False
        self.finished: Counter[tuple[str, str]] = Counter()
        self.items: Counter[tuple[str, str]] = Counter()
        self.durations: dict[tuple[str, str], Histogram] = {}
        self.waits: Counter[str] = Counter()
        self.last_finished: dict[tuple[str, str], float] = {}
        self.current: list[Truth] = []

    def observe(self, truths: Iterable[Truth]) -> None:
        first = not self.baseline
        self.baseline = True
        self.current = list(truths)
        for job in self.current:
            if job.phase.terminal and job.completed is not None:
                key = (job.action, job.phase.value)
                self.last_finished[key] = max(self.last_finished.get(key, -math.inf), job.completed)
            prev = self.seen.get(job.id)
            self.seen[job.id] = job
            if prev is None and first:
                if job.phase.terminal:
                    self.counted.add(job.id)
                if job.phase is not Phase.QUEUED:
                    self.waited.add(job.id)
                continue
            self._items(job.action, job, prev)
            self._finish(job)
            self._leave_queue(job, prev.phase if prev else None)

    def _items(self, action: str, job: Truth, prev: Truth | None) -> None:
        self.items[(action, "succeeded")] += max(0, job.succeeded - (prev.succeeded if prev else 0))
        self.items[(action, "failed")] += max(0, job.failed - (prev.failed if prev else 0))

    def _finish(self, job: Truth) -> None:
        if not job.phase.terminal or job.id in self.counted:
            return
        self.counted.add(job.id)
        key = (job.action, job.phase.value)
        self.finished[key] += 1
        if job.started is not None and job.completed is not None:
            self.durations.setdefault(key, Histogram()).observe(
                max(0.0, job.completed - job.started)
            )

    def _leave_queue(self, job: Truth, before: Phase | None) -> None:
        if job.id in self.waited or job.phase in (Phase.QUEUED, Phase.UNKNOWN):
            return
        self.waited.add(job.id)
        if job.started is None:
            return
        if self.clock is QueueClock.CREATION_KNOWN or before is Phase.QUEUED:
            self.waits[job.action] += 1

    def _key(self, name: str, **labels: str) -> tuple[str, Labels]:
        return (name, tuple(sorted((*self.base, *labels.items()))))

    def samples(self) -> Samples:
        """The expected samples, zeros left out."""
        out: Samples = {}
        jobs: Counter[tuple[str, str]] = Counter()
        pending: Counter[str] = Counter()
        for job in self.current:
            jobs[(job.action, job.phase.value)] += 1
            if job.phase in (Phase.QUEUED, Phase.RUNNING):
                pending[job.action] += job.pending
        for (action, phase), n in jobs.items():
            out[self._key("bulk_jobs", action=action, phase=phase)] = n
        for action, n in pending.items():
            out[self._key("bulk_pending_items", action=action)] = n
        for (action, phase), n in self.finished.items():
            out[self._key("bulk_jobs_finished_total", action=action, phase=phase)] = n
        for (action, result), n in self.items.items():
            out[self._key("bulk_items_processed_total", action=action, result=result)] = n
        for (action, phase), histogram in self.durations.items():
            for le, cumulative in histogram.cumulative():
                name = "bulk_job_duration_seconds_bucket"
                out[self._key(name, action=action, phase=phase, le=le)] = cumulative
            count = sum(histogram.counts)
            out[self._key("bulk_job_duration_seconds_count", action=action, phase=phase)] = count
            out[self._key("bulk_job_duration_seconds_sum", action=action, phase=phase)] = (
                histogram.total
            )
        for action, n in self.waits.items():
            out[self._key("bulk_job_queue_wait_seconds_count", action=action)] = n
        for (action, phase), when in self.last_finished.items():
            name = "bulk_last_finished_timestamp_seconds"
            out[self._key(name, action=action, phase=phase)] = when
        return {k: v for k, v in out.items() if v}


class WorldReference:
    """The expected numbers of both sources of a simulated world (`kz` and `fp`).

    lingering: as an incremental reader sees the world between two full reads: a finished
    batch deleted from the account is still known as it last was (only a complete list, or
    a 404 when read by id, is evidence that a job is gone; a finished batch is not read by
    id again), until `full_read` says a full read took it in."""

    def __init__(self, world: World, *, lingering: bool = False) -> None:
        self.world = world
        self.lingering = lingering
        self.kizen = Reference("kizen", "kz", QueueClock.START_KNOWN)
        self.fp = Reference("firstpromoter", "fp", QueueClock.CREATION_KNOWN)
        self._fp_known: dict[str, Truth] = {}

    def observe(self) -> None:
        self.kizen.observe(kizen_truth(j) for j in self.world.kizen)
        now = {str(b.id): fp_truth(b) for b in self.world.fp.values()}
        if self.lingering:
            left = {i: t for i, t in self._fp_known.items() if i not in now and t.phase.terminal}
            now = {**left, **now}
        self._fp_known = now
        self.fp.observe(now.values())

    def full_read(self) -> None:
        """A full read took the whole list in: deleted batches are forgotten."""
        present = {str(b.id) for b in self.world.fp.values()}
        self._fp_known = {i: t for i, t in self._fp_known.items() if i in present}
        self.fp.current = [t for t in self.fp.current if t.id in present]

    def samples(self) -> Samples:
        return {**self.kizen.samples(), **self.fp.samples()}


def compared(samples: Samples) -> Samples:
    """An exporter's samples that the reference speaks of, zeros left out."""
    return {k: v for k, v in samples.items() if k[0] in COMPARED and v}


def differences(got: Samples, expected: Samples) -> dict[tuple[str, Labels], tuple[object, object]]:
    """Samples that differ: (got, expected); floating sums and times to a microsecond."""
    out: dict[tuple[str, Labels], tuple[object, object]] = {}
    for key in set(got) | set(expected):
        a, b = got.get(key), expected.get(key)
        if a is not None and b is not None and key[0] in APPROXIMATE:
            if math.isclose(a, b, rel_tol=0, abs_tol=1e-6 * max(1.0, abs(b) / 1e9) + 1e-6):
                continue
        elif a == b:
            continue
        out[key] = (a, b)
    return out
