"""A scrape's answer, encoded by prometheus_client's own encoders.

The families of one source are built once per snapshot and kept on it, so every scrape that
shares the snapshot (single flight, `min_interval`, several Prometheus servers) reuses them;
an answer for several sources merges them under one header per family. Content negotiation
(text 0.0.4, OpenMetrics 1.0, the escaping schemes newer servers ask for) is the library's.

Whatever goes wrong building or encoding one source's families fails that source alone:
it is answered as `bulk_up 0` with the reason, never as a failed scrape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from exporter.collector import ExporterStatus, exporter_families, source_families
from exporter.logs import log
from exporter.source import SourceSnapshot

logger = logging.getLogger("exporter.exposition")

Encoder = Callable[[CollectorRegistry], bytes]
_FAMILIES = "families"


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


def _build(snapshot: SourceSnapshot, now: float) -> list[Metric]:
    return list(source_families([snapshot], now))


def families_of(snapshot: SourceSnapshot, now: float | None = None) -> list[Metric]:
    """One source's families, built once per snapshot; a snapshot whose families cannot be
    built is reported as failed instead."""
    cached = snapshot.cache.get(_FAMILIES)
    if cached is None:
        moment = time.time() if now is None else now
        try:
            cached = _build(snapshot, moment)
        except Exception as exc:  # one source's bad data must not fail the answer
            cached = _failed(snapshot, f"cannot build its metrics: {type(exc).__name__}", moment)
        snapshot.cache[_FAMILIES] = cached
    families: list[Metric] = cached
    return families


def _failed(snapshot: SourceSnapshot, reason: str, now: float) -> list[Metric]:
    log(logger, logging.ERROR, "source left out of the answer", source=snapshot.name, reason=reason)
    failed = snapshot.failed(reason)
    try:
        return _build(failed, now)
    except Exception:
        # Even its counters are unusable: report only that it is down.
        bare = SourceSnapshot(
            name=snapshot.name,
            platform=snapshot.platform,
            up=False,
            duration=0.0,
            refreshed_at=snapshot.refreshed_at,
            last_success=None,
            error=reason,
            settings=snapshot.settings,
        )
        return _build(bare, now)


def _merged(per_source: Sequence[list[Metric]], frame: list[Metric]) -> list[Metric]:
    """One family per name, holding every source's samples in source order."""
    merged = []
    for i, empty in enumerate(frame):
        family = Metric(empty.name, empty.documentation, empty.type, empty.unit)
        family.samples = [sample for families in per_source for sample in families[i].samples]
        merged.append(family)
    return merged


def _encode_all(
    encoder: Encoder,
    snapshots: Sequence[SourceSnapshot],
    status: ExporterStatus | None,
    now: float,
) -> bytes:
    frame = list(source_families([], now))
    per_source = [families_of(s, now) for s in snapshots]
    exporter = list(exporter_families(status)) if status is not None else []
    return encoder(_registry([*_merged(per_source, frame), *exporter]))


def render_scrape(
    snapshots: Sequence[SourceSnapshot],
    status: ExporterStatus | None,
    accept: str,
    now: float | None = None,
) -> tuple[bytes, str]:
    """A scrape's answer for the given Accept header: (body, content type)."""
    encoder, content_type = choose_encoder(accept)
    moment = time.time() if now is None else now
    try:
        return _encode_all(encoder, snapshots, status, moment), content_type
    except Exception:
        pass
    # Some source's families would not encode: find it, answer it as failed, keep the rest.
    kept = []
    for snapshot in snapshots:
        try:
            encoder(_registry(families_of(snapshot, moment)))
        except Exception as exc:
            snapshot = snapshot.failed(f"cannot encode its metrics: {type(exc).__name__}")
            snapshot.cache[_FAMILIES] = _failed(snapshot, snapshot.error or "", moment)
        kept.append(snapshot)
    return _encode_all(encoder, kept, status, moment), content_type
