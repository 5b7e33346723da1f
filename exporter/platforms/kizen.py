"""Kizen: `GET /api/bulk-action-progress` (page-number pagination) and `/{id}`."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from urllib.parse import parse_qs, quote, urlsplit

from exporter.config import KizenSource
from exporter.jobs import (
    Job,
    Phase,
    RowError,
    label,
    parse_timestamp,
    require_count,
    require_str,
)
from exporter.logs import log
from exporter.platforms import BY_ID_LIMIT, Known, ReadResult, pooled, run_all
from exporter.upstream import NotFound, Upstream, UpstreamError

logger = logging.getLogger("exporter.platforms.kizen")

LIST_PATH = "/api/bulk-action-progress"
PHASES = {
    "queued": Phase.QUEUED,
    "initialize": Phase.QUEUED,
    "in_progress": Phase.RUNNING,
    "completed": Phase.COMPLETED,
    "failed": Phase.FAILED,
    "cancelled": Phase.CANCELLED,
    "skipped": Phase.CANCELLED,
}
# A `count` that would need more pages than this is not believed; the read stops there.
MAX_PAGES = 5000
# `started_at` moves forward while a job is queued; look back this far beyond the last read.
STARTED_AFTER_MARGIN = 300.0
# Pages followed through `next` beyond what page 1's `count` announced (rows added mid-read).
MAX_EXTRA_PAGES = 20


def parse_row(row: object) -> Job:
    """Map one ReadBulkActionProgress object to a Job; RowError if it is unusable."""
    if not isinstance(row, dict):
        raise RowError("row is not a JSON object")
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
        id=require_str(row, "id"),
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


class KizenClient:
    def __init__(self, source: KizenSource, upstream: Upstream) -> None:
        self.source = source
        self.upstream = upstream

    def _params(self, page: int, extra: dict[str, str] | None = None) -> dict[str, str]:
        params = {"page": str(page), "page_size": str(self.source.page_size)}
        if self.source.filters is not None:
            params.update(self.source.filters.model_dump(exclude_none=True))
        params.update(extra or {})
        return params

    async def _page(
        self, page: int, deadline: float, extra: dict[str, str] | None
    ) -> dict[str, object] | None:
        """One page of the list, or None when the page is past the end (404 Invalid page)."""
        try:
            body = await self.upstream.get_json(
                "list", LIST_PATH, self._params(page, extra), deadline
            )
        except NotFound:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("results"), list):
            raise UpstreamError("list", "response is not a page object with a results array")
        return body

    async def read_all(self, deadline: float) -> ReadResult:
        return await self.read_list(deadline)

    async def read_list(self, deadline: float, extra: dict[str, str] | None = None) -> ReadResult:
        """Page 1 first, to learn `count`; then the other pages concurrently.

        Rows can shift between pages while we read (new jobs arrive at the top), so rows are
        deduplicated by id and a `next` link on the last announced page is followed, boundedly.
        """
        result = ReadResult()
        first = await self._page(1, deadline, extra)
        if first is None:
            return result
        result.add_rows(first["results"], parse_row)
        count = first.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise UpstreamError("list", "page has no usable count")
        pages = max(1, math.ceil(count / self.source.page_size))
        if pages > MAX_PAGES:
            log(
                logger,
                logging.WARNING,
                "count too large; reading only the first pages",
                source=self.source.name,
                count=count,
                pages=MAX_PAGES,
            )
            pages = MAX_PAGES
        ended = False

        async def fetch(page: int) -> object:
            """Read one page into `result`; keep only its `next` link, not the page itself."""
            nonlocal ended
            body = await self._page(page, deadline, extra)
            if body is None:
                ended = True  # the list shrank while we read: later pages do not exist
                return None
            result.add_rows(body["results"], parse_row)
            return body.get("next")

        wanted = (p for p in range(2, pages + 1) if not ended)
        links = await pooled(wanted, fetch, self.upstream.workers)
        last_next = links.get(pages) if pages > 1 else first.get("next")
        page = pages
        for _ in range(MAX_EXTRA_PAGES):
            following = _page_of(last_next)
            if following is None:
                break
            if following != page + 1:
                log(
                    logger,
                    logging.WARNING,
                    "ignoring a next link that does not move forward",
                    source=self.source.name,
                    page=page,
                    next_page=following,
                )
                break
            body = await self._page(following, deadline, extra)
            if body is None:
                break
            result.add_rows(body["results"], parse_row)
            page, last_next = following, body.get("next")
        return result

    async def read_changes(self, deadline: float, known: Known) -> ReadResult:
        """Active jobs, plus jobs that started since the last read and already finished;
        jobs that were active and are in neither are read by id to learn how they ended."""
        since = known.since - STARTED_AFTER_MARGIN
        started_after = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        active, finished = await run_all(
            [
                self.read_list(deadline, {"completed": "false"}),
                self.read_list(deadline, {"completed": "true", "started_after": started_after}),
            ]
        )
        active.merge(finished)
        active.complete = False
        missing = [job_id for job_id in known.active if job_id not in active.jobs]
        if len(missing) > BY_ID_LIMIT:
            return await self.read_all(deadline)
        for job_id, job in (
            await pooled(missing, lambda i: self.read_one(i, deadline), self.upstream.workers)
        ).items():
            if job is None:
                active.gone.add(job_id)
            else:
                active.jobs[job_id] = job
        return active

    async def read_one(self, job_id: str, deadline: float) -> Job | None:
        try:
            body = await self.upstream.get_json(
                "detail", f"{LIST_PATH}/{quote(job_id, safe='')}", {}, deadline
            )
        except NotFound:
            return None
        try:
            return parse_row(body)
        except RowError as exc:
            raise UpstreamError("detail", f"unusable row: {exc}") from None
