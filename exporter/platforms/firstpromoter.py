"""FirstPromoter API v2 batch processes: `GET /batch_processes`, `/batch_processes/progress`
and `/batch_processes/{id}`.

Auth is a Bearer token plus the `Account-ID` header. The list is documented as unpaginated;
the progress endpoint maps every batch id to a percentage and is the cheap way to see them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import ClassVar, Literal

from pydantic import Field

from exporter.jobs import (
    Job,
    Labels,
    Phase,
    QueueClock,
    RowError,
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
    notice,
    read_by_id,
    relearn_notices,
    run_both,
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
# Every read names the statuses it wants: the reference does not say what a request naming
# none answers, and its page titles ("List in progress batch processes") suggest only the
# batches in progress.
ALL_STATUSES: tuple[Status, ...] = ("pending", "in_progress", "completed", "failed", "stopped")
# The list is documented as unpaginated; in case it is paginated like FirstPromoter's other
# lists, ask for pages of PER_PAGE and stop on an empty, short, oversized or repeated page.
PER_PAGE = 100
MAX_PAGES = 1000
# What this client can learn of an account (`notices` keys), kept across restarts.
_BEHAVIOURS = frozenset(
    {
        "processed_includes_failed",
        "progress_not_percent",
        "progress_is_fraction",
        "progress_map_active_only",
    }
)

# Batch id -> its progress number; None when the entry is not a usable number (the id is
# listed all the same, and that batch's progress comes from its counts).
ProgressMap = Mapping[str, float | None]
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
    times=("created_at", "updated_at"),
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


def _basis(row: dict[str, object]) -> int | None:
    """The items a batch holds: `selected_total`, else `total`. A `selected_total` of 0 beside
    a positive `total` is not taken for an empty batch (its pending items would read 0 while
    its progress says otherwise): `total` is."""
    selected = optional_count(row, "selected_total")
    total = optional_count(row, "total")
    if selected is None or (selected == 0 and total):
        return total
    return selected


def _finished(row: object) -> bool:
    """Whether a row is of a finished batch: only its counts are final, so only it is
    evidence of how the account counts (a running batch's counts can be momentarily
    inconsistent, and one such row must not change how every other batch is read)."""
    if not isinstance(row, dict):
        return False
    status = row.get("status")
    phase = PHASES.get(status) if isinstance(status, str) else None
    return phase is not None and phase.terminal


def counts_failed_as_processed(row: object) -> bool:
    """Whether a finished batch's row shows `processed_count` already counting the failed
    items: with them added again it would hold more items than the batch selected, while on
    its own it fits. (Any batch that ended with failures shows it, when that is how the
    platform counts.)"""
    if not isinstance(row, dict) or not _finished(row):
        return False
    try:
        processed = require_count(row, "processed_count")
        failed = require_count(row, "failed_count")
        basis = _basis(row)
    except RowError:
        return False
    return basis is not None and failed > 0 and processed + failed > basis >= processed >= failed


def _percent_of(row: dict[str, object], progress: ProgressMap | None) -> float | None:
    """The batch's progress number: the progress map's, else (the id not in the map) the
    row's own `progress`; None when the map's entry is not a usable number, or neither
    holds one: then the counts give the progress."""
    job_id = row.get("id")
    key = str(job_id) if job_id is not None else None
    if progress and key is not None and key in progress:
        return progress[key]
    field = row.get("progress")
    if isinstance(field, int | float) and not isinstance(field, bool):
        return field
    return None


def progress_unit(row: object, progress: ProgressMap | None, includes_failed: bool) -> str | None:
    """What a row shows the progress number to be, when it shows anything: "fraction" (at
    least half the items done, and a number of at most 1 close to the share done) or "other"
    (above 100: not a percentage, perhaps a count of items). Only a finished batch shows it
    (`_finished`)."""
    if not isinstance(row, dict) or not _finished(row):
        return None
    value = _percent_of(row, progress)
    if value is None:
        return None
    if value > 100.5:
        return "other"
    try:
        processed = require_count(row, "processed_count")
        failed = require_count(row, "failed_count")
        basis = _basis(row)
    except RowError:
        return None
    if not basis:
        return None
    done = processed if includes_failed else processed + failed
    ratio = done / basis
    # Tight on purpose: a percentage of a batch half done is at least 50, and a number that
    # merely is small (a 0 left on a finished batch) is not taken for a fraction.
    fraction = ratio >= 0.5 and 0 < value <= 1 and abs(value - ratio) <= 0.1
    return "fraction" if fraction else None


def parse_row(
    row: object,
    progress: ProgressMap | None = None,
    redact: Redact | None = None,
    *,
    includes_failed: bool = False,
    progress_scale: float | None = 100,
    labels: Callable[[str], str] = label,
) -> Job:
    """Map one BatchProcess object to a Job; RowError if it is unusable. `redact` masks
    secrets in the `processing_errors` kept for the landing page.

    includes_failed: `processed_count` counts the failed items too (the account was seen
    answering so), so the succeeded ones are `processed_count - failed_count`.
    progress_scale: what the progress number is out of (100: a percentage; 1: a fraction);
    None: the number is not a progress at all, and the counts give it."""
    row = require_object(row)
    job_id = require_id(row.get("id"), integer=True)
    status = require_str(row, "status")
    phase = PHASES.get(status, Phase.UNKNOWN)
    processed = require_count(row, "processed_count")
    failed = require_count(row, "failed_count")
    basis = _basis(row)
    if includes_failed:
        done, processed = processed, max(processed - failed, 0)
    else:
        done = processed + failed
    pending = max((basis if basis is not None else 0) - done, 0)
    percent = _percent_of(row, progress) if progress_scale is not None else None
    if percent is not None and progress_scale is not None:
        ratio = clamp_ratio(percent / progress_scale)
    elif basis:
        ratio = clamp_ratio(done / basis)
    else:
        ratio = 1.0 if phase.terminal else 0.0
    updated_at = parse_timestamp(row.get("updated_at"), "updated_at")
    return Job(
        id=job_id,
        action=labels(require_str(row, "action_label")),
        object="",
        status=labels(status),
        phase=phase,
        pending=pending,
        succeeded=processed,
        failed=failed,
        progress=ratio,
        started_at=parse_timestamp(row.get("created_at"), "created_at"),
        completed_at=updated_at if phase.terminal else None,
        failure=failure_of(processing_errors(row.get("processing_errors"), redact)),
    )


def parse_progress(body: object) -> dict[str, float | None]:
    """The progress map: every id it lists, with its number, or None when the entry is not a
    usable number (null, true, a word, a quoted number, a 400-digit integer): the id is still
    listed, and that batch's progress comes from its counts."""
    if not isinstance(body, dict):
        raise UpstreamError("progress", "response is not a JSON object of id: percent")
    out: dict[str, float | None] = {}
    # Every steady refresh reads the whole map (an entry per batch): the usual entry, a
    # float under a string key as JSON gives it, is taken without further checks.
    for key, value in body.items():
        if type(value) is float and type(key) is str:
            out[key] = value if value == value else None  # NaN is no number
        elif isinstance(value, bool) or not isinstance(value, int | float):
            out[str(key)] = None
        else:
            try:
                out[str(key)] = float(value)
            except OverflowError:  # a 400-digit integer is no percentage
                out[str(key)] = None
    return out


