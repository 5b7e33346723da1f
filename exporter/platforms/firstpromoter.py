"""FirstPromoter API v2 batch processes: `GET /batch_processes`, `/batch_processes/progress`
and `/batch_processes/{id}`.

Auth is a Bearer token plus the `Account-ID` header. The list is documented as unpaginated;
the progress endpoint maps every batch id to a percentage and is the cheap way to see them all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import ClassVar, Literal

from pydantic import Field

from exporter.jobs import (
    Job,
    Phase,
    QueueClock,
    clamp_ratio,
    failure_of,
    label,
    optional_count,
    parse_timestamp,
    processing_errors,
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
    read_by_id,
)
from exporter.redact import Redact
from exporter.settings import Settings
from exporter.trace import RowKeys, Trace
from exporter.upstream import Budget, Upstream, UpstreamError

logger = logging.getLogger("exporter.platforms.firstpromoter")

LIST_PATH = "/batch_processes"
PROGRESS_PATH = "/batch_processes/progress"
PHASES: Mapping[str, Phase] = {
    "pending": Phase.QUEUED,
    "in_progress": Phase.RUNNING,
    "completed": Phase.COMPLETED,
    "failed": Phase.FAILED,
    "stopped": Phase.CANCELLED,
}
Status = Literal["pending", "in_progress", "completed", "failed", "stopped"]
ACTIVE: tuple[Status, ...] = ("pending", "in_progress")
# The list is documented as unpaginated; in case it is paginated like FirstPromoter's other
# lists, ask for pages of PER_PAGE and stop on an empty, short, oversized or repeated page.
PER_PAGE = 100
MAX_PAGES = 1000

ProgressMap = Mapping[str, float]
# What `parse_row` reads of a BatchProcess row, and what else the reference lists.
ROW_KEYS = RowKeys(
    read=frozenset(
        {
            "id",
            "status",
            "processed_count",
            "failed_count",
            "selected_total",
            "total",
            "progress",
            "action_label",
            "created_at",
            "updated_at",
            "processing_errors",
        }
    ),
    documented=frozenset({"meta"}),
)


class FirstPromoterSource(SourceConfig):
    """A FirstPromoter account."""

    DEFAULT_BASE_URL: ClassVar[str] = "https://api.firstpromoter.com/api/v2/company"
    # A quarter of the 400/m account limit: the account's own integrations share it.
    DEFAULT_RATE_LIMIT: ClassVar[str] = "100/m"
    PHASES: ClassVar[Mapping[str, Phase]] = PHASES
    QUEUE_CLOCK: ClassVar[QueueClock] = QueueClock.CREATION_KNOWN
    ROW_KEYS: ClassVar[RowKeys] = ROW_KEYS

    platform: Literal["firstpromoter"]
    account_id: str = Field(min_length=1)
    statuses: list[Status] | None = None

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}", "Account-ID": self.account_id}

    def identifiers(self) -> dict[str, str]:
        return {"account_id": self.account_id}

    def options(self) -> dict[str, str]:
        if self.statuses is None:
            return {}
        return {"statuses": f"[{', '.join(self.statuses)}]"}

    def client(self, upstream: Upstream, settings: Settings) -> PlatformClient:
        return FirstPromoterClient(self, upstream, settings)


def parse_row(
    row: object, progress: ProgressMap | None = None, redact: Redact | None = None
) -> Job:
    """Map one BatchProcess object to a Job; RowError if it is unusable. `redact` masks
    secrets in the `processing_errors` kept for the landing page."""
    row = require_object(row)
    job_id = require_id(row.get("id"), integer=True)
    status = require_str(row, "status")
    phase = PHASES.get(status, Phase.UNKNOWN)
    processed = require_count(row, "processed_count")
    failed = require_count(row, "failed_count")
    selected = optional_count(row, "selected_total")
    total = optional_count(row, "total")
    basis = selected if selected is not None else total
    pending = max((basis if basis is not None else 0) - processed - failed, 0)
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
        failure=failure_of(processing_errors(row.get("processing_errors"), redact)),
    )


def _parsed(
    rows: list[object],
    progress: ProgressMap,
    redact: Redact,
    *,
    complete: bool,
    trace: Trace | None = None,
) -> ReadResult:
    """List rows as a ReadResult, each batch's percentage taken from the progress map."""
    result = ReadResult(complete=complete)
    result.add_rows("list", rows, lambda row: parse_row(row, progress, redact), trace)
    return result


