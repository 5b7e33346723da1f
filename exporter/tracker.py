"""Per-source memory across scrapes: every job's last record, when it last changed, counters.

The first successful refresh is the baseline: what is already finished then is history and
never counted. After it, a job reaching completed/failed/cancelled counts once, and items count
by the increase of each job's succeeded and failed numbers between sightings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from exporter.jobs import Job

# How long a job that dropped out of the list is remembered, so that if it shows up again
# (rows shift between pages, a filter flaps) its finish and items are not counted twice.
FORGET_AFTER = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class TrackedJob:
    job: Job
    last_change: float


@dataclass(slots=True)
class _Gone:
    tracked: TrackedJob
    counted: bool
    since: float


class JobTracker:
    def __init__(self) -> None:
        self.jobs: dict[str, TrackedJob] = {}
        self.baseline: float | None = None
        self.finished: Counter[tuple[str, str]] = Counter()
        self.items: Counter[tuple[str, str]] = Counter()
        self.actions: set[str] = set()
        self._counted: set[str] = set()
        self._gone: dict[str, _Gone] = {}

    def apply(self, jobs: Iterable[Job], now: float, *, complete: bool) -> None:
        """Take in one refresh's jobs. `complete`: they are the whole list; the rest is gone."""
        first = self.baseline is None
        if first:
            self.baseline = now
        seen: set[str] = set()
        for job in jobs:
            seen.add(job.id)
            self.actions.add(job.action)
            self._take(job, now, first)
        if complete:
            for job_id in [j for j in self.jobs if j not in seen]:
                self._forget(job_id, now)
        self._prune(now)

    def _take(self, job: Job, now: float, first: bool) -> None:
        prev = self.jobs.get(job.id)
        if prev is None and job.id in self._gone:
            gone = self._gone.pop(job.id)
            prev = self.jobs[job.id] = gone.tracked
            if gone.counted:
                self._counted.add(job.id)
        if prev is None:
            self.jobs[job.id] = TrackedJob(job, job.started_at if job.started_at else now)
            history = first or (
                job.phase.terminal
                and job.started_at is not None
                and self.baseline is not None
                and job.started_at < self.baseline
            )
            if history:
                if job.phase.terminal:
                    self._counted.add(job.id)
                return
            self._count_items(job.action, job.succeeded, job.failed)
            self._count_finish(job)
            return
        if prev.job == job:
            return
        self._count_items(
            job.action,
            max(0, job.succeeded - prev.job.succeeded),
            max(0, job.failed - prev.job.failed),
        )
        self._count_finish(job)
        changed = not job.same_state(prev.job)
        self.jobs[job.id] = TrackedJob(job, now if changed else prev.last_change)

    def _count_items(self, action: str, succeeded: int, failed: int) -> None:
        if succeeded:
            self.items[(action, "succeeded")] += succeeded
        if failed:
            self.items[(action, "failed")] += failed

    def _count_finish(self, job: Job) -> None:
        if job.phase.terminal and job.id not in self._counted:
            self._counted.add(job.id)
            self.finished[(job.action, job.phase.value)] += 1

    def _forget(self, job_id: str, now: float) -> None:
        tracked = self.jobs.pop(job_id)
        counted = job_id in self._counted
        self._counted.discard(job_id)
        self._gone[job_id] = _Gone(tracked, counted, now)

    def _prune(self, now: float) -> None:
        if not self._gone:
            return
        expired = [k for k, g in self._gone.items() if now - g.since > FORGET_AFTER]
        for job_id in expired:
            del self._gone[job_id]
