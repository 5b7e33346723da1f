"""Kizen bulk actions: `GET /api/bulk-action-progress` (page-number pagination) and `/{id}`.

Auth is three headers (`X-API-KEY`, `X-BUSINESS-ID`, `X-USER-ID`); the list is paged with
`page` and `page_size`, and the server may cap the page size silently or refuse a large one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Literal
from urllib.parse import parse_qs, quote, urlsplit

from pydantic import Field

from exporter.jobs import (
    Job,
    Phase,
    QueueClock,
    RowError,
    label,
    parse_timestamp,
    require_count,
    require_id,
    require_object,
    require_str,
)
from exporter.logs import log
from exporter.platforms.base import (
    BY_ID_LIMIT,
    Known,
    PlatformClient,
    ReadResult,
    SourceConfig,
    pooled,
    run_all,
)
from exporter.settings import Settings, Strict
from exporter.upstream import Budget, NotFound, Upstream, UpstreamError

logger = logging.getLogger("exporter.platforms.kizen")

LIST_PATH = "/api/bulk-action-progress"
PHASES: Mapping[str, Phase] = {
    "queued": Phase.QUEUED,
    "initialize": Phase.QUEUED,
    "in_progress": Phase.RUNNING,
    "completed": Phase.COMPLETED,
    "failed": Phase.FAILED,
    "cancelled": Phase.CANCELLED,
    "skipped": Phase.CANCELLED,
}
# `started_at` moves forward while a job is queued; look back this far beyond the last read.
STARTED_AFTER_MARGIN = 300.0
# Pages followed through `next` beyond what page 1's `count` announced (rows added mid-read).
MAX_EXTRA_PAGES = 20
# The page size every Kizen client is known to be served; used after a larger one is refused.
SAFE_PAGE_SIZE = 100
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class KizenFilters(Strict):
    """The list filters a Kizen source may set, sent as query parameters."""

    action: str | None = None
    custom_object_id: str | None = Field(default=None, pattern=UUID_PATTERN)


class KizenSource(SourceConfig):
    """A Kizen business."""

    DEFAULT_BASE_URL: ClassVar[str] = "https://app.go.kizen.com"
    PHASES: ClassVar[Mapping[str, Phase]] = PHASES
    QUEUE_CLOCK: ClassVar[QueueClock] = QueueClock.START_KNOWN

    platform: Literal["kizen"]
    business_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    page_size: int = Field(default=1000, ge=1, le=1000)
    filters: KizenFilters | None = None

    def auth_headers(self) -> dict[str, str]:
        return {
            "X-API-KEY": self.secret,
            "X-BUSINESS-ID": self.business_id,
            "X-USER-ID": self.user_id,
        }

    def identifiers(self) -> dict[str, str]:
        return {"business_id": self.business_id, "user_id": self.user_id}

    def options(self) -> dict[str, str]:
        shown = {"page_size": str(self.page_size)}
        if self.filters is not None:
            shown["filters"] = str(self.filters.model_dump(exclude_none=True))
        return shown

    def client(self, upstream: Upstream, settings: Settings) -> PlatformClient:
        return KizenClient(self, upstream, settings)


def parse_row(row: object) -> Job:
    """Map one ReadBulkActionProgress object to a Job; RowError if it is unusable."""
    row = require_object(row)
    job_id = require_id(row.get("id"))
    status = require_str(row, "status")
    phase = PHASES.get(status, Phase.UNKNOWN)
    pending = require_count(row, "pending_count")
    succeeded = require_count(row, "success_count")
    failed = require_count(row, "failed_count")
    total = pending + succeeded + failed
    progress = (succeeded + failed) / total if total else 1.0 if phase.terminal else 0.0
    custom_object = row.get("custom_object")
    name = custom_object.get("object_name") if isinstance(custom_object, dict) else None
    completed_at = parse_timestamp(row.get("completed_at"), "completed_at")
    return Job(
        id=job_id,
        action=label(require_str(row, "action")),
        object=label(name) if isinstance(name, str) else "",
        status=label(status),
        phase=phase,
        pending=pending,
        succeeded=succeeded,
        failed=failed,
        progress=progress,
        started_at=parse_timestamp(row.get("started_at"), "started_at"),
        completed_at=completed_at if phase.terminal else None,
    )


def _page_of(next_url: object) -> int | None:
    if not isinstance(next_url, str):
        return None
    try:
        values = parse_qs(urlsplit(next_url).query).get("page")
        return int(values[0]) if values else None
    except (ValueError, IndexError):
        return None


@dataclass
class _Page:
    """One list page, parsed: its rows as a ReadResult, its `count`, `next` and row total."""

    rows: ReadResult
    count: int
    next: object
    size: int  # how many rows it held


def _refuses_size(error: UpstreamError) -> bool:
    """A 4xx that is about the request itself (not auth, not a missing page, not throttling)."""
    return (
        error.status is not None
        and 400 <= error.status < 500
        and error.status
        not in (
            401,
            403,
            404,
            429,
        )
    )


class KizenClient:
    """Reads one Kizen business's bulk actions; remembers the page size the server accepts."""

    def __init__(self, source: KizenSource, upstream: Upstream, settings: Settings) -> None:
        self.source = source
        self.upstream = upstream
        self.max_jobs = settings.max_jobs
        self.page_size = source.page_size

    def _params(self, page: int, size: int, extra: Mapping[str, str]) -> dict[str, str]:
        params = {"page": str(page), "page_size": str(size)}
        if self.source.filters is not None:
            params.update(self.source.filters.model_dump(exclude_none=True))
        params.update(extra)
        return params

    async def _page(
        self, page: int, size: int, budget: Budget, extra: Mapping[str, str]
    ) -> _Page | None:
        """One page, or None when it is past the end (404 Invalid page)."""
        try:
            body = await self.upstream.get_json(
                "list", LIST_PATH, self._params(page, size, extra), budget
            )
        except NotFound:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("results"), list):
            raise UpstreamError("list", "response is not a page object with a results array")
        results: list[object] = body["results"]
        if len(results) > size:
            raise UpstreamError(
                "list", f"a page held {len(results)} rows where {size} were asked for"
            )
        count = body.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise UpstreamError("list", "page has no usable count")
        if count > self.max_jobs:
            digits = str(count)  # an upstream's number, shown whole only when it is short
            shown = digits if len(digits) <= 20 else f"a {len(digits)}-digit number of"
            raise UpstreamError(
                "list", f"the list holds {shown} jobs, more than max_jobs ({self.max_jobs})"
            )
        rows = ReadResult(complete=False)
        rows.add_rows("list", results, parse_row)
        return _Page(rows, count, body.get("next"), len(results))

    async def _first_page(self, budget: Budget, extra: Mapping[str, str]) -> _Page | None:
        """Page 1 at the configured size; at SAFE_PAGE_SIZE from then on if that is refused."""
        try:
            return await self._page(1, self.page_size, budget, extra)
        except UpstreamError as exc:
            if self.page_size <= SAFE_PAGE_SIZE or not _refuses_size(exc):
                raise
            log(
                logger,
                logging.WARNING,
                "page size refused; using 100 from now on",
                source=self.source.name,
                page_size=self.page_size,
                reason=str(exc),
            )
            self.page_size = SAFE_PAGE_SIZE
            return await self._page(1, self.page_size, budget, extra)

    async def read_list(
        self, budget: Budget, extra: Mapping[str, str], *, complete: bool
    ) -> ReadResult:
        """Page 1 first, to learn `count` and the page size the server really serves; then
        the other pages concurrently.

        A server that serves fewer rows than asked while `next` exists caps the size: the
        remaining pages are counted from the rows it gave. Rows can shift between pages while
        we read (new jobs arrive at the top), so rows are deduplicated by id and a `next` link
        on the last announced page is followed, boundedly.
        """
        result = ReadResult(complete=complete)
        first = await self._first_page(budget, extra)
        if first is None:
            return result
        result.merge(first.rows)
        size = self.page_size
        if first.next is not None and 0 < first.size < size:
            size = first.size  # the server's cap
        pages = max(1, math.ceil(first.count / size))
        workers = self.upstream.workers(budget)
        progress = budget.progress
        if progress is not None:
            progress.pages, progress.done, progress.workers = pages, 1, workers

        async def page_of(page: int) -> _Page | None:
            found = await self._page(page, size, budget, extra)
            if progress is not None:
                progress.done += 1
            return found

        later = await pooled(range(2, pages + 1), page_of, workers)
        for page in range(2, pages + 1):
            found = later.get(page)
            if found is not None:
                result.merge(found.rows)
        last = later.get(pages) if pages > 1 else first
        await self._follow(result, pages, last.next if last else None, size, budget, extra)
        return result

    async def _follow(
        self,
        result: ReadResult,
        page: int,
        next_link: object,
        size: int,
        budget: Budget,
        extra: Mapping[str, str],
    ) -> None:
        """Pages beyond the announced last one, for rows that arrived while we read."""
        for _ in range(MAX_EXTRA_PAGES):
            following = _page_of(next_link)
            if following is None:
                return
            if following != page + 1:
                log(
                    logger,
                    logging.WARNING,
                    "ignoring a next link that does not move forward",
                    source=self.source.name,
                    page=page,
                    next_page=following,
                )
                return
            found = await self._page(following, size, budget, extra)
            if found is None:
                return
            result.merge(found.rows)
            page, next_link = following, found.next

    async def read_all(self, budget: Budget) -> ReadResult:
        return await self.read_list(budget, {}, complete=True)

    async def read_active(self, budget: Budget) -> ReadResult:
        return await self.read_list(budget, {"completed": "false"}, complete=False)

    async def read_changes(self, budget: Budget, known: Known) -> ReadResult:
        """Active jobs, plus jobs that started since the last read and already finished;
        jobs that were active and are in neither are read by id to learn how they ended."""
        since = known.since - STARTED_AFTER_MARGIN
        started_after = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        active, finished = await run_all(
            [
                self.read_active(budget),
                self.read_list(
                    budget, {"completed": "true", "started_after": started_after}, complete=False
                ),
            ]
        )
        active.merge(finished)
        missing = [job_id for job_id in known.active if job_id not in active.jobs]
        if len(missing) > BY_ID_LIMIT:
            return await self.read_all(budget)
        found = await pooled(
            missing, lambda i: self._read_by_id(i, budget), self.upstream.workers(budget)
        )
        for job_id, job in found.items():
            if job is None:
                active.gone.add(job_id)
            elif isinstance(job, RowError):
                active.skip("detail", job)  # skipped like a bad list row, never fatal
            else:
                active.jobs[job_id] = job
        return active

    async def _read_by_id(self, job_id: str, budget: Budget) -> Job | RowError | None:
        """One job by id; None when gone; an unusable row as its RowError."""
        try:
            body = await self.upstream.get_json(
                "detail", f"{LIST_PATH}/{quote(job_id, safe='')}", {}, budget
            )
        except NotFound:
            return None
        try:
            return parse_row(body)
        except RowError as exc:
            return exc

    async def read_one(self, job_id: str, budget: Budget) -> Job | None:
        found = await self._read_by_id(job_id, budget)
        if isinstance(found, RowError):
            raise UpstreamError("detail", f"unusable row: {found}")
        return found
