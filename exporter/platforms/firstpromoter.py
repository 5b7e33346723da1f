"""FirstPromoter API v2: `GET /batch_processes`, `/batch_processes/progress` and `/{id}`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from urllib.parse import quote

from exporter.config import FirstPromoterSource
from exporter.jobs import (
    Job,
    Phase,
    RowError,
    clamp_ratio,
    label,
    optional_count,
    parse_timestamp,
    require_count,
    require_str,
)
from exporter.logs import log
from exporter.platforms import BY_ID_LIMIT, Known, ReadResult, pooled
from exporter.upstream import NotFound, Upstream, UpstreamError

logger = logging.getLogger("exporter.platforms.firstpromoter")

LIST_PATH = "/batch_processes"
PROGRESS_PATH = "/batch_processes/progress"
PHASES = {
    "pending": Phase.QUEUED,
    "in_progress": Phase.RUNNING,
    "completed": Phase.COMPLETED,
    "failed": Phase.FAILED,
    "stopped": Phase.CANCELLED,
}
ACTIVE = ("pending", "in_progress")
# The list is documented as unpaginated; in case it is paginated like FirstPromoter's other
# lists, ask for pages of PER_PAGE and stop on an empty, short, oversized or repeated page.
PER_PAGE = 100
MAX_PAGES = 1000

ProgressMap = Mapping[str, float]


def parse_row(row: object, progress: ProgressMap | None = None) -> Job:
    """Map one BatchProcess object to a Job; RowError if it is unusable."""
    if not isinstance(row, dict):
        raise RowError("row is not a JSON object")
    raw_id = row.get("id")
    if not isinstance(raw_id, int) or isinstance(raw_id, bool):
        raise RowError("id is missing or not an integer")
    status = require_str(row, "status")
    phase = PHASES.get(status, Phase.UNKNOWN)
    processed = require_count(row, "processed_count")
    failed = require_count(row, "failed_count")
    selected = optional_count(row, "selected_total")
    total = optional_count(row, "total")
    basis = selected if selected is not None else total
    pending = max((basis if basis is not None else 0) - processed - failed, 0)
    job_id = str(raw_id)
    percent: float | None = (progress or {}).get(job_id)
    if percent is None:
        field = row.get("progress")
        if isinstance(field, int | float) and not isinstance(field, bool):
            percent = field
    if percent is not None:
        ratio = clamp_ratio(percent / 100)
    elif basis:
        ratio = clamp_ratio((processed + failed) / basis)
    else:
        ratio = 1.0 if phase.terminal else 0.0
    updated_at = parse_timestamp(row.get("updated_at"), "updated_at")
    return Job(
        id=job_id,
        action=label(require_str(row, "action_label")),
        object="",
        status=label(status),
        phase=phase,
        pending=pending,
        succeeded=processed,
        failed=failed,
        progress=ratio,
        started_at=parse_timestamp(row.get("created_at"), "created_at"),
        completed_at=updated_at if phase.terminal else None,
    )


def parse_progress(body: object) -> dict[str, float]:
    if not isinstance(body, dict):
        raise UpstreamError("progress", "response is not a JSON object of id: percent")
    return {
        str(k): v for k, v in body.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


class FirstPromoterClient:
    def __init__(self, source: FirstPromoterSource, upstream: Upstream) -> None:
        self.source = source
        self.upstream = upstream

    def status_params(self, statuses: list[str] | None) -> list[tuple[str, str]]:
        return [("filters[status][]", s) for s in statuses or ()]

    async def read_progress(
        self, deadline: float, statuses: list[str] | None = None
    ) -> dict[str, float]:
        body = await self.upstream.get_json(
            "progress", PROGRESS_PATH, self.status_params(statuses), deadline
        )
        return parse_progress(body)

    async def read_all(self, deadline: float) -> ReadResult:
        statuses: list[str] | None = list(self.source.statuses) if self.source.statuses else None
        return await self.read_list(deadline, statuses)

    async def read_list(self, deadline: float, statuses: list[str] | None) -> ReadResult:
        rows, progress = await asyncio.gather(
            self._rows(deadline, statuses), self.read_progress(deadline, statuses)
        )
        result = ReadResult()
        result.add_rows(rows, lambda row: parse_row(row, progress))
        return result

    async def _rows(self, deadline: float, statuses: list[str] | None) -> list[object]:
        rows: list[object] = []
        seen: set[object] = set()
        for page in range(1, MAX_PAGES + 1):
            params = [
                *self.status_params(statuses),
                ("page", str(page)),
                ("per_page", str(PER_PAGE)),
            ]
            body = await self.upstream.get_json("list", LIST_PATH, params, deadline)
            if not isinstance(body, list):
                raise UpstreamError("list", "response is not a JSON array of batch processes")
            ids = {r.get("id") for r in body if isinstance(r, dict)}
            if not body or (ids and ids <= seen):
                break
            seen |= ids
            rows.extend(body)
            if len(body) != PER_PAGE:
                # Short: the last page. Longer than asked: the server ignores pagination.
                break
        else:
            log(
                logger,
                logging.WARNING,
                "stopped reading batch processes at the page cap",
                source=self.source.name,
                pages=MAX_PAGES,
            )
        return rows

    async def read_one(
        self, job_id: str, deadline: float, progress: ProgressMap | None = None
    ) -> Job | None:
        try:
            body = await self.upstream.get_json(
                "detail", f"{LIST_PATH}/{quote(job_id, safe='')}", {}, deadline
            )
        except NotFound:
            return None
        try:
            return parse_row(body, progress)
        except RowError as exc:
            raise UpstreamError("detail", f"unusable row: {exc}") from None

    async def read_changes(self, deadline: float, known: Known) -> ReadResult:
        """The active batches, and the progress map of every batch (one cheap request that
        lists every id): ids never seen before, and active batches that left the active list,
        are read by id; ids the map no longer lists are gone."""
        configured = self.source.statuses
        active_statuses = [s for s in ACTIVE if configured is None or s in configured]
        progress_task = self.read_progress(deadline, list(configured) if configured else None)
        if active_statuses:
            rows, progress = await asyncio.gather(
                self._rows(deadline, active_statuses), progress_task
            )
        else:
            rows, progress = [], await progress_task
        result = ReadResult(complete=False)
        result.add_rows(rows, lambda row: parse_row(row, progress))
        listed = progress.keys()
        result.gone = {job_id for job_id in known.ids if job_id not in listed}
        wanted = [i for i in listed if i not in known.ids and i not in result.jobs]
        wanted += [i for i in known.active if i not in result.jobs and i in listed]
        if len(wanted) > BY_ID_LIMIT:
            return await self.read_all(deadline)
        fetched = await pooled(
            wanted, lambda i: self.read_one(i, deadline, progress), self.upstream.workers
        )
        for job_id, job in fetched.items():
            if job is None:
                result.gone.add(job_id)
            else:
                result.jobs[job_id] = job
        return result
