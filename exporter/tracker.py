"""Per-source memory across scrapes: every job's last record, when it last changed, counters.

The first successful refresh is the baseline: what is already finished then is history and
never counted. After it, a job reaching completed/failed/cancelled counts once, and items count
by the increase of each job's succeeded and failed numbers between sightings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
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
        # Ids taken in since a background full read began: newer than what that read saw.
        self.touched: set[str] = set()

    def begin_sync(self) -> None:
        """A background full read starts: from now on, note what incremental reads update."""
        self.touched = set()

    @property
    def active_ids(self) -> list[str]:
        return [job_id for job_id, t in self.jobs.items() if not t.job.phase.terminal]

    def apply(
        self,
        jobs: Iterable[Job],
        now: float,
        *,
        complete: bool,
        gone: Collection[str] = (),
        protect: Collection[str] = (),
    ) -> None:
        """Take in one refresh's jobs.

        complete: they are the whole list, so the rest is gone. gone: ids known to be gone.
        protect: ids whose record is newer than these jobs (a background full read that
        finished after incremental reads): neither overwritten nor forgotten.
        """
        first = self.baseline is None
        if first:
            self.baseline = now
        seen: set[str] = set()
        for job in jobs:
            seen.add(job.id)
            if job.id in protect:
                continue
            self.actions.add(job.action)
            self._take(job, now, first)
        if not complete:
            self.touched |= seen
        forget = [j for j in self.jobs if j not in seen and j not in protect] if complete else []
        for job_id in set(forget).union(g for g in gone if g in self.jobs):
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
