"""Kizen bulk actions: `GET /api/bulk-action-progress` (page-number pagination) and `/{id}`.

Auth is three headers (`X-API-KEY`, `X-BUSINESS-ID`, `X-USER-ID`); the list is paged with
`page` and `page_size`, and the server may cap the page size silently or refuse a large one.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import AfterValidator, Field

from exporter.jobs import (
    MAX_COUNT,
    MAX_ID_LENGTH,
    Job,
    Labels,
    Phase,
    QueueClock,
    RowError,
    failure_file,
    failure_of,
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
    notice,
    pooled,
    read_by_id,
    relearn_notices,
    run_all,
)
from exporter.redact import Redact
from exporter.settings import Count, Settings, Strict
from exporter.trace import RowKeys
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
# Pages followed through `next` beyond what page 1's `count` announced (rows added mid-read),
# and at most read again per round for rows no page held (pages answered out of order).
MAX_EXTRA_PAGES = 20
GAP_ROUNDS = 3
# The page size every Kizen client is known to be served; used after a larger one is refused.
SAFE_PAGE_SIZE = 100
# What this client can learn of a business (`notices` keys), kept across restarts.
_BEHAVIOURS = frozenset(
    {
        "page_size_capped",
        "page_size_refused",
        "count_missing",
        "next_missing",
        "completed_means_succeeded",
        "started_after_ignored",
    }
)
# What `parse_row` reads of a ReadBulkActionProgress row, and what else the reference lists.
ROW_KEYS = RowKeys(
    read=frozenset(
        {
            "id",
            "action",
            "status",
            "started_at",
            "completed_at",
            "custom_object",
            "pending_count",
            "success_count",
            "failed_count",
            "failure_report",
        }
    ),
    documented=frozenset({"meta", "report", "imported_file", "export_file"}),
    times=("started_at", "completed_at"),
)
UUID_FORM = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def _uuid(value: str) -> str:
    # Said here, in words a config author can act on, rather than as a regular expression.
    if UUID_FORM.fullmatch(value) is None:
        raise ValueError("must be a UUID such as 0b7c6f2e-1d2a-4c3b-9e8f-5a6b7c8d9e0f")
    return value


class KizenFilters(Strict):
    """The list filters a Kizen source may set, sent as query parameters."""

    action: str | None = None
    custom_object_id: Annotated[str, AfterValidator(_uuid)] | None = None


class KizenSource(SourceConfig):
    """A Kizen business."""

    DEFAULT_BASE_URL: ClassVar[str] = "https://app.go.kizen.com"
    # Kizen publishes no limit; a modest rate leaves room for the business's own integrations.
    DEFAULT_RATE_LIMIT: ClassVar[str] = "100/m"
    PHASES: ClassVar[Mapping[str, Phase]] = PHASES
    QUEUE_CLOCK: ClassVar[QueueClock] = QueueClock.START_KNOWN
    ROW_KEYS: ClassVar[RowKeys] = ROW_KEYS

    platform: Literal["kizen"]
    business_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    page_size: Annotated[Count, Field(ge=1, le=1000)] = 1000
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


def _count(row: dict[str, object], field: str) -> int:
    """`require_count`, with the usual case (a plain int in range) checked inline."""
    value = row.get(field)
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value
    return require_count(row, field)  # raises the precise RowError


def canonical_id(job_id: str) -> str:
    """A job id as the exporter keeps it: a UUID in lower case, since UUIDs compare without
    regard to case (a by-id answer may spell the id it was asked for in upper case, and one
    job must not become two). An id a URL path cannot carry (`.`, `..`: HTTP normalises
    them away, and the by-id read would fetch the list) is a bad field."""
    lowered = job_id.lower()
    if lowered != job_id and UUID_FORM.fullmatch(job_id) is not None:
        return lowered
    if job_id.strip(".") == "":
        raise RowError("id is a dot segment, which a URL path cannot carry", field="id")
    return job_id


def parse_row(
    row: object, redact: Redact | None = None, labels: Callable[[str], str] = label
) -> Job:
    """Map one ReadBulkActionProgress object to a Job; RowError if it is unusable. `redact`
    masks secrets in the failure report's file name kept for the landing page.

    A full read of a large account is mostly this (and the JSON decoding before it): the
    common cases are checked inline, the rest goes through the shared `require_*` checks."""
    row = require_object(row)
    job_id = row.get("id")
    if type(job_id) is not str or not 0 < len(job_id) <= MAX_ID_LENGTH:
        job_id = require_id(job_id)
    job_id = canonical_id(job_id)
    status = require_str(row, "status")
    phase = PHASES.get(status, Phase.UNKNOWN)
    pending = _count(row, "pending_count")
    succeeded = _count(row, "success_count")
    failed = _count(row, "failed_count")
    total = pending + succeeded + failed
    progress = (succeeded + failed) / total if total else 1.0 if phase.terminal else 0.0
    custom_object = row.get("custom_object")
    name = custom_object.get("object_name") if isinstance(custom_object, dict) else None
    completed_at = parse_timestamp(row.get("completed_at"), "completed_at")
    report = row.get("failure_report")
    return Job(
        id=job_id,
        action=labels(require_str(row, "action")),
        object=labels(name) if isinstance(name, str) else "",
        status=labels(status),
        phase=phase,
        pending=pending,
        succeeded=succeeded,
        failed=failed,
        progress=progress,
        started_at=parse_timestamp(row.get("started_at"), "started_at"),
        completed_at=completed_at if phase.terminal else None,
        failure=None if report is None else failure_of(report=failure_file(report, redact)),
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
    count: int | None  # None: the page carried none
    next: object
    size: int  # how many rows it held


class _Coverage:
    """Which rows of a paged list the pages read so far held.

    Rows are numbered as they stood when page 1 was served (0 = the newest). New jobs arrive
    at the top, so a page served when the list had `n` more rows than at page 1 held the
    rows `n` places before its own: page p (of `size` rows) at count c held rows
    [(p-1)*size - (c - count), ...). Pages answered out of order while rows arrive leave rows
    that no page held; `pages_for_gaps` says which pages hold them now. A count that went
    down (rows left the list: jobs that finish leave the active list) says nothing of where
    rows went, and no page is read again for it: a job that was active and is missed is read
    by id, one that finished is in the next full read.
    """

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.size = size
        self.spans: list[tuple[int, int]] = []
        self.latest = count  # the count of the latest answer
        self.shrank = False

    def add(self, page: int, answer: _Page) -> None:
        assert answer.count is not None  # pages without a count are read another way
        shift = answer.count - self.count
        start = (page - 1) * self.size - shift
        self.spans.append((start, start + answer.size))
        self.latest = answer.count
        self.shrank = self.shrank or answer.count < self.count

    def gaps(self) -> list[tuple[int, int]]:
        """Rows [start, end) of the list as page 1 saw it that no page held."""
        missing, covered = [], 0
        for start, end in sorted(self.spans):
            if start > covered:
                missing.append((covered, min(start, self.count)))
            covered = max(covered, end)
            if covered >= self.count:
                break
        if covered < self.count:
            missing.append((covered, self.count))
        return [(a, b) for a, b in missing if a < b]

    def pages_for_gaps(self) -> list[int]:
        """The pages that hold the missing rows now (at the latest count), and the page
        after each, in case more rows arrive before they are served."""
        if self.shrank:
            return []
        shift = self.latest - self.count
        pages: set[int] = set()
        for start, end in self.gaps():
            first = (start + shift) // self.size + 1
            last = (end - 1 + shift) // self.size + 1
            pages.update(range(first, last + 2))
        return sorted(pages)


def _refuses_size(error: UpstreamError) -> bool:
    """A 4xx that is about the request itself (not auth, not a missing page, not throttling)."""
    return (
        error.status is not None
        and 400 <= error.status < 500
        and error.status not in (401, 403, 404, 429)
    )


class KizenClient:
    """Reads one Kizen business's bulk actions; remembers the page size the server accepts."""

    def __init__(self, source: KizenSource, upstream: Upstream, settings: Settings) -> None:
        self.source = source
        self.upstream = upstream
        self.max_jobs = settings.max_jobs
        self.page_size = source.page_size
        self.labels = Labels(upstream.redact)
        self.notices: dict[str, str] = {}
        # Learnt from the account's answers (see docs/api.md, "in the other world").
        self.started_after_ignored = False
        self.links_seen = False  # some page carried a `next` link

    def _notice(self, key: str, sentence: str) -> None:
        notice(self.notices, logger, self.source.name, key, sentence)

    def learnt(self) -> dict[str, str]:
        """What this business was seen doing otherwise than the first guesses, to be kept
        across restarts and reloads (`relearn`)."""
        return dict(self.notices)

    def relearn(self, saved: Mapping[str, object]) -> None:
        """Take back what `learnt` gave, without logging it again."""
        relearn_notices(self.notices, saved, _BEHAVIOURS)
        if "started_after_ignored" in saved:
            self.started_after_ignored = True
        if "page_size_refused" in saved:
            self.page_size = min(self.page_size, SAFE_PAGE_SIZE)

    def _parse(self, row: object) -> Job:
        return parse_row(row, self.upstream.redact, self.labels)

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
        if count is None:
            pass  # a page without a count is read to its end another way (`_read_uncounted`)
        elif not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise UpstreamError("list", "page has no usable count")
        elif count > self.max_jobs:
            digits = str(count)  # an upstream's number, shown whole only when it is short
            shown = digits if len(digits) <= 20 else f"a {len(digits)}-digit number of"
            raise UpstreamError(
                "list", f"the list holds {shown} jobs, more than max_jobs ({self.max_jobs})"
            )
        rows = ReadResult(complete=False)
        if budget.trace is not None:
            budget.trace.page("list", size, len(results))
        rows.add_rows("list", results, self._parse, budget.trace)
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
                f"page size refused; using {SAFE_PAGE_SIZE} from now on",
                source=self.source.name,
                page_size=self.page_size,
                reason=str(exc),
            )
            # Kept like the account's other behaviours (a restart does not ask again), but
            # said in the warning above rather than a second time.
            self.notices["page_size_refused"] = (
                f"a page size of {self.page_size} was refused; pages of {SAFE_PAGE_SIZE} are read"
            )
            self.page_size = SAFE_PAGE_SIZE
            return await self._page(1, self.page_size, budget, extra)

    async def read_list(
        self,
        budget: Budget,
        extra: Mapping[str, str],
        *,
        complete: bool,
        stop_after_first: Callable[[_Page], bool] | None = None,
    ) -> ReadResult:
        """Page 1 first, to learn `count` and the page size the server really serves; then
        the other pages concurrently.

        A server that serves fewer rows than asked while `next` exists caps the size: the
        remaining pages are counted from the rows it gave. Rows can shift between pages while
        we read (new jobs arrive at the top), so rows are deduplicated by id, a `next` link
        on the last announced page is followed, boundedly, and rows that no page held (pages
        answered out of order while rows moved, see `_Coverage`) are read again.

        A page without `next` while `count` says more follow is read by `count`; pages
        without `count` are read one after another (`_read_uncounted`). `stop_after_first`
        may end the read after page 1 (it saw that the rest is not wanted).
        """
        result = ReadResult(complete=complete)
        first = await self._first_page(budget, extra)
        if first is None:
            return result
        result.merge(first.rows)
        if first.next is not None:
            self.links_seen = True
        if stop_after_first is not None and stop_after_first(first):
            return result
        size = self.page_size
        count = first.count
        more = first.next is not None or (count is not None and count > first.size)
        if more and 0 < first.size < size:
            size = first.size  # the server's cap
            self._notice(
                "page_size_capped",
                f"the server serves at most {size} rows a page where {self.page_size} were "
                "asked for; the pages are counted at its size",
            )
        if count is None:
            self._notice(
                "count_missing",
                "list pages carry no count; pages are read one after another until an empty, "
                "short, missing or repeated page (a long history takes longer to read)",
            )
            await self._read_uncounted(result, first, size, budget, extra)
            return result
        if first.next is None and count > first.size:
            self._notice(
                "next_missing",
                "list pages carry no next link while count says more rows follow; the pages "
                "are counted from count",
            )
        pages = max(1, math.ceil(count / size))
        coverage = _Coverage(count, size)
        coverage.add(1, first)
        workers = self.upstream.workers(budget)
        progress = budget.progress
        if progress is not None:
            progress.started(pages, workers)

        async def page_of(page: int) -> _Page | None:
            found = await self._page(page, size, budget, extra)
            if found is not None and found.count is not None:
                coverage.add(page, found)  # as answers arrive: the latest count is last
            if progress is not None:
                progress.advance()
            return found

        later = await pooled(range(2, pages + 1), page_of, workers)
        for page in range(2, pages + 1):
            found = later.get(page)
            if found is not None:
                result.merge(found.rows)
        last = later.get(pages) if pages > 1 else first
        await self._follow(
            result, coverage, pages, last.next if last else None, size, budget, extra
        )
        await self._fill_gaps(result, coverage, budget, extra, workers)
        if complete and coverage.gaps():
            # Rows `count` promised that no page served (a page answered 404 or came back
            # empty while later pages held rows, or rows kept moving): what was read is
            # taken in, but nothing is removed for missing from it.
            result.complete = False
            log(
                logger,
                logging.WARNING,
                "the list was read in part (rows its count promised were not served); "
                "nothing is removed until a complete read",
                source=self.source.name,
                rows_missing=sum(b - a for a, b in coverage.gaps()),
            )
        return result

    async def _follow(
        self,
        result: ReadResult,
        coverage: _Coverage,
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
            if found.count is not None:
                coverage.add(following, found)
            page, next_link = following, found.next

    async def _fill_gaps(
        self,
        result: ReadResult,
        coverage: _Coverage,
        budget: Budget,
        extra: Mapping[str, str],
        workers: int,
    ) -> None:
        """Read again the pages where rows that no page held are now, a few rounds at most."""
        for _ in range(GAP_ROUNDS):
            wanted = coverage.pages_for_gaps()[:MAX_EXTRA_PAGES]
            if not wanted:
                return
            log(
                logger,
                logging.DEBUG,
                "rows moved between pages while they were read; reading pages again",
                source=self.source.name,
                pages=",".join(map(str, wanted)),
            )
            found = await pooled(
                wanted, lambda p: self._page(p, coverage.size, budget, extra), workers
            )
            for page, answer in found.items():
                if answer is not None:
                    result.merge(answer.rows)
                    if answer.count is not None:
                        coverage.add(page, answer)
        if coverage.pages_for_gaps():
            log(
                logger,
                logging.DEBUG,
                "rows kept moving while the list was read; some may be missing until the next read",
                source=self.source.name,
            )

    async def _read_uncounted(
        self, result: ReadResult, first: _Page, size: int, budget: Budget, extra: Mapping[str, str]
    ) -> None:
        """Pages after the first, one after another, when pages carry no `count`: until a
        page is missing (404), empty, short or repeats rows already read, bounded by
        max_jobs. A short page 1 without a link may be a silent cap rather than the end,
        unless this server was seen giving links: then page 2 is read to tell."""
        last, page = first, 1
        if 0 < first.size < size:
            size = first.size  # were it a silent cap, the next pages come at its size
        limit = self.max_jobs // max(size, 1) + MAX_EXTRA_PAGES
        while page < limit and last.size > 0:
            short = last.size < (self.page_size if page == 1 else size)
            # A short page ends the list; only page 1 might be short for a silent cap, which
            # a link says, or which is possible while this server was never seen giving one.
            if short and (page > 1 or (last.next is None and self.links_seen)):
                return
            page += 1
            found = await self._page(page, size, budget, extra)
            if found is None:
                return
            if found.next is not None:
                self.links_seen = True
            if found.rows.jobs and found.rows.jobs.keys() <= result.jobs.keys():
                return  # the same rows again: the server ignores the page number
            result.merge(found.rows)
            if len(result.jobs) > self.max_jobs:
                raise UpstreamError(
                    "list", f"the list holds more than max_jobs ({self.max_jobs}) jobs"
                )
            last = found
        if page >= limit:
            log(
                logger,
                logging.WARNING,
                "stopped reading pages at the bound",
                source=self.source.name,
                pages=page,
            )

    async def read_all(self, budget: Budget) -> ReadResult:
        return await self.read_list(budget, {}, complete=True)

    async def read_active(self, budget: Budget) -> ReadResult:
        active = await self.read_list(budget, {"completed": "false"}, complete=False)
        if any(job.phase.terminal for job in active.jobs.values()):
            # Read right either way (every job is still seen), at the cost of the failed and
            # cancelled history in every active read.
            self._notice(
                "completed_means_succeeded",
                "completed=false also answers finished jobs (failed or cancelled): "
                "completed=true seems to select only succeeded jobs; the active read carries "
                "the failed and cancelled history",
            )
        return active

    def _ignores_started_after(self, page: _Page, since: float) -> bool:
        """Whether page 1 of a `started_after` read holds rows started before it."""
        if not any(
            job.started_at is not None and job.started_at < since - 1
            for job in page.rows.jobs.values()
        ):
            return False
        self.started_after_ignored = True
        self._notice(
            "started_after_ignored",
            "started_after is not applied (rows that started before it came back); it is no "
            "longer sent: jobs that finish between scrapes are found on the first page of "
            "finished jobs, by id and by full reads",
        )
        return True

    async def _newest_finished(self, budget: Budget, since: float) -> ReadResult:
        """Where `started_after` is not applied: the finished jobs' pages from the first
        (newest first) until one holds a job started before `since`; usually one request."""
        result = ReadResult(complete=False)
        size = min(self.page_size, SAFE_PAGE_SIZE)
        for page in range(1, MAX_EXTRA_PAGES + 1):
            found = await self._page(page, size, budget, {"completed": "true"})
            if found is None or found.size == 0:
                break
            result.merge(found.rows)
            if any(
                job.started_at is not None and job.started_at <= since
                for job in found.rows.jobs.values()
            ):
                break
            if found.count is not None and len(result.jobs) >= found.count:
                break
        return result

    async def _finished_since(self, budget: Budget, since: float) -> ReadResult:
        """Jobs that started after `since` and finished, as `started_after` asks: by the
        server while it applies the filter, else filtered here."""
        if not self.started_after_ignored:
            stamp = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            result = await self.read_list(
                budget,
                {"completed": "true", "started_after": stamp},
                complete=False,
                stop_after_first=lambda page: self._ignores_started_after(page, since),
            )
            if not self.started_after_ignored:
                return result
        else:
            result = await self._newest_finished(budget, since)
        # What a server applying the filter would have answered (started_at > since).
        result.jobs = {
            job_id: job
            for job_id, job in result.jobs.items()
            if job.started_at is not None and job.started_at > since
        }
        return result

    async def read_changes(self, budget: Budget, known: Known) -> ReadResult:
        """Active jobs, plus jobs that started since the last read and already finished;
        jobs that were active and are in neither are read by id to learn how they ended."""
        since = known.since - STARTED_AFTER_MARGIN
        active, finished = await run_all(
            [self.read_active(budget), self._finished_since(budget, since)]
        )
        active.merge(finished)
        missing = [job_id for job_id in known.active if job_id not in active.jobs]
        if len(missing) > BY_ID_LIMIT:
            active.needs_full = True
            return active
        await read_by_id(active, missing, self._parse, self.upstream, LIST_PATH, budget)
        return active
