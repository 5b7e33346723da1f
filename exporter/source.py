"""One configured source at run time: refresh under a deadline, single flight, snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import operator
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from exporter.eta import History
from exporter.logs import log
from exporter.platforms.base import SourceConfig
from exporter.ratelimit import TokenBucket
from exporter.redact import Redact
from exporter.refresh import Refresher
from exporter.settings import Settings
from exporter.trace import Trace
from exporter.tracker import Histogram, JobTracker, TrackedJob
from exporter.upstream import ConnectionPool, Upstream, UpstreamError

logger = logging.getLogger("exporter.source")

# A refresh that keeps failing is logged once, then summarised this often.
_REPEAT_LOG_INTERVAL = 300.0
# The shortest a scrape waits for a refresh, whatever its timeout header says.
MIN_WAIT = 0.1


@dataclass(frozen=True, eq=False)
class SourceSnapshot:
    """What one scrape reports about one source; immutable, safe to encode off the loop.

    Compared by identity: scrapes that share a refresh share the very same snapshot, and
    with it its encoding.
    """

    name: str
    platform: str
    up: bool
    duration: float
    refreshed_at: float
    last_success: float | None
    error: str | None
    settings: Settings
    jobs: tuple[TrackedJob, ...] = ()
    actions: frozenset[str] = frozenset()
    finished: Mapping[tuple[str, str], int] = field(default_factory=dict)
    items: Mapping[tuple[str, str], int] = field(default_factory=dict)
    requests: Mapping[tuple[str, str], int] = field(default_factory=dict)
    durations: Mapping[tuple[str, str], Histogram] = field(default_factory=dict)
    queue_waits: Mapping[str, Histogram] = field(default_factory=dict)
    last_finished: Mapping[tuple[str, str], float] = field(default_factory=dict)
    rows_skipped: Mapping[tuple[str, str], int] = field(default_factory=dict)
    history_loaded: bool = False
    # Running jobs' pace histories (see exporter.eta), for their ETA.
    rates: Mapping[str, History] = field(default_factory=dict)
    # The configured allowance (requests a second) and the time requests waited for it.
    rate_limit: float | None = None
    rate_limit_wait: float = 0.0
    # What the refresh did upstream, for `/probe?debug=true`; no longer written once the
    # snapshot is made (a refresh still running is shown as a copy).
    trace: Trace | None = field(default=None, compare=False, repr=False)

    def failed(self, error: str) -> SourceSnapshot:
        """This snapshot as a failed one: no job data, counters kept."""
        return dataclasses.replace(self, up=False, error=error, jobs=(), rates={})


class _FailureLog:
    """Logs a source's failures once per distinct reason, then a summary every few minutes,
    and its recovery: a source failing the same way on every scrape does not flood the log,
    even when the failing endpoint alternates."""

    def __init__(self, name: str, platform: str) -> None:
        self.name = name
        self.platform = platform
        self._failing: str | None = None
        self._logged_at = 0.0
        self._repeats = 0
        self._failures = 0

    def note(self, error: str | None, kind: str | None, detail: dict[str, object]) -> None:
        """`kind` is the error without its endpoint: a source whose list and progress reads
        fail alike is failing one way."""
        now = time.monotonic()
        if error is None:
            if self._failing is not None:
                log(
                    logger,
                    logging.INFO,
                    "source recovered",
                    source=self.name,
                    failed_refreshes=self._failures,
                )
            self._failing, self._repeats, self._failures = None, 0, 0
            return
        self._failures += 1
        new = self._failing != kind
        if new or now - self._logged_at >= _REPEAT_LOG_INTERVAL:
            fields: dict[str, object] = {"source": self.name, "platform": self.platform, **detail}
            if not new:
                fields["repeats_since_last_log"] = self._repeats
            log(logger, logging.WARNING, "refresh failed", **fields, reason=error)
            self._logged_at = now
            self._repeats = 0
        else:
            self._repeats += 1
        self._failing = kind


T = TypeVar("T")


def _same_items(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    # map(operator.is_) rather than a generator: run for every source on every scrape.
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _kept(live: T, previous: T | None, copy_of: Callable[[T], T] | None = None) -> T:
    """The previous snapshot's object when it equals the tracker's live one, else a copy of
    the live one (the tracker goes on changing it; a snapshot must not)."""
    if previous is not None and previous == live:
        return previous
    return copy_of(live) if copy_of is not None else live


class SourceRunner:
    """Owns one source at run time: its upstream, client, tracker and refresher, the refresh
    in flight, and the last snapshot."""

    def __init__(
        self,
        config: SourceConfig,
        settings: Settings,
        redact: Redact,
        pool: ConnectionPool | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.redact = redact
        self.upstream = Upstream(
            config.url,
            config.auth_headers(),
            TokenBucket(config.rate_in(settings)),
            settings.max_concurrency,
            source=config.name,
            max_body=settings.max_response_size,
            redact=redact,
            pool=pool,
        )
        self.tracker = JobTracker(
            config.QUEUE_CLOCK,
            settings.max_actions,
            max_details=settings.max_job_series,
            detail_retention=settings.finished_job_retention,
        )
        self.refresher = Refresher(
            config.name,
            config.client(self.upstream, settings),
            self.tracker,
            settings,
            incremental=config.incremental,
            keys=config.ROW_KEYS,
        )
        self.last: SourceSnapshot | None = None
        self.last_success: float | None = None
        self._last_done = 0.0
        self._inflight: asyncio.Task[SourceSnapshot] | None = None  # the refresh running
        self._inflight_traced = False
        # A traced refresh asked for while an untraced one runs; it starts when that one ends.
        self._queued: asyncio.Task[SourceSnapshot] | None = None
        self._trace: Trace | None = None  # the trace of the refresh in flight, if it keeps one
        self._failures = _FailureLog(config.name, config.platform_name)
        # Called after every refresh (the state store saves what changed then).
        self.on_refreshed: Callable[[SourceRunner], None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def platform(self) -> str:
        return self.config.platform_name

    async def snapshot(self, wait: float | None = None, *, traced: bool = False) -> SourceSnapshot:
        """A fresh refresh's result, shared with concurrent callers, or a young one reused.

        `wait` is how long this caller can wait (its scrape timeout minus a margin). It never
        shortens the shared refresh, which keeps the source's own `timeout`: a scraper with a
        tiny timeout gives up alone and cannot fail the scrapes that share the refresh.

        `traced` asks for a refresh that records its trace (the debug probe). Only such a
        refresh records one: recording is 7-8 % of a steady refresh's CPU, paid by
        every source on every scrape for an answer rarely asked. A caller that wants a trace
        shares a refresh only if it records one; else its own follows the one in flight,
        which the callers that want none keep sharing until it ends.
        """
        timeout = self.settings.timeout
        if (
            self.last is not None
            and self.settings.min_interval > 0
            and time.monotonic() - self._last_done < self.settings.min_interval
            and (not traced or self.last.trace is not None)
        ):
            return self.last
        shared = self._shared(timeout, traced)
        patience = timeout + 0.25 if wait is None else max(MIN_WAIT, min(timeout + 0.25, wait))
        started = time.monotonic()
        try:
            # Shielded: one scraper giving up or disconnecting must not cancel the shared refresh.
            return await asyncio.wait_for(asyncio.shield(shared), patience)
        except TimeoutError:
            waited = time.monotonic() - started
            running = self._trace.copy() if traced and self._trace is not None else None
            return self._snapshot(
                False,
                waited,
                f"the refresh did not finish within this scrape's {waited:.2f}s",
                running,
            )

    def _snapshot(
        self, up: bool, duration: float, error: str | None, trace: Trace | None = None
    ) -> SourceSnapshot:
        t = self.tracker
        # Whatever did not change since the last snapshot is that snapshot's very object, so
        # the exposition layer can tell an unchanged source by identity and reuse its samples
        # (most accounts are idle most of the time), and nothing is copied again.
        last = self.last
        jobs: tuple[TrackedJob, ...] = tuple(t.jobs.values()) if up else ()
        if last is not None and _same_items(jobs, last.jobs):
            jobs = last.jobs
        return SourceSnapshot(
            name=self.name,
            platform=self.platform,
            up=up,
            duration=duration,
            refreshed_at=time.time(),
            last_success=self.last_success,
            error=self.redact(error) if error else None,
            settings=self.settings,
            jobs=jobs,
            actions=_kept(frozenset(t.actions), last.actions if last else None),
            finished=_kept(t.finished, last.finished if last else None, dict),
            items=_kept(t.items, last.items if last else None, dict),
            requests=dict(self.upstream.requests),
            durations=_kept(t.durations, last.durations if last else None, copy.deepcopy),
            queue_waits=_kept(t.queue_waits, last.queue_waits if last else None, copy.deepcopy),
            last_finished=_kept(t.last_finished, last.last_finished if last else None, dict),
            rows_skipped=_kept(t.rows_skipped, last.rows_skipped if last else None, dict),
            history_loaded=self.refresher.history_loaded,
            rates=dict(t.rates) if up else {},
            rate_limit=self.upstream.bucket.limit.per_second,
            rate_limit_wait=self.upstream.rate_limit_wait,
            trace=trace,
        )

    def _shared(self, timeout: float, traced: bool) -> asyncio.Task[SourceSnapshot]:
        """The refresh this caller shares, started or queued if need be. Never two refreshes
        of one source at once: they would share its tracker."""
        running = self._inflight is not None and not self._inflight.done()
        if running and (self._inflight_traced or not traced):
            assert self._inflight is not None
            return self._inflight
        if self._queued is not None and not self._queued.done():
            # A traced caller while an untraced refresh runs, or any caller once that one
            # ended and before the queued one took over: the queued one serves them.
            return self._queued
        if running:
            assert self._inflight is not None
            self._queued = asyncio.create_task(
                self._refresh_after(self._inflight, timeout), name=f"traced-refresh-{self.name}"
            )
            return self._queued
        self._inflight = asyncio.create_task(
            self._refresh(timeout, traced), name=f"refresh-{self.name}"
        )
        self._inflight_traced = traced
        return self._inflight

    async def _refresh_after(
        self, previous: asyncio.Task[SourceSnapshot], seconds: float
    ) -> SourceSnapshot:
        """A traced refresh, once `previous` (untraced, in flight) is done, whatever its end.
        From its start it is the refresh running, which every caller shares."""
        await asyncio.wait({previous})
        self._inflight, self._inflight_traced = asyncio.current_task(), True
        self._queued = None
        return await self._refresh(seconds, traced=True)

    async def _refresh(self, seconds: float, traced: bool = False) -> SourceSnapshot:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = loop.time() + seconds
        error: str | None = None
        kind: str | None = None
        detail: dict[str, object] = {}
        trace = self._trace = Trace("refresh", seconds, self.config.ROW_KEYS) if traced else None
        try:
            # The upstream layer honours the deadline per request; this is the backstop for
            # anything else that could wait.
            async with asyncio.timeout_at(deadline + 0.05):
                await self.refresher.refresh(deadline, trace)
        except UpstreamError as exc:
            error, kind = str(exc), exc.reason
            url = urlsplit(self.config.url)
            detail = {
                "endpoint": exc.endpoint,
                "status": exc.status or "none",
                "host": url.hostname,
                "port": url.port or (443 if url.scheme == "https" else 80),
            }
        except TimeoutError:
            error = kind = f"refresh did not finish within {seconds:.2f}s"
        except Exception as exc:  # a bug must cost one source one scrape, not the exporter
            logger.exception("unexpected error refreshing source %s", self.name)
            error = kind = f"internal error: {type(exc).__name__}"
        else:
            self.last_success = time.time()
        # Saved after a failed refresh too: it may have taken in a background full read.
        if self.on_refreshed is not None:
            self.on_refreshed(self)
        else:
            # Nothing saves the state (no --storage.path): forget what changed since the
            # last save, which would otherwise hold the id of every job ever seen.
            self.tracker.mark_saved()
        duration = time.monotonic() - started
        self._failures.note(self.redact(error) if error else None, kind, detail)
        # The platform client's notices: what it detected of the upstream's behaviour.
        if trace is not None:
            notices = getattr(self.refresher.client, "notices", None)
            trace.finish(
                "up" if error is None else f"failed: {error}",
                notices if isinstance(notices, Mapping) else None,
            )
        self._trace = None
        snapshot = self._snapshot(error is None, duration, error, trace)
        self.last = snapshot
        self._last_done = time.monotonic()
        return snapshot

    async def close(self) -> None:
        await self.refresher.close()
        # Both: the queued one only waits on the one in flight, and neither ends the other.
        tasks = [t for t in (self._queued, self._inflight) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.upstream.close()