def parse_progress(body: object) -> dict[str, float]:
    if not isinstance(body, dict):
        raise UpstreamError("progress", "response is not a JSON object of id: percent")
    out: dict[str, float] = {}
    for key, value in body.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        try:
            out[str(key)] = float(value)
        except OverflowError:  # a 400-digit integer is no percentage
            continue
    return out


class FirstPromoterClient:
    """Reads one FirstPromoter account's batch processes."""

    def __init__(self, source: FirstPromoterSource, upstream: Upstream, settings: Settings) -> None:
        self.source = source
        self.upstream = upstream
        self.max_jobs = settings.max_jobs

    @staticmethod
    def _status_params(statuses: list[Status] | None) -> list[tuple[str, str]]:
        return [("filters[status][]", s) for s in statuses or ()]

    async def _progress(self, budget: Budget, statuses: list[Status] | None) -> dict[str, float]:
        body = await self.upstream.get_json(
            "progress", PROGRESS_PATH, self._status_params(statuses), budget
        )
        progress = parse_progress(body)
        if len(progress) > self.max_jobs:
            raise UpstreamError(
                "progress",
                f"the account lists {len(progress)} batches, more than max_jobs ({self.max_jobs})",
            )
        return progress

    async def _read(
        self, budget: Budget, statuses: list[Status] | None, *, complete: bool
    ) -> ReadResult:
        rows, progress = await asyncio.gather(
            self._rows(budget, statuses), self._progress(budget, statuses)
        )
        return _parsed(rows, progress, self.upstream.redact, complete=complete, trace=budget.trace)

    def _configured_statuses(self) -> list[Status] | None:
        """The statuses to ask for; None (no filter) when every status is wanted."""
        return list(self.source.statuses) if self.source.statuses else None

    def _active_statuses(self) -> list[Status]:
        configured = self.source.statuses
        return [s for s in ACTIVE if configured is None or s in configured]

    async def read_all(self, budget: Budget) -> ReadResult:
        return await self._read(budget, self._configured_statuses(), complete=True)

    async def read_active(self, budget: Budget) -> ReadResult:
        statuses = self._active_statuses()
        if not statuses:
            return ReadResult(complete=False)
        return await self._read(budget, statuses, complete=False)

    async def _rows(self, budget: Budget, statuses: list[Status] | None) -> list[object]:
        rows: list[object] = []
        seen: set[object] = set()
        for page in range(1, MAX_PAGES + 1):
            params = [
                *self._status_params(statuses),
                ("page", str(page)),
                ("per_page", str(PER_PAGE)),
            ]
            body = await self.upstream.get_json("list", LIST_PATH, params, budget)
            if not isinstance(body, list):
                raise UpstreamError("list", "response is not a JSON array of batch processes")
            if budget.trace is not None:
                budget.trace.page("list", PER_PAGE, len(body))
            ids = {r.get("id") for r in body if isinstance(r, dict)}
            if not body or (ids and ids <= seen):
                break
            seen |= ids
            rows.extend(body)
            if len(rows) > self.max_jobs:
                raise UpstreamError(
                    "list", f"the list holds more than max_jobs ({self.max_jobs}) batches"
                )
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

    async def read_changes(self, budget: Budget, known: Known) -> ReadResult:
        """The active batches, and the progress map of every batch (one cheap request that
        lists every id): ids never seen before, and active batches that left the active list,
        are read by id; ids the map no longer lists are gone."""
        active_statuses = self._active_statuses()
        # The progress map of every configured status, beside the active rows: it lists ids.
        progress_read = self._progress(budget, self._configured_statuses())
        if active_statuses:
            rows, progress = await asyncio.gather(
                self._rows(budget, active_statuses), progress_read
            )
        else:
            rows, progress = [], await progress_read
        result = _parsed(rows, progress, self.upstream.redact, complete=False, trace=budget.trace)
        listed = progress.keys()
        result.gone = {job_id for job_id in known.ids if job_id not in listed}
        wanted = [i for i in listed if i not in known.ids and i not in result.jobs]
        wanted += [i for i in known.active if i not in result.jobs and i in listed]
        if len(wanted) > BY_ID_LIMIT:
            return await self.read_all(budget)
        await read_by_id(
            result,
            wanted,
            lambda row: parse_row(row, progress, self.upstream.redact),
            self.upstream,
            LIST_PATH,
            budget,
        )
        return result
