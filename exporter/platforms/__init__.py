"""Platform clients: each reads one account's jobs and maps them to `Job` records."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from exporter.config import FirstPromoterSource, KizenSource
from exporter.jobs import Job, RowError
from exporter.upstream import Upstream, UpstreamError

T = TypeVar("T")
K = TypeVar("K")

# An incremental read falls back to a full read when it would need more by-id reads than this.
BY_ID_LIMIT = 50


@dataclass
class ReadResult:
    """Jobs read in one refresh, deduplicated by id, plus what had to be skipped."""

    jobs: dict[str, Job] = field(default_factory=dict)
    skipped: int = 0
    first_skip: str | None = None
    # True when `jobs` is the whole list (a full read): whatever is not in it is gone.
    complete: bool = True
    # Ids the platform answered 404 for, or no longer lists: to be forgotten.
    gone: set[str] = field(default_factory=set)

    def merge(self, other: ReadResult) -> None:
        self.jobs.update(other.jobs)
        self.skipped += other.skipped
        self.first_skip = self.first_skip or other.first_skip
        self.gone |= other.gone

    def add_rows(self, rows: object, parse: Callable[[object], Job]) -> None:
        """Parse each row; keep the good ones (the latest sighting of an id wins), count the
        bad ones."""
        if not isinstance(rows, list):
            self.skip("the list of rows is not a JSON array")
            return
        for row in rows:
            try:
                job = parse(row)
            except RowError as exc:
                self.skip(str(exc))
                continue
            self.jobs[job.id] = job

    def skip(self, reason: str) -> None:
        self.skipped += 1
        if self.first_skip is None:
            self.first_skip = reason


@dataclass(frozen=True)
class Known:
    """What the exporter already knows of a source, for an incremental read."""

    active: Collection[str]  # ids of jobs last seen queued, running or unknown
    ids: Collection[str]  # every id it tracks
    since: float  # Unix time the previous successful read began


class PlatformClient(Protocol):
    """What a refresh needs from a platform."""

    upstream: Upstream

    async def read_all(self, deadline: float) -> ReadResult:
        """Every job the account lists (within the configured filters)."""
        ...

    async def read_one(self, job_id: str, deadline: float) -> Job | None:
        """One job by id; None when the platform no longer knows it."""
        ...

    async def read_changes(self, deadline: float, known: Known) -> ReadResult:
        """What changed since `known`: active jobs, jobs that finished, new jobs; a
        full read (`complete`) when that would be cheaper."""
        ...


def make_client(source: KizenSource | FirstPromoterSource, upstream: Upstream) -> PlatformClient:
    # Imported here: the platform modules import ReadResult and Known from this package.
    from exporter.platforms.firstpromoter import FirstPromoterClient
    from exporter.platforms.kizen import KizenClient

    if isinstance(source, KizenSource):
        return KizenClient(source, upstream)
    return FirstPromoterClient(source, upstream)


def auth_headers(source: KizenSource | FirstPromoterSource) -> dict[str, str]:
    if isinstance(source, KizenSource):
        return {
            "X-API-KEY": source.secret,
            "X-BUSINESS-ID": source.business_id,
            "X-USER-ID": source.user_id,
        }
    return {"Authorization": f"Bearer {source.secret}", "Account-ID": source.account_id}


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


async def pooled(
    items: Iterable[K], fetch: Callable[[K], Awaitable[T]], workers: int
) -> dict[K, T]:
    """fetch(item) for every item, at most `workers` at a time.

    A few workers pulling from one iterator, rather than a task per item: the connection
    semaphore then never has a long queue in front of a scrape's own requests.
    """
    results: dict[K, T] = {}
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            results[item] = await fetch(item)

    await run_all([worker() for _ in range(max(1, workers))])
    return results
