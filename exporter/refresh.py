"""How one source is read on each scrape: whole list, or incrementally with periodic full reads.

Incremental (the default): a full read is the baseline; after it, a scrape reads only what
can have changed (`PlatformClient.read_changes`), and a full read every `full_sync_interval`
corrects drift and forgets jobs the platform no longer lists. A full read runs as its own task
with a long deadline. The first one is awaited while it will be done within COLD_PATIENCE and
the scrape's deadline; when it will not (a large history, which page 1 shows), the active jobs
are read on their own at once and become the baseline, and the full read carries on and is
taken in by a later scrape. Periodic full reads run as
background work that yields rate-limit tokens and connection slots to scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from exporter.jobs import Phase, time_problem
from exporter.logs import log
from exporter.platforms.base import Known, PlatformClient, ReadResult, add_counts
from exporter.settings import Settings
from exporter.trace import RowKeys, Trace
from exporter.tracker import JobTracker
from exporter.upstream import Budget, Progress, UpstreamError

logger = logging.getLogger("exporter.refresh")

# Raw statuses nobody mapped that a source warns of, at most (hostile input could be endless).
MAX_UNMAPPED_WARNINGS = 20
# However long a full read takes in the background, it gives up after this.
SYNC_DEADLINE = 3600.0
# A cold refresh keeps this share of its time (at least MIN_ACTIVE_READ seconds) for reading
# the active jobs on their own when the first full read will not finish in time; a paged
# full read tells much earlier, from its first page, how long it will take.
ACTIVE_READ_SHARE = 0.25
MIN_ACTIVE_READ = 0.5
# The first scrape waits for the first full read only while that read is expected to be done
# within this many seconds (and within the deadline); a longer one goes on in the background
# while the active jobs, read as soon as its page 1 shows it will be long, are served.
COLD_PATIENCE = 2.0
_POLL = 0.05


@dataclass(frozen=True)
class RefreshState:
    """What a refresher remembers beyond the tracker, kept across restarts with it."""

    since: float | None  # Unix time the last successful read began
    last_full: float | None  # Unix time the last full read finished
    history_loaded: bool


class Refresher:
    """Owns the reading schedule of one source: baseline, incremental reads, full reads."""

    def __init__(
        self,
        name: str,
        client: PlatformClient,
        tracker: JobTracker,
        settings: Settings,
        *,
        incremental: bool,
        keys: RowKeys | None = None,
    ) -> None:
        self.name = name
        self.keys = keys or RowKeys()
        self.client = client
        self.tracker = tracker
        self.settings = settings
        self.incremental = incremental
        self.history_loaded = False
        self._sync: asyncio.Task[ReadResult] | None = None
        self._progress = Progress()
        self._sync_loop_start = 0.0
        self._sync_started = 0.0
        self._sync_logged = False
        self._last_full: float | None = None
        self._since: float | None = None
        # The rows skipped by the reads one refresh takes in, for its one log line.
        self._skipped = ReadResult(complete=False)
        # The cold path: the scrape waiting for the first full read, its active-only read.
        self._cold_budget: Budget | None = None
        self._patience = 0.0
        self._active: asyncio.Task[ReadResult] | None = None
        self._active_started = 0.0
        # Raw statuses in phase `unknown` already warned of.
        self._unmapped: set[str] = set()
        # The trace of the running full read, and of the one the current refresh took in.
        self._sync_trace: Trace | None = None
        self._taken_trace: Trace | None = None
        # The trace of the refresh running, when it keeps one.
        self._trace: Trace | None = None

    @property
    def state(self) -> RefreshState:
        return RefreshState(self._since, self._last_full, self.history_loaded)

    def restore(self, state: RefreshState) -> None:
        self._since = state.since
        self._last_full = state.last_full
        self.history_loaded = state.history_loaded

    async def refresh(self, deadline: float, trace: Trace | None = None) -> None:
        """Bring the tracker up to date within `deadline` (event-loop time), or raise
        UpstreamError. Rows skipped by all the reads it takes in are logged once. `trace`,
        when given, records this refresh's requests and rows, and those of the full read it
        took in or that runs beside it."""
        self._skipped = ReadResult(complete=False)
        self._taken_trace = None
        self._trace = trace
        try:
            await self._refresh(Budget(deadline, trace=trace))
        finally:
            self._trace = None
            if trace is not None:
                self._include_sync(trace)
            skipped = self._skipped
            if skipped.skipped:
                log(
                    logger,
                    logging.WARNING,
                    "skipped malformed rows",
                    source=self.name,
                    count=sum(skipped.skipped.values()),
                    first_reason=skipped.first_skip,
                )

    async def _refresh(self, budget: Budget) -> None:
        if not self.incremental:
            started = time.time()
            self._take(await self.client.read_all(budget), started)
            self.history_loaded = True
            return
        if self.tracker.baseline is None or self._since is None:
            await self._cold(budget)
            return
        if self._sync is not None and self._sync.done():
            self._finish_sync()
        elif self._sync is None and self._full_read_due():
            self._start_sync(background=True)
        elif self._sync is not None:
            self._note_background()
        started = time.time()
        known = Known(
            active=self.tracker.active_ids, ids=self.tracker.jobs.keys(), since=self._since
        )
        result = await self.client.read_changes(budget, known)
        if result.complete:
            self._full_done()
        self._take(result, started)
        if result.needs_full:
            await self._full_instead(budget, result)

    async def _full_instead(self, budget: Budget, result: ReadResult) -> None:
        """An incremental read that needed a full read instead (too many jobs left the active
        list to read each by id: a burst of finishes, an outage, a restart on a busy account)
        took in what it read, which removes nothing. The full read is waited for while it
        can finish soon, as the first one is; else it goes on in the background, on its own
        deadline, and is taken in by a later scrape: a scrape never fails because the
        account's full read is longer than a scrape."""
        if self._sync is not None:
            # Already running (an earlier scrape's, or the periodic one): not waited for again.
            self._note_background()
            return
        self._start_sync(background=False)
        # What this refresh read is not forgotten by the full read it takes in.
        self.tracker.touched |= result.jobs.keys()
        assert self._sync is not None
        if await self._full_read_fits(self._sync, budget.deadline):
            self._finish_sync()
        else:
            self._note_background()

    async def _cold(self, budget: Budget) -> None:
        """The first refresh: a full read when it is quick, else the active jobs on their own.

        The full read tells from page 1 how long it will take; when that is too long the
        active jobs are read at once (from inside that page's step, see `_on_cold_page`, so
        their request goes out before the remaining pages take every connection slot), and
        the first scrape answers about one round trip after page 1."""
        if self._sync is None:
            self._start_sync(background=False)
        assert self._sync is not None
        self._cold_budget = budget
        try:
            quick = await self._full_read_fits(self._sync, budget.deadline)
        finally:
            self._cold_budget = None
        if quick:
            self._drop_active()
            self._finish_sync()  # raises the full read's UpstreamError, if it failed
            return
        self._note_background()
        if self._active is None:
            self._start_active(budget)
        active, started = self._active, self._active_started
        assert active is not None
        try:
            result = await active
        finally:
            self._drop_active()
        self._take(result, started)

    def _start_active(self, budget: Budget) -> None:
        self._active_started = time.time()
        self._active = asyncio.create_task(
            self.client.read_active(budget), name=f"active-read-{self.name}"
        )

    def _drop_active(self) -> None:
        active, self._active = self._active, None
        if active is None:
            return
        if active.done():
            if not active.cancelled():
                active.exception()  # retrieved: an unused read's failure is not "lost"
        else:
            active.cancel()

    def _on_cold_page(self) -> None:
        """A page of the first full read landed while a cold refresh waits for it: when the
        read will not be quick, start the active-only read now. Runs inside the full read's
        own step, before its next pages are sent."""
        budget = self._cold_budget
        if budget is None or self._active is not None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        end = self._expected_end(now)
        if end is not None and end > self._cold_limit(now, budget.deadline, self._patience):
            self._start_active(budget)

    def _expected_end(self, now: float) -> float | None:
        """When the running full read should be done (event-loop time), once a page is in."""
        progress = self._progress
        if progress.pages is None or progress.done < 1:
            return None
        per_page = (now - self._sync_loop_start) / progress.done
        remaining = progress.pages - progress.done
        if progress.done <= progress.workers:
            # Only the first, serial page is in: the rest go `workers` at a time.
            return now + per_page * remaining / progress.workers
        return now + per_page * remaining

    def _cold_limit(self, now: float, deadline: float, patience: float) -> float:
        """By when a first full read must be done to be waited for: within the patience,
        and early enough before the deadline for an active-only read (about one page's
        round trip, twice for safety) if it is late after all."""
        progress = self._progress
        per_page = (now - self._sync_loop_start) / max(progress.done, 1)
        return min(deadline - max(2 * per_page, _POLL), patience)

    async def _full_read_fits(self, sync: asyncio.Task[ReadResult], deadline: float) -> bool:
        """Wait for the first full read while it can finish soon: within COLD_PATIENCE and
        before `deadline`, keeping time for an active-only read. True when it finished (or
        failed); False when it will not be quick, as soon as its progress shows it."""
        loop = asyncio.get_running_loop()
        reserve = max(MIN_ACTIVE_READ, (deadline - loop.time()) * ACTIVE_READ_SHARE)
        self._patience = loop.time() + COLD_PATIENCE
        while not sync.done():
            now = loop.time()
            if self._active is not None or now >= min(deadline - reserve, self._patience):
                return False
            end = self._expected_end(now)
            if end is not None and end > self._cold_limit(now, deadline, self._patience):
                return False
            await asyncio.wait({sync}, timeout=min(_POLL, max(0.0, deadline - now)))
        return True

    def _include_sync(self, trace: Trace) -> None:
        taken, self._taken_trace = self._taken_trace, None
        if taken is not None:
            trace.include("full read, finished and taken in by this refresh", taken)
        running = self._sync_trace if self._sync is not None else None
        if running is not None:
            trace.include("full read, still running on its own deadline", running.copy())

    def _full_read_due(self) -> bool:
        if self._last_full is None:
            return True
        return time.time() - self._last_full >= self.settings.full_sync_interval

    def _start_sync(self, *, background: bool) -> None:
        self.tracker.begin_sync()
        self._sync_started = time.time()
        self._sync_logged = False
        loop = asyncio.get_running_loop()
        self._sync_loop_start = loop.time()
        self._progress = Progress(on_page=None if background else self._on_cold_page)
        seconds = max(SYNC_DEADLINE, self.settings.timeout)
        deadline = loop.time() + seconds
        self._sync_trace = Trace("full read", seconds, self.keys, background=background)
        budget = Budget(
            deadline, background=background, progress=self._progress, trace=self._sync_trace
        )
        self._sync = asyncio.create_task(
            self.client.read_all(budget), name=f"full-read-{self.name}"
        )

    def _note_background(self) -> None:
        if not self._sync_logged:
            self._sync_logged = True
            log(logger, logging.INFO, "full read continues in the background", source=self.name)

    def _full_done(self) -> None:
        self._last_full = time.time()
        self.history_loaded = True

    def _finish_sync(self) -> None:
        """Take in a finished full read. Its failure is raised while there is no baseline;
        after that it costs nothing but its correction, and is tried again later."""
        task, self._sync = self._sync, None
        assert task is not None
        assert task.done()
        sync_trace, self._sync_trace = self._sync_trace, None
        try:
            result = task.result()
        except UpstreamError as exc:
            if sync_trace is not None:
                sync_trace.finish(f"failed: {exc}")
                self._taken_trace = sync_trace
            if self.tracker.baseline is None:
                raise
            log(
                logger,
                logging.WARNING,
                "background full read failed",
                source=self.name,
                reason=str(exc),
            )
            if self.history_loaded:
                self._last_full = time.time()
            return
        took = time.time() - self._sync_started
        if sync_trace is not None:
            sync_trace.finish("read")
            self._taken_trace = sync_trace
        if self._sync_logged:
            log(
                logger,
                logging.INFO,
                "background full read finished",
                source=self.name,
                jobs=len(result.jobs),
                seconds=f"{took:.1f}",
            )
        self._take(result, self._sync_started, protect=self.tracker.touched)
        self._full_done()

    def _warn_unmapped(self, result: ReadResult) -> None:
        """One warning per raw status no phase maps (the word is cut like a label when the
        row is parsed, and every log line is redacted)."""
        for job in result.jobs.values():
            status = job.status
            if job.phase is not Phase.UNKNOWN or status in self._unmapped:
                continue
            if len(self._unmapped) >= MAX_UNMAPPED_WARNINGS:
                return
            self._unmapped.add(status)
            log(
                logger,
                logging.WARNING,
                "a job status no phase maps; its jobs are in phase unknown",
                source=self.name,
                status=status,
                job_id=job.id,
            )

    def _trace_times(self, result: ReadResult, now: float) -> None:
        """Name in the debug trace the times the tracker will not measure by."""
        trace = self._trace
        if trace is None:
            return
        for job in result.jobs.values():
            problem = time_problem(job, now)
            if problem is not None:
                trace.odd_time(*problem)

    def _take(self, result: ReadResult, started: float, protect: set[str] | None = None) -> None:
        self._warn_unmapped(result)
        if result.skipped:
            self.tracker.count_skipped(result.skipped)
            add_counts(self._skipped.skipped, result.skipped)
            self._skipped.first_skip = self._skipped.first_skip or result.first_skip
        now = time.time()
        self._trace_times(result, now)
        self.tracker.apply(
            result.jobs.values(),
            now,
            complete=result.complete,
            gone=result.gone,
            protect=protect or (),
            started=started,
        )
        # Only move forward: a background read that began long ago must not push `since` back.
        self._since = max(self._since or started, started)

    async def close(self) -> None:
        self._drop_active()
        if self._sync is not None and not self._sync.done():
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sync