class FirstPromoterClient:
    """Reads one FirstPromoter account's batch processes.

    Remembers what it learnt of the account (`notices`: whether `processed_count` counts
    the failed items, what the progress number is out of, whether the progress map lists
    only the batches in progress; kept across restarts and reloads through `learnt` and
    `relearn`), and which batches it last saw unfinished, so that one missing from every
    later answer is read by id to learn how it ended rather than forgotten unread.
    """

    def __init__(self, source: FirstPromoterSource, upstream: Upstream, settings: Settings) -> None:
        self.source = source
        self.upstream = upstream
        self.max_jobs = settings.max_jobs
        self.notices: dict[str, str] = {}
        self.labels = Labels(upstream.redact)
        self.includes_failed = False
        # What the progress number is out of; None: not a progress (the counts give it).
        self.progress_scale: float | None = 100
        # Ids last seen queued, running or in a status nobody mapped.
        self._unfinished: set[str] = set()

    def learnt(self) -> dict[str, str]:
        """What this account was seen doing otherwise than the first guesses, to be kept."""
        return dict(self.notices)

    def relearn(self, saved: Mapping[str, object]) -> None:
        """Take back what `learnt` gave (from the state store, or a runner a reload replaced),
        without logging it again: it was logged when it was seen."""
        relearn_notices(self.notices, saved, _BEHAVIOURS)
        self.includes_failed = self.includes_failed or "processed_includes_failed" in saved
        if "progress_not_percent" in saved:
            self.progress_scale = None
        elif "progress_is_fraction" in saved and self.progress_scale == 100:
            self.progress_scale = 1

    @staticmethod
    def _status_params(statuses: list[Status]) -> list[tuple[str, str]]:
        return [("filters[status][]", s) for s in statuses]

    def _observe_map(self, rows: list[object], progress: ProgressMap) -> None:
        """Learn from a full read whether the progress map lists only the batches in progress
        whatever its filter asks: finished batches the list returned are absent from it.
        Read right either way (absence from the map never makes a batch gone; deletions are
        found by full reads and by-id reads), but said, since a batch that starts and
        finishes between two scrapes is then found only by the next full read."""
        if "progress_map_active_only" in self.notices or not progress:
            return
        finished = [r for r in rows if isinstance(r, dict) and _finished(r)]
        if finished and all(str(r.get("id")) not in progress for r in finished):
            notice(
                self.notices,
                logger,
                self.source.name,
                "progress_map_active_only",
                "the progress map lists only the batches in progress, whatever statuses it is "
                "asked for; finished batches stay counted, a batch that starts and finishes "
                "between two scrapes is found by the next full read",
            )

    def _observe(self, rows: list[object]) -> None:
        """Learn from rows, before any is parsed, how the account counts processed items."""
        if self.includes_failed or not any(counts_failed_as_processed(r) for r in rows):
            return
        self.includes_failed = True
        notice(
            self.notices,
            logger,
            self.source.name,
            "processed_includes_failed",
            "processed_count already counts the failed items (a batch holds fewer items than "
            "processed_count + failed_count); succeeded items are read as processed_count - "
            "failed_count",
        )

    def _observe_progress(self, rows: list[object], progress: ProgressMap) -> None:
        """Learn from rows, before any is parsed, what the progress number is out of."""
        if self.progress_scale != 100:
            return
        units = {progress_unit(r, progress, self.includes_failed) for r in rows}
        if "other" in units:
            self.progress_scale = None
            notice(
                self.notices,
                logger,
                self.source.name,
                "progress_not_percent",
                "progress numbers above 100 came back: they are not percentages; a batch's "
                "progress is computed from its counts",
            )
        elif "fraction" in units:
            self.progress_scale = 1
            notice(
                self.notices,
                logger,
                self.source.name,
                "progress_is_fraction",
                "progress numbers are fractions of 1, not percentages (a batch more than half "
                "done shows at most 1); they are read as fractions",
            )

    def _parse(self, progress: ProgressMap, *, observed: bool = False) -> Callable[[object], Job]:
        """Parse one row; unless the rows were `observed` together first (`_parsed`), learn
        from each on its own (rows read by id) before it is parsed."""

        def parse(row: object) -> Job:
            if not observed:
                self._observe([row])
                self._observe_progress([row], progress)
            return parse_row(
                row,
                progress,
                self.upstream.redact,
                includes_failed=self.includes_failed,
                progress_scale=self.progress_scale,
                labels=self.labels,
            )

        return parse

    def _parsed(
        self,
        rows: list[object],
        progress: ProgressMap,
        *,
        complete: bool,
        trace: Trace | None = None,
    ) -> ReadResult:
        """List rows as a ReadResult, each batch's percentage taken from the progress map."""
        self._observe(rows)
        self._observe_progress(rows, progress)
        result = ReadResult(complete=complete)
        result.add_rows("list", rows, self._parse(progress, observed=True), trace)
        return result

    async def _progress(self, budget: Budget, statuses: list[Status]) -> dict[str, float | None]:
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

    async def _read(self, budget: Budget, statuses: list[Status], *, complete: bool) -> ReadResult:
        rows, progress = await run_both(
            self._rows(budget, statuses), self._progress(budget, statuses)
        )
        result = self._parsed(rows, progress, complete=complete, trace=budget.trace)
        if complete:
            self._observe_map(rows, progress)
            # Whatever a full read misses is forgotten: batches it last saw unfinished are
            # first read by id (they may have moved to a status nobody mapped, which no
            # filter names).
            await self._read_missing(result, self._unfinished, progress, budget)
        return result

    async def _read_missing(
        self, result: ReadResult, ids: Iterable[str], progress: ProgressMap, budget: Budget
    ) -> None:
        """Read by id the `ids` no answer held (a 404 forgets them)."""
        missing = [i for i in ids if i not in result.jobs]
        if missing and len(missing) <= BY_ID_LIMIT:
            await read_by_id(
                result, missing, self._parse(progress), self.upstream, LIST_PATH, budget
            )

    def _configured_statuses(self) -> list[Status]:
        """The statuses to ask for: the source's `statuses`, else all five."""
        return list(self.source.statuses or ALL_STATUSES)

    def _active_statuses(self) -> list[Status]:
        configured = self.source.statuses
        return [s for s in ACTIVE if not configured or s in configured]

    def _settle(self, result: ReadResult) -> ReadResult:
        """Leave out batches in a status the source does not ask for (read by id after they
        left the filtered lists: gone, as in a full read), and note the unfinished ones."""
        wanted = self.source.statuses
        if wanted:
            for job_id in [i for i, job in result.jobs.items() if job.status not in wanted]:
                if PHASES.get(result.jobs[job_id].status) is not None:
                    del result.jobs[job_id]
                    result.gone.add(job_id)
        unfinished = {i for i, job in result.jobs.items() if not job.phase.terminal}
        if result.complete:
            self._unfinished = unfinished
        else:
            self._unfinished = (self._unfinished - result.jobs.keys() - result.gone) | unfinished
        return result

    async def read_all(self, budget: Budget) -> ReadResult:
        return self._settle(await self._read(budget, self._configured_statuses(), complete=True))

    async def read_active(self, budget: Budget) -> ReadResult:
        statuses = self._active_statuses()
        if not statuses:
            return ReadResult(complete=False)
        return self._settle(await self._read(budget, statuses, complete=False))

    async def _rows(self, budget: Budget, statuses: list[Status]) -> list[object]:
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
        """The active batches, and the progress map of every wanted batch (one cheap request
        that lists ids): ids never seen before, and batches that were unfinished and are no
        longer in the active list, are read by id (a 404 forgets them). An id the map does
        not list is not gone for that: the map may list only the batches in progress, or
        leave one out; deletions are found by full reads and by-id reads. When more than
        BY_ID_LIMIT reads would be needed, the result asks for a full read instead."""
        active_statuses = self._active_statuses()
        # The progress map of every configured status, beside the active rows: it lists ids.
        progress_read = self._progress(budget, self._configured_statuses())
        if active_statuses:
            rows, progress = await run_both(self._rows(budget, active_statuses), progress_read)
        else:
            rows, progress = [], await progress_read
        result = self._parsed(rows, progress, complete=False, trace=budget.trace)
        listed = progress.keys()
        unfinished = list(dict.fromkeys([*known.active, *self._unfinished]))
        left = [i for i in unfinished if i not in result.jobs]
        wanted = [i for i in listed if i not in known.ids and i not in result.jobs]
        if len(wanted) + len(left) > BY_ID_LIMIT:
            result.needs_full = True
            return self._settle(result)
        await read_by_id(
            result, [*wanted, *left], self._parse(progress), self.upstream, LIST_PATH, budget
        )
        return self._settle(result)
