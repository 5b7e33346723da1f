"""One configured source at run time: refresh under a deadline, single flight, snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from exporter.config import FirstPromoterSource, KizenSource, Settings
from exporter.logs import log
from exporter.platforms import PlatformClient, auth_headers, make_client
from exporter.ratelimit import TokenBucket
from exporter.redact import REDACTOR
from exporter.refresh import Refresher, SyncInProgress
from exporter.tracker import JobTracker, TrackedJob
from exporter.upstream import Upstream, UpstreamError

logger = logging.getLogger("exporter.source")

# A refresh that keeps failing the same way is logged once, then summarised this often.
_REPEAT_LOG_INTERVAL = 300.0
# The lowest deadline a refresh is given, whatever the scrape timeout header says.
MIN_TIMEOUT = 0.1


@dataclass(frozen=True)
class SourceSnapshot:
    """What one scrape reports about one source; immutable, safe to encode off the loop."""

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
    # Encoded sample lines per format, filled in by the first scrape that renders the snapshot.
    rendered: dict[bool, list[str]] = field(default_factory=dict, compare=False, repr=False)


SourceConfig = KizenSource | FirstPromoterSource


class SourceRunner:
    def __init__(self, config: SourceConfig, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.upstream = Upstream(
            config.url,
            auth_headers(config),
            TokenBucket(config.rate),
            settings.max_concurrency,
            source=config.name,
            max_body=settings.max_response_size,
        )
        self.client: PlatformClient = make_client(config, self.upstream)
        self.tracker = JobTracker()
        self.refresher = Refresher(
            config.name, self.client, self.tracker, settings, incremental=config.incremental
        )
        self.last: SourceSnapshot | None = None
        self.last_success: float | None = None
        self._last_done = 0.0
        self._inflight: asyncio.Task[SourceSnapshot] | None = None
        self._failing: str | None = None
        self._failing_logged = 0.0
        self._failing_repeats = 0
        self._failures = 0  # consecutive failed refreshes

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def platform(self) -> str:
        return self.config.platform_name

    async def snapshot(self, budget: float | None = None) -> SourceSnapshot:
        """A fresh refresh's result, shared with concurrent callers, or a young one reused.

        `budget` is what the scrape allows (its timeout header minus the margin); the source's
        own `timeout` applies when that is lower or there is no header.
        """
        timeout = self.settings.timeout
        if budget is not None:
            timeout = max(MIN_TIMEOUT, min(timeout, budget))
        if (
            self.last is not None
            and self.settings.min_interval > 0
            and time.monotonic() - self._last_done < self.settings.min_interval
        ):
            return self.last
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(
                self._refresh(timeout), name=f"refresh-{self.name}"
            )
        try:
            # Shielded: one scraper giving up or disconnecting must not cancel the shared refresh.
            return await asyncio.wait_for(asyncio.shield(self._inflight), timeout + 0.25)
        except TimeoutError:
            return self._snapshot(False, timeout, "the shared refresh did not finish in time")

    def _snapshot(self, up: bool, duration: float, error: str | None) -> SourceSnapshot:
        tracker = self.tracker
        return SourceSnapshot(
            name=self.name,
            platform=self.platform,
            up=up,
            duration=duration,
            refreshed_at=time.time(),
            last_success=self.last_success,
            error=REDACTOR(error) if error else None,
            settings=self.settings,
            jobs=tuple(tracker.jobs.values()) if up else (),
            actions=frozenset(tracker.actions),
            finished=dict(tracker.finished),
            items=dict(tracker.items),
            requests=dict(self.upstream.requests),
        )

    async def _refresh(self, seconds: float) -> SourceSnapshot:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = loop.time() + seconds
        error: str | None = None
        detail: dict[str, object] = {}
        try:
            # The upstream layer honours the deadline per request; this is the backstop for
            # anything else that could wait.
            async with asyncio.timeout_at(deadline + 0.05):
                await self.refresher.refresh(deadline)
        except UpstreamError as exc:
            error = str(exc)
            detail = {"endpoint": exc.endpoint, "status": exc.status or "none"}
        except SyncInProgress as exc:
            error = str(exc)
        except TimeoutError:
            error = f"refresh did not finish within {seconds:.2f}s"
        except Exception as exc:  # a bug must cost one source one scrape, not the exporter
            logger.exception("unexpected error refreshing source %s", self.name)
            error = f"internal error: {type(exc).__name__}"
        else:
            self.last_success = time.time()
        duration = time.monotonic() - started
        self._note_outcome(error, detail)
        snapshot = self._snapshot(error is None, duration, error)
        self.last = snapshot
        self._last_done = time.monotonic()
        return snapshot

    def _note_outcome(self, error: str | None, detail: dict[str, object]) -> None:
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
            self._failing = None
            self._failing_repeats = 0
            self._failures = 0
            return
        self._failures += 1
        if error != self._failing or now - self._failing_logged >= _REPEAT_LOG_INTERVAL:
            fields: dict[str, object] = {"source": self.name, "platform": self.platform, **detail}
            if error == self._failing:
                fields["repeats_since_last_log"] = self._failing_repeats
            log(logger, logging.WARNING, "refresh failed", **fields, reason=error)
            self._failing_logged = now
            self._failing_repeats = 0
        else:
            self._failing_repeats += 1
        self._failing = error

    async def close(self) -> None:
        await self.refresher.close()
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._inflight
        await self.upstream.close()
