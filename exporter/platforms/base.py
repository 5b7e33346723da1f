"""What every platform provides, and the pieces their clients share.

A platform is one module under `exporter/platforms/` defining a `SourceConfig` subclass: its
configuration keys, default base URL and rate limit, status vocabulary, auth headers,
non-secret identifiers and client. `exporter.platforms.PLATFORMS` registers it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Protocol, TypeVar, get_args
from urllib.parse import quote, urlsplit

from pydantic import AfterValidator, SecretStr, field_validator

from exporter.jobs import Job, Phase, QueueClock, RowError
from exporter.logs import log
from exporter.settings import RateLimit, SettingOverrides, Settings
from exporter.trace import RowKeys, Trace
from exporter.upstream import Budget, NotFound, Upstream, UpstreamError

T = TypeVar("T")
K = TypeVar("K")

SOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def _source_name(value: str) -> str:
    # Our own message rather than a pattern's: the name is a label value users type.
    if SOURCE_NAME.fullmatch(value) is None:
        raise ValueError(
            "must start with a lowercase letter or digit and hold only a-z, 0-9, _ and -"
        )
    return value


def _is_http_url(value: str) -> bool:
    """An http(s) URL with a host, a valid port if any, and nothing a request line cannot
    carry (whitespace, control characters)."""
    if not value.isprintable() or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# An incremental read falls back to a full read when it would need more by-id reads than this.
BY_ID_LIMIT = 50


def add_counts(into: dict[K, int], counts: Mapping[K, int]) -> None:
    """Add `counts` to `into`, key by key."""
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


@dataclass
class ReadResult:
    """Jobs read in one refresh, deduplicated by id, plus the rows that had to be skipped.

    `complete` says whether `jobs` is the whole list: when it is, whatever is not in it is
    gone. Every client states it; there is no default. Only positive evidence makes a job
    gone: a complete list that lacks it, or a 404 when it is read by id (`gone`).

    `needs_full`: an incremental read that found a full read necessary (more jobs left the
    active list than are worth reading by id); what it read is taken in, and the refresher
    decides when the full read runs (never under a scrape's deadline it cannot fit).
    """

    complete: bool
    jobs: dict[str, Job] = field(default_factory=dict)
    # (endpoint, reason) -> rows skipped; reason is a RowError kind. A plain dict, not a
    # Counter: a refresh makes several results per source, nearly all with nothing skipped,
    # and an empty Counter costs a Python call to make where a dict costs none.
    skipped: dict[tuple[str, str], int] = field(default_factory=dict)
    first_skip: str | None = None
    # Ids the platform answered 404 for, or left out of a filtered read by id: to be forgotten.
    gone: set[str] = field(default_factory=set)
    needs_full: bool = False

    def merge(self, other: ReadResult) -> None:
        self.jobs.update(other.jobs)
        add_counts(self.skipped, other.skipped)
        self.first_skip = self.first_skip or other.first_skip
        self.gone |= other.gone
        self.needs_full = self.needs_full or other.needs_full

    def add_rows(
        self,
        endpoint: str,
        rows: list[object],
        parse: Callable[[object], Job],
        trace: Trace | None = None,
    ) -> None:
        """Parse each row; keep the good ones (the latest sighting of an id wins), count the
        bad ones; note them all in `trace` when given."""
        jobs = self.jobs
        good: list[Job] = []
        for row in rows:
            try:
                job = parse(row)
            except RowError as exc:
                self.skip(endpoint, exc, trace)
                continue
            jobs[job.id] = job
            good.append(job)
        if trace is not None:
            trace.read(endpoint, rows, good)

    def skip(self, endpoint: str, error: RowError, trace: Trace | None = None) -> None:
        key = (endpoint, error.kind)
        self.skipped[key] = self.skipped.get(key, 0) + 1
        if self.first_skip is None:
            self.first_skip = str(error)
        if trace is not None:
            trace.skip(endpoint, error)


@dataclass(frozen=True)
class Known:
    """What the exporter already knows of a source, for an incremental read."""

    active: Collection[str]  # ids of jobs last seen queued, running or unknown
    ids: Collection[str]  # every id it tracks
    since: float  # Unix time the previous successful read began


class PlatformClient(Protocol):
    """What a refresh needs from a platform.

    `notices`: the ways this account was found to answer otherwise than the exporter's first
    guesses (docs/api.md), by a stable key (such as "started_after_ignored"), each with one
    sentence for a person; the debug trace prints them. Filled by `notice`.
    """

    notices: dict[str, str]

    def learnt(self) -> dict[str, str]:
        """What the client learnt of the account, to keep across restarts and reloads."""
        ...

    def relearn(self, saved: Mapping[str, object]) -> None:
        """Take back what `learnt` gave; keys this version does not know are ignored."""
        ...

    async def read_all(self, budget: Budget) -> ReadResult:
        """Every job the account lists (within the configured filters); `complete`."""
        ...

    async def read_active(self, budget: Budget) -> ReadResult:
        """Only the queued and running jobs; not `complete`."""
        ...

    async def read_changes(self, budget: Budget, known: Known) -> ReadResult:
        """What changed since `known`: active jobs, jobs that finished, new jobs; a
        full read (`complete`) when that would be cheaper."""
        ...


class SourceConfig(SettingOverrides):
    """One configured source: the keys every platform shares. A platform subclasses it with
    `platform: Literal["<name>"]`, its own keys and the class variables below."""

    DEFAULT_BASE_URL: ClassVar[str]
    DEFAULT_RATE_LIMIT: ClassVar[str]  # as `rate_limit:` is written, such as "100/m"
    PHASES: ClassVar[Mapping[str, Phase]]
    QUEUE_CLOCK: ClassVar[QueueClock]
    # The row keys the parser reads and those the API reference documents besides: a key in
    # neither is drift, which the debug trace shows.
    ROW_KEYS: ClassVar[RowKeys] = RowKeys()

    name: Annotated[str, AfterValidator(_source_name)]
    base_url: str | None = None
    api_key: SecretStr | None = None
    api_key_file: str | None = None
    # `rate_limit` is one of the settings (it may be set under `defaults` too).
    incremental: bool = True

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _is_http_url(value):
            raise ValueError("must be an http:// or https:// URL with a host, such as https://host")
        return value.rstrip("/")

    @property
    def platform_name(self) -> str:
        return platform_name_of(type(self))

    @property
    def url(self) -> str:
        return self.base_url or self.DEFAULT_BASE_URL

    @property
    def rate(self) -> RateLimit:
        """The source's own rate limit, else its platform's default (`defaults` aside)."""
        return self.rate_in(Settings().overridden_by(self))

    def rate_in(self, settings: Settings) -> RateLimit:
        """The rate limit in force under these resolved settings (`Config.settings`): the
        source's own, else the `defaults` one, else the platform's default."""
        return settings.rate_limit or RateLimit.parse(self.DEFAULT_RATE_LIMIT)

    @property
    def secret(self) -> str:
        # Loading guarantees the key is set (inline or from api_key_file).
        assert self.api_key is not None
        return self.api_key.get_secret_value()

    def auth_headers(self) -> dict[str, str]:
        raise NotImplementedError

    def identifiers(self) -> dict[str, str]:
        """The non-secret keys that say which account this is (shown, and kept with state)."""
        raise NotImplementedError

    def options(self) -> dict[str, str]:
        """Platform-specific keys for the config summary, as text."""
        return {}

    def client(self, upstream: Upstream, settings: Settings) -> PlatformClient:
        raise NotImplementedError


def notice(
    notices: dict[str, str], logger: logging.Logger, source: str, key: str, sentence: str
) -> bool:
    """Record that the platform was seen doing the other thing: once per client (so once per
    source), with one warning line. True the first time."""
    if key in notices:
        return False
    notices[key] = sentence
    log(logger, logging.WARNING, sentence, source=source, behaviour=key)
    return True


def relearn_notices(
    notices: dict[str, str], saved: Mapping[str, object], known: Collection[str]
) -> None:
    """Put back the saved notices a client knows (`known`; a key of another version is
    skipped: what it meant is not known here), without logging them again: each was logged
    when it was seen."""
    for key, sentence in saved.items():
        if key in known and isinstance(sentence, str):
            notices[key] = sentence


def platform_name_of(model: type[SourceConfig]) -> str:
    """A platform's `platform:` value, read from its model's Literal annotation."""
    (name,) = get_args(model.model_fields["platform"].annotation)
    return str(name)


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def run_all(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest and raise that failure itself
    (not an ExceptionGroup), so callers can catch UpstreamError as usual."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]
    except* UpstreamError as errors:
        raise _first_leaf(errors) from None
    return [t.result() for t in tasks]


async def run_both(first: Coroutine[Any, Any, T], second: Coroutine[Any, Any, K]) -> tuple[T, K]:
    """`run_all` for two reads of different types: when one fails the other is cancelled at
    once (asyncio.gather would leave it sending requests until the deadline)."""
    try:
        async with asyncio.TaskGroup() as group:
            one, other = group.create_task(first), group.create_task(second)
    except* UpstreamError as errors:
        raise _first_leaf(errors) from None
    return one.result(), other.result()


async def pooled(
    items: Iterable[K], fetch: Callable[[K], Awaitable[T]], workers: int
) -> dict[K, T]:
    """fetch(item) for every item, at most `workers` at a time.

    A few workers pulling from one iterator, rather than a task per item: the connection
    semaphore then never has a long queue in front of a scrape's own requests.
    """
    results: dict[K, T] = {}
    pending = list(items)
    if not pending:
        # The usual case in a steady refresh (no further page, nothing to read by id):
        # no tasks at all, which across hundreds of sources is a measurable share of a scrape.
        return results
    queue = iter(pending)

    async def worker() -> None:
        for item in queue:
            results[item] = await fetch(item)

    await run_all([worker() for _ in range(max(1, min(workers, len(pending))))])
    return results


async def read_by_id(
    result: ReadResult,
    ids: Iterable[str],
    parse: Callable[[object], Job],
    upstream: Upstream,
    list_path: str,
    budget: Budget,
) -> None:
    """Read each id at `{list_path}/{id}` into `result`: a 404 means the job is gone; an
    unusable answer is skipped like a bad list row, never fatal."""

    trace = budget.trace

    async def one(job_id: str) -> Job | RowError | None:
        try:
            body = await upstream.get_json(
                "detail", f"{list_path}/{quote(job_id, safe='')}", {}, budget
            )
        except NotFound:
            return None
        try:
            job = parse(body)
        except RowError as exc:
            return exc
        if job.id != job_id:
            # Never taken for the job asked for, nor for the one it names: one job must not
            # be counted twice, and the one asked for is not shown gone by it.
            return RowError("the answer is for another id than the one asked for", field="id")
        if trace is not None:
            trace.read("detail", [body], [job])
        return job

    found = await pooled(ids, one, upstream.workers(budget))
    for job_id, job in found.items():
        if job is None:
            result.gone.add(job_id)
        elif isinstance(job, RowError):
            result.skip("detail", job, trace)
        else:
            result.jobs[job_id] = job
