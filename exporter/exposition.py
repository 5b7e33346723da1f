"""A scrape's answer, encoded by prometheus_client's own encoders.

An answer for several sources merges their families by name, one header per family. Each
source's families are built in two parts: the few that change with every refresh (health and
request counts, rate-limit waits and the running jobs' ETAs, which move with time), built
every time, for all sources at once, and the rest (counters, histograms, aggregates, per-job
series), which a `Renderer` keeps per source and builds again only when that source's jobs or
counters changed (a snapshot then reuses the previous one's objects, so identity tells) or a
finished job left the retention window. Which jobs get per-job series is kept the same way.
On a replica of many mostly idle accounts that is most of the building. Content negotiation
(text 0.0.4, OpenMetrics 1.0, the escaping schemes newer servers ask for) and every byte of
the encoding stay the library's.

Whatever goes wrong building or encoding one source's families fails that source alone:
it is answered as `bulk_up 0` with the reason, never as a failed scrape.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from exporter.collector import (
    ExporterStatus,
    content_families,
    emitted_jobs,
    exporter_families,
    process_families,
    source_families,
    volatile_families,
)
from exporter.logs import log
from exporter.source import SourceSnapshot
from exporter.tracker import TrackedJob

V = TypeVar("V")

logger = logging.getLogger("exporter.exposition")

Encoder = Callable[[CollectorRegistry], bytes]


class _Families(Collector):
    """Already-built families, as the library's encoders take them."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)

    def describe(self) -> Iterable[Metric]:
        return []


