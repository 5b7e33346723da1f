"""Per-source memory across scrapes: every job's last record, when it last changed, counters,
histograms and the most recent finish of each action.

The first successful refresh is the baseline: what is already finished then is history and
never counted. After it, a job reaching completed/failed/cancelled counts once (in
`finished` and, when its start and completion are known, in `durations`), items count by the
increase of each job's succeeded and failed numbers between sightings, and a job seen leaving
the queue has its wait observed once (`queue_waits`).

Each running job also has what the exporter saw of its pace (`rates`, see `exporter.eta`),
and finished jobs keep the platform's failure details only while they can
have per-job series (within `finished_job_retention`, at most `max_job_series` of them).

The tracker records which jobs changed since it was last saved (`dirty`, `removed`), so that
the state store writes only those.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from exporter import eta
from exporter.jobs import Job, Phase, QueueClock, time_problem
from exporter.logs import log
from exporter.settings import Settings

logger = logging.getLogger("exporter.tracker")

# How long a job that dropped out of the list is remembered, so that if it shows up again
# (rows shift between pages, a filter flaps) its finish and items are not counted twice.
FORGET_AFTER = 24 * 3600.0
# Upper bounds (seconds) of the duration and queue-wait histograms' buckets; +Inf follows.
BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
# Their `le` label values, as the library writes bounds ("60.0"), made once.
BUCKET_LABELS = (*(str(float(bound)) for bound in BUCKETS), "+Inf")
OTHER_ACTION = "_other"
_DEFAULT_MAX_ACTIONS: int = Settings.model_fields["max_actions"].default
_DEFAULT_MAX_DETAILS: int = Settings.model_fields["max_job_series"].default
_DEFAULT_DETAIL_RETENTION: float = Settings.model_fields["finished_job_retention"].default


@dataclass(frozen=True, slots=True)
class TrackedJob:
    """A job as last seen, with what the exporter remembers about it."""

    job: Job
    last_change: float
    # When the exporter first saw it queued (the queue's start, where the platform gives none).
    first_queued: float | None = None
    # Its finish has been counted, or it was history at the baseline: never count it again.
    counted: bool = False
    # Its queue wait has been observed, or cannot be: never observe it again.
    waited: bool = False
    # When it dropped out of the list; None while it is listed.
    gone_since: float | None = None
    # The highest succeeded and failed counts seen, when above the job's present ones (a
    # stale replica answered an older count): items are counted past these, so a count that
    # goes down and back up adds nothing. None, the usual case, means the present counts.
    peak: tuple[int, int] | None = None

    @property
    def high(self) -> tuple[int, int]:
        """The highest succeeded and failed counts seen (what has been counted up to)."""
        return self.peak if self.peak is not None else (self.job.succeeded, self.job.failed)


def _running(job: Job) -> bool:
    return job.phase is Phase.RUNNING


@dataclass
class Histogram:
    """Observations by bucket (not cumulative; the last is +Inf), their sum and count."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        index = next((i for i, bound in enumerate(BUCKETS) if value <= bound), len(BUCKETS))
        self.counts[index] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip(BUCKET_LABELS, self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


class JobTracker:
    """Owns one source's job memory and everything counted from it."""

    def __init__(
        self,
        queue_clock: QueueClock,
        max_actions: int = _DEFAULT_MAX_ACTIONS,
        *,
        max_details: int = _DEFAULT_MAX_DETAILS,
        detail_retention: float = _DEFAULT_DETAIL_RETENTION,
    ) -> None:
        self.queue_clock = queue_clock
        self.max_actions = max_actions
        # Failure details are kept for at most this many finished jobs, this long after they
        # finished: the per-job series bound (max_job_series, finished_job_retention).
        self.max_details = max_details
        self.detail_retention = detail_retention
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next refresh is a new baseline."""
        self.jobs: dict[str, TrackedJob] = {}
        self.gone: dict[str, TrackedJob] = {}
        self.baseline: float | None = None
        self.finished: Counter[tuple[str, str]] = Counter()
        self.items: Counter[tuple[str, str]] = Counter()
        self.durations: dict[tuple[str, str], Histogram] = {}
        self.queue_waits: dict[str, Histogram] = {}
        self.last_finished: dict[tuple[str, str], float] = {}
        self.rows_skipped: Counter[tuple[str, str]] = Counter()
        self.actions: set[str] = set()
        self._folded_logged = False
        # Ids taken in since a background full read began: newer than what that read saw.
        self.touched: set[str] = set()
        # What changed since the state was last saved.
        self.dirty: set[str] = set()
        self.removed: set[str] = set()
        self.counters_dirty = False
        # When the previous refresh was taken in (for the pace of running jobs); None after a
        # restart, which costs the first estimate only a little precision.
        self.last_seen: float | None = None
        # Jobs whose record carries failure details, and finished ones whose details were
        # dropped by the count bound (so that the next read does not bring them back).
        self.detailed: set[str] = set()
        self.trimmed: set[str] = set()
        # Running jobs' pace histories, by id. Kept beside the records rather than in them: a
        # field more on every TrackedJob of a large history costs 16 bytes a job.
        self.rates: dict[str, eta.History] = {}

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
        started: float | None = None,
    ) -> None:
        """Take in one refresh's jobs.

        complete: they are the whole list, so the rest is gone. gone: ids known to be gone
        (a job these jobs hold is never among them: it was just read). protect: ids whose
        record is newer than these jobs (a background full read that finished after
        incremental reads): neither overwritten nor forgotten. started: when the read began
        (`now` if not given): the first read's start is the baseline, so that a job starting
        while a long first read pages is not taken for history.
        """
        first = self.baseline is None
        if first:
            self.baseline = now if started is None else min(started, now)
            self.counters_dirty = True
        seen: set[str] = set()
        for job in jobs:
            seen.add(job.id)
            if job.id in protect:
                continue
            self._take(self._fold_action(job), now, first)
        if not complete:
            self.touched |= seen
        forget = [j for j in self.jobs if j not in seen and j not in protect] if complete else []
        for job_id in set(forget).union(g for g in gone if g in self.jobs and g not in seen):
            self._forget(job_id, now)
        self._prune(now)
        self._prune_details(now)
        self.last_seen = now

    def count_skipped(self, skipped: Mapping[tuple[str, str], int]) -> None:
        if skipped:
            self.rows_skipped.update(skipped)
            self.counters_dirty = True

    def _fold_action(self, job: Job) -> Job:
        """Actions beyond the first `max_actions` are reported as `_other`."""
        if job.action in self.actions:
            return job
        if len(self.actions) < self.max_actions:
            self.actions.add(job.action)
            self.counters_dirty = True
            return job
        if not self._folded_logged:
            self._folded_logged = True
            log(
                logger,
                logging.WARNING,
                "more distinct actions than max_actions; reporting the rest as _other",
                max_actions=self.max_actions,
                first_folded=job.action,
            )
        self.actions.add(OTHER_ACTION)
        return replace(job, action=OTHER_ACTION)

    def _history(self, job: Job, now: float) -> bool:
        """A job first seen already finished, and finished (or started) before the baseline.
        A time out of order (`time_problem`) is no evidence either way: a completion before
        the start does not make a job that started after the baseline history."""
        assert self.baseline is not None
        if not job.phase.terminal:
            return False
        wrong = time_problem(job, now)
        started = job.started_at is not None and job.started_at < self.baseline
        completed = job.completed_at is not None and job.completed_at < self.baseline
        if wrong is not None:
            started = started and wrong[0] != "start"
            completed = completed and wrong[0] != "completion"
        return started or completed

    def _put(self, tracked: TrackedJob) -> None:
        self.jobs[tracked.job.id] = tracked
        self.dirty.add(tracked.job.id)
        self.removed.discard(tracked.job.id)

    def _take(self, job: Job, now: float, first: bool) -> None:
        job = self._trim(job, now)
        prev = self.jobs.get(job.id)
        returned = prev is None and job.id in self.gone
        if returned:
            prev = replace(self.gone.pop(job.id), gone_since=None)
        if job.phase.terminal and job.completed_at is not None:
            self._note_finish(job, now)
        if prev is None:
            self._take_new(job, now, first)
            return
        if prev.job == job and not returned and (job.id in self.rates or not _running(job)):
            return
        high_succeeded, high_failed = prev.high
        self._count_items(
            job.action,
            max(0, job.succeeded - high_succeeded),
            max(0, job.failed - high_failed),
        )
        high = (max(high_succeeded, job.succeeded), max(high_failed, job.failed))
        peak = None if high == (job.succeeded, job.failed) else high
        changed = not job.same_state(prev.job)
        tracked = replace(
            prev, job=job, last_change=now if changed else prev.last_change, peak=peak
        )
        if tracked.first_queued is None and job.phase is Phase.QUEUED:
            tracked = replace(tracked, first_queued=now)
        self._observe(job, now)
        self._put(self._finish(self._leave_queue(tracked, prev.job.phase, now), now))

    def _take_new(self, job: Job, now: float, first: bool) -> None:
        last_change = job.started_at if job.started_at else now
        queued = job.phase is Phase.QUEUED
        if first or self._history(job, now):
            # Known at the baseline: its finish, if any, is history; a queued job's wait is
            # still observed when it leaves the queue after the baseline. (Built at once, not
            # through `replace`: a large history is mostly this.)
            self._put(
                TrackedJob(
                    job,
                    last_change,
                    now if queued else None,
                    counted=job.phase.terminal,
                    waited=not queued,
                )
            )
            if job.phase is Phase.RUNNING:
                self.rates[job.id] = eta.observe(None, job, now, None)
            return
        tracked = TrackedJob(job, last_change, now if queued else None)
        self._observe(job, now)
        self._count_items(job.action, job.succeeded, job.failed)
        self._put(self._finish(self._leave_queue(tracked, None, now), now))

    def _observe(self, job: Job, now: float) -> None:
        """Note a running job's pace with this sighting; forget it for any other phase."""
        if job.phase is Phase.RUNNING:
            self.rates[job.id] = eta.observe(self.rates.get(job.id), job, now, self.last_seen)
        else:
            self.rates.pop(job.id, None)

    @staticmethod
    def _has_details(job: Job) -> bool:
        return job.failure is not None

    def _trim(self, job: Job, now: float) -> Job:
        """The job without its failure details when it is outside the bound: finished longer
        than `detail_retention` ago, or pushed out by newer ones (`trimmed`). A history of
        thousands of failed jobs then holds no details at all."""
        if not self._has_details(job):
            return job
        if job.phase.terminal:
            done = job.completed_at if job.completed_at is not None else now
            if now - done > self.detail_retention or job.id in self.trimmed:
                return replace(job, failure=None)
        self.detailed.add(job.id)
        return job

    def _prune_details(self, now: float) -> None:
        """Keep the details of the newest `max_details` finished jobs within the retention."""
        if not self.detailed:
            return
        finished: list[tuple[float, str]] = []
        for job_id in list(self.detailed):
            tracked = self.jobs.get(job_id)
            if tracked is None or not self._has_details(tracked.job):
                self.detailed.discard(job_id)
            elif tracked.job.phase.terminal:
                job = tracked.job
                done = job.completed_at if job.completed_at is not None else tracked.last_change
                finished.append((done, job_id))
        finished.sort(reverse=True)
        for i, (done, job_id) in enumerate(finished):
            if i >= self.max_details or now - done > self.detail_retention:
                if i >= self.max_details:
                    self.trimmed.add(job_id)
                self._strip(job_id)

    def _strip(self, job_id: str) -> None:
        tracked = self.jobs[job_id]
        self._put(replace(tracked, job=replace(tracked.job, failure=None)))
        self.detailed.discard(job_id)

    def _count_items(self, action: str, succeeded: int, failed: int) -> None:
        if succeeded:
            self.items[(action, "succeeded")] += succeeded
        if failed:
            self.items[(action, "failed")] += failed
        if succeeded or failed:
            self.counters_dirty = True

    def _finish(self, tracked: TrackedJob, now: float) -> TrackedJob:
        job = tracked.job
        if not job.phase.terminal or tracked.counted:
            return tracked
        key = (job.action, job.phase.value)
        self.finished[key] += 1
        if (
            job.started_at is not None
            and job.completed_at is not None
            and time_problem(job, now) is None
        ):
            self.durations.setdefault(key, Histogram()).observe(job.completed_at - job.started_at)
        self.counters_dirty = True
        return replace(tracked, counted=True)

    def _leave_queue(self, tracked: TrackedJob, before: Phase | None, now: float) -> TrackedJob:
        """Observe the queue wait of a job seen leaving the queue, once."""
        job = tracked.job
        if tracked.waited or job.phase in (Phase.QUEUED, Phase.UNKNOWN):
            return tracked
        wait: float | None = None
        if self.queue_clock is QueueClock.START_KNOWN:
            # The platform says when it started; the exporter saw when it was queued.
            queued = tracked.first_queued
            if before is Phase.QUEUED and queued is not None and job.started_at is not None:
                wait = job.started_at - queued
        elif job.started_at is not None and time_problem(job, now) is None:
            # The platform says when it was created; the exporter sees when it started.
            wait = now - job.started_at
        if wait is not None:
            self.queue_waits.setdefault(job.action, Histogram()).observe(max(0.0, wait))
            self.counters_dirty = True
        return replace(tracked, waited=True)

    def _note_finish(self, job: Job, now: float) -> None:
        assert job.completed_at is not None
        key = (job.action, job.phase.value)
        # The times are checked only for a completion that would move the gauge: every
        # finished job of every full read passes here.
        if job.completed_at > self.last_finished.get(key, float("-inf")):
            if time_problem(job, now) is not None:
                return  # a completion out of order would pin the gauge (a year ahead, say)
            self.last_finished[key] = job.completed_at
            self.counters_dirty = True

    def _forget(self, job_id: str, now: float) -> None:
        tracked = self.jobs.pop(job_id)
        if self._has_details(tracked.job):
            # Gone from the list, so from the page: its details are not needed any more.
            tracked = replace(tracked, job=replace(tracked.job, failure=None))
            self.detailed.discard(job_id)
        self.rates.pop(job_id, None)
        self.gone[job_id] = replace(tracked, gone_since=now)
        self.dirty.add(job_id)

    def _prune(self, now: float) -> None:
        if not self.gone:
            return
        expired = [
            k
            for k, g in self.gone.items()
            if g.gone_since is not None and now - g.gone_since > FORGET_AFTER
        ]
        for job_id in expired:
            del self.gone[job_id]
            self.dirty.discard(job_id)
            self.removed.add(job_id)
            self.trimmed.discard(job_id)

    def mark_saved(self) -> None:
        self.dirty.clear()
        self.removed.clear()
        self.counters_dirty = False
