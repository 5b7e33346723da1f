"""How one source is read on each scrape: whole list, or incrementally with periodic full reads.

Incremental (the default): a full read is the baseline; after it, a scrape reads only what
can have changed (`PlatformClient.read_changes`), and a full read every `full_sync_interval`
corrects drift and forgets jobs the platform no longer lists. A full read runs as its own task
with a long deadline: when it does not fit in a scrape, it carries on in the background (within
the rate limit, yielding to scrapes) and a later scrape takes in its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from exporter.config import Settings
from exporter.logs import log
from exporter.platforms import Known, PlatformClient, ReadResult
from exporter.tracker import JobTracker
from exporter.upstream import BACKGROUND, UpstreamError

logger = logging.getLogger("exporter.refresh")

# However long a full read takes in the background, it gives up after this.
SYNC_DEADLINE = 3600.0


class SyncInProgress(Exception):
    """The first full read has not finished: there is nothing true to report yet."""


class Refresher:
    def __init__(
        self,
        name: str,
        client: PlatformClient,
        tracker: JobTracker,
        settings: Settings,
        *,
        incremental: bool,
    ) -> None:
        self.name = name
        self.client = client
        self.tracker = tracker
        self.settings = settings
        self.incremental = incremental
        self._sync: asyncio.Task[ReadResult] | None = None
        self._sync_started = 0.0
        self._sync_logged = False
        self._last_full: float | None = None  # monotonic time the last full read finished
        self._since: float | None = None  # Unix time the last successful read began

    async def refresh(self, deadline: float) -> None:
        """Bring the tracker up to date, or raise UpstreamError / SyncInProgress."""
        if not self.incremental:
            started = time.time()
            self._take(await self.client.read_all(deadline), started)
            return
        if self._sync is None and self._full_read_due():
            self._start_sync()
        if self.tracker.baseline is None:
            assert self._sync is not None
            loop = asyncio.get_running_loop()
            await asyncio.wait({self._sync}, timeout=max(0.0, deadline - loop.time()))
            if not self._sync.done():
                self._note_background()
                raise SyncInProgress(
                    "the first full read is still running in the background; "
                    "nothing to report until it completes"
                )
            self._finish_sync(baseline=True)
            return
        if self._sync is not None and self._sync.done():
            self._finish_sync(baseline=False)
        elif self._sync is not None:
            self._note_background()
        started = time.time()
        assert self._since is not None
        known = Known(
            active=self.tracker.active_ids, ids=self.tracker.jobs.keys(), since=self._since
        )
        result = await self.client.read_changes(deadline, known)
        if result.complete:
            self._last_full = time.monotonic()
        self._take(result, started)

    def _full_read_due(self) -> bool:
        if self.tracker.baseline is None or self._last_full is None:
            return True
        return time.monotonic() - self._last_full >= self.settings.full_sync_interval

    def _start_sync(self) -> None:
        background = self.tracker.baseline is not None
        self.tracker.begin_sync()
        self._sync_started = time.time()
        self._sync_logged = False

        async def run() -> ReadResult:
            # The first full read runs at full speed (there are no scrapes to yield to yet).
            BACKGROUND.set(background)
            loop = asyncio.get_running_loop()
            return await self.client.read_all(
                loop.time() + max(SYNC_DEADLINE, self.settings.timeout)
            )

        self._sync = asyncio.create_task(run(), name=f"full-read-{self.name}")

    def _note_background(self) -> None:
        if not self._sync_logged:
            self._sync_logged = True
            log(logger, logging.INFO, "full read continues in the background", source=self.name)

    def _finish_sync(self, *, baseline: bool) -> None:
        task, self._sync = self._sync, None
        assert task is not None
        assert task.done()
        try:
            result = task.result()
        except UpstreamError as exc:
            if baseline:
                raise
            # A failed periodic full read costs nothing but its correction; try again next time.
            log(
                logger,
                logging.WARNING,
                "background full read failed",
                source=self.name,
                reason=str(exc),
            )
            self._last_full = time.monotonic()
            return
        took = time.time() - self._sync_started
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
        self._last_full = time.monotonic()

    def _take(self, result: ReadResult, started: float, protect: set[str] | None = None) -> None:
        if result.skipped:
            log(
                logger,
                logging.WARNING,
                "skipped malformed rows",
                source=self.name,
                count=result.skipped,
                first_reason=result.first_skip,
            )
        self.tracker.apply(
            result.jobs.values(),
            time.time(),
            complete=result.complete,
            gone=result.gone,
            protect=protect or (),
        )
        # Only move forward: a background read that began long ago must not push `since` back.
        self._since = max(self._since or started, started)

    async def close(self) -> None:
        if self._sync is not None and not self._sync.done():
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sync
