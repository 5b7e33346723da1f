"""Platform clients: each reads one account's jobs and maps them to `Job` records."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from exporter.config import FirstPromoterSource, KizenSource
from exporter.jobs import Job, RowError
from exporter.upstream import Upstream, UpstreamError

T = TypeVar("T")


@dataclass
class ReadResult:
    """Jobs read in one refresh, deduplicated by id, plus what had to be skipped."""

    jobs: dict[str, Job] = field(default_factory=dict)
    skipped: int = 0
    first_skip: str | None = None

    def add_rows(self, rows: object, parse: Callable[[object], Job]) -> list[Job]:
        """Parse each row; keep the good ones, count the bad ones. Returns the new jobs."""
        added: list[Job] = []
        if not isinstance(rows, list):
            self.skip("the list of rows is not a JSON array")
            return added
        for row in rows:
            try:
                job = parse(row)
            except RowError as exc:
                self.skip(str(exc))
                continue
            self.jobs[job.id] = job
            added.append(job)
        return added

    def skip(self, reason: str) -> None:
        self.skipped += 1
        if self.first_skip is None:
            self.first_skip = reason


class PlatformClient(Protocol):
    """What a refresh needs from a platform."""

    upstream: Upstream

    async def read_all(self, deadline: float) -> ReadResult:
        """Every job the account lists (within the configured filters)."""
        ...

    async def read_one(self, job_id: str, deadline: float) -> Job | None:
        """One job by id; None when the platform no longer knows it."""
        ...


def make_client(source: KizenSource | FirstPromoterSource, upstream: Upstream) -> PlatformClient:
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