def _registry(families: list[Metric]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return registry


def _content_key(snapshot: SourceSnapshot, emitted: list[TrackedJob]) -> tuple[object, ...]:
    """What a source's content families are made of, compared by identity."""
    s = snapshot
    return (
        s.up,
        s.jobs,
        s.actions,
        s.finished,
        s.items,
        s.durations,
        s.queue_waits,
        s.last_finished,
        s.rows_skipped,
        *emitted,
    )


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class _Content:
    key: tuple[object, ...]
    families: list[Metric]


@dataclass(frozen=True)
class _Emitted:
    """A source's emitted jobs, as of `since`; the same until `until`, when the first of the
    finished ones among them leaves the retention window (given the same jobs)."""

    jobs: tuple[TrackedJob, ...]
    settings: object
    since: float
    until: float
    emitted: list[TrackedJob]


class Renderer:
    """Builds and encodes answers, keeping each source's content families between scrapes.

    Answers are encoded in worker threads, possibly two at once (say text and OpenMetrics):
    the cache is a dict replaced or updated whole under the GIL, so the worst a race costs
    is one build made twice. Sources that left the configuration drop out of it at the next
    answer for every source.
    """

    def __init__(self) -> None:
        self._content: dict[str, _Content] = {}
        self._emitted: dict[str, _Emitted] = {}

    def families(self, snapshot: SourceSnapshot, now: float | None = None) -> list[Metric]:
        """One source's families; a snapshot whose families cannot be built is reported as
        failed instead."""
        moment = time.time() if now is None else now
        try:
            emitted = self._emitted_of(snapshot, moment)
            volatile = list(volatile_families([snapshot], [emitted]))
            return volatile + self._content_of(snapshot, emitted)
        except Exception as exc:  # one source's bad data must not fail the answer
            return _failed(snapshot, f"cannot build its metrics: {type(exc).__name__}", moment)

    def _all_families(self, snapshots: Sequence[SourceSnapshot], now: float) -> list[list[Metric]]:
        """Every source's families, the volatile ones built for all sources at once (a few
        families in all rather than a few per source). Should anything fail, each source is
        built on its own, so that the one it comes from fails alone."""
        try:
            emitted = [self._emitted_of(s, now) for s in snapshots]
            volatile = list(volatile_families(snapshots, emitted))
            content = [self._content_of(s, e) for s, e in zip(snapshots, emitted, strict=True)]
        except Exception:
            return [self.families(s, now) for s in snapshots]
        return [volatile, *content]

    def _emitted_of(self, snapshot: SourceSnapshot, now: float) -> list[TrackedJob]:
        """`emitted_jobs`, kept while the source's jobs are the same objects: with the same
        jobs the choice changes only when a finished one leaves the retention window."""
        if not snapshot.up:
            return []
        kept = self._emitted.get(snapshot.name)
        if (
            kept is not None
            and kept.jobs is snapshot.jobs
            and kept.settings is snapshot.settings
            and kept.since <= now <= kept.until
        ):
            return kept.emitted
        emitted = emitted_jobs(snapshot, now)
        retention = snapshot.settings.finished_job_retention
        until = min(
            (
                (t.job.completed_at if t.job.completed_at is not None else t.last_change)
                + retention
                for t in emitted
                if t.job.phase.terminal
            ),
            default=math.inf,
        )
        self._emitted[snapshot.name] = _Emitted(
            snapshot.jobs, snapshot.settings, now, until, emitted
        )
        return emitted

    def _content_of(self, snapshot: SourceSnapshot, emitted: list[TrackedJob]) -> list[Metric]:
        key = _content_key(snapshot, emitted)
        cached = self._content.get(snapshot.name)
        if cached is not None and _same(cached.key, key):
            return cached.families
        families = list(content_families([snapshot], [emitted]))
        self._content[snapshot.name] = _Content(key, families)
        return families

    def _forget_others(self, snapshots: Sequence[SourceSnapshot]) -> None:
        names = {s.name for s in snapshots}
        self._content = _only(self._content, names)
        self._emitted = _only(self._emitted, names)

    def _encode_all(
        self,
        encoder: Encoder,
        snapshots: Sequence[SourceSnapshot],
        status: ExporterStatus | None,
        now: float,
        built: dict[str, list[Metric]] | None = None,
    ) -> bytes:
        if built:
            per_source = [
                built[s.name] if s.name in built else self.families(s, now) for s in snapshots
            ]
        else:
            per_source = self._all_families(snapshots, now)
        # /metrics only: the exporter's own series and its process's, the latter read now, so
        # scrapes that share this encoding share their values too.
        exporter = [*exporter_families(status), *process_families()] if status is not None else []
        return encoder(_registry([*_merged(per_source, now), *exporter]))

    def render(
        self,
        snapshots: Sequence[SourceSnapshot],
        status: ExporterStatus | None,
        accept: str,
        now: float | None = None,
    ) -> tuple[bytes, str]:
        """A scrape's answer for the given Accept header: (body, content type). `status` is
        given for /metrics (every source of this replica) and None for /probe."""
        encoder, content_type = choose_encoder(accept)
        moment = time.time() if now is None else now
        if status is not None:
            self._forget_others(snapshots)
        try:
            return self._encode_all(encoder, snapshots, status, moment), content_type
        except Exception:
            pass
        # Some source's families would not encode: find it, answer it as failed, keep the rest.
        built: dict[str, list[Metric]] = {}
        for snapshot in snapshots:
            families = self.families(snapshot, moment)
            try:
                encoder(_registry(families))
            except Exception as exc:
                failed = snapshot.failed(f"cannot encode its metrics: {type(exc).__name__}")
                self._content.pop(snapshot.name, None)
                families = _failed(failed, failed.error or "", moment)
            built[snapshot.name] = families
        return self._encode_all(encoder, snapshots, status, moment, built), content_type


def _build(snapshot: SourceSnapshot, now: float) -> list[Metric]:
    return list(source_families([snapshot], now))


def _failed(snapshot: SourceSnapshot, reason: str, now: float) -> list[Metric]:
    log(logger, logging.ERROR, "source left out of the answer", source=snapshot.name, reason=reason)
    failed = snapshot.failed(reason)
    try:
        return _build(failed, now)
    except Exception:
        # Even its counters are unusable: report only that it is down.
        bare = dataclasses.replace(
            failed,
            actions=frozenset(),
            finished={},
            items={},
            requests={},
            durations={},
            queue_waits={},
            last_finished={},
            rows_skipped={},
            # The health numbers too, in case one of them was the trouble.
            duration=math.nan,
            last_success=None,
            rate_limit=None,
            # Kept when usable: a counter served as 0 for one scrape would read as a reset,
            # and rate() would count its whole total again.
            rate_limit_wait=_finite(failed.rate_limit_wait),
            rates={},
        )
        return _build(bare, now)


def _only(cache: dict[str, V], names: set[str]) -> dict[str, V]:
    """The cache without the entries of names not given (itself when there are none).

    Copied in one step before it is walked: another answer's thread may add to it meanwhile,
    and walking a dict that grows raises. What that thread added in between is lost, and
    built again at most once."""
    if names == cache.keys():
        return cache
    return {n: v for n, v in cache.copy().items() if n in names}


def _finite(value: object) -> float:
    """The value as a finite float, else 0."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _merged(per_source: Sequence[list[Metric]], now: float) -> list[Metric]:
    """One family per name, holding every source's samples in source order. Every family is
    there, with its help text, even when no source has samples for it."""
    merged: dict[str, Metric] = {f.name: f for f in source_families([], now)}
    for families in per_source:
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = into
            into.samples.extend(family.samples)
    return list(merged.values())


def render_scrape(
    snapshots: Sequence[SourceSnapshot],
    status: ExporterStatus | None,
    accept: str,
    now: float | None = None,
) -> tuple[bytes, str]:
    """One answer built from nothing (no families kept): for tests and benchmarks."""
    return Renderer().render(snapshots, status, accept, now)
