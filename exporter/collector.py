"""Turns source snapshots into metric families, fresh for every scrape.

Nothing here keeps state between scrapes: a registry is built per request around a
`SnapshotCollector`, so a job or source that disappears simply is not yielded again.
"""

from __future__ import annotations

import platform as _platform
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.jobs import ITEM_STATES, PENDING_PHASES, TERMINAL_PHASES, Phase
from exporter.source import SourceSnapshot
from exporter.tracker import TrackedJob

BASE = ["platform", "source"]
TERMINAL = sorted(p.value for p in TERMINAL_PHASES)
RESULTS = ("succeeded", "failed")


@dataclass(frozen=True)
class ExporterStatus:
    """The exporter's own state, reported on /metrics (not on /probe)."""

    reload_successful: bool
    reload_success_timestamp: float


def emitted_jobs(snapshot: SourceSnapshot, now: float) -> list[TrackedJob]:
    """The jobs that get per-job series: every active job, then finished ones still within
    `finished_job_retention` of completion, newest first, at most `max_job_series`."""
    settings = snapshot.settings
    active: list[TrackedJob] = []
    finished: list[tuple[float, TrackedJob]] = []
    for tracked in snapshot.jobs:
        job = tracked.job
        if not job.phase.terminal:
            active.append(tracked)
            continue
        done = job.completed_at if job.completed_at is not None else tracked.last_change
        if now - done <= settings.finished_job_retention:
            finished.append((done, tracked))
    limit = settings.max_job_series
    active.sort(key=lambda t: t.job.started_at or t.last_change, reverse=True)
    if len(active) >= limit:
        return active[:limit]
    finished.sort(key=lambda pair: pair[0], reverse=True)
    return active + [t for _, t in finished[: limit - len(active)]]


class SnapshotCollector(Collector):
    """Yields the contract's metric families from already-fetched snapshots.

    A scrape of one healthy Kizen source `kp` with one running import (action `upload` here,
    for brevity) looks like::

        bulk_up{platform="kizen",source="kp"} 1.0
        bulk_jobs{platform="kizen",source="kp",action="upload",phase="running"} 1.0
        bulk_pending_items{platform="kizen",source="kp",action="upload"} 120.0
        bulk_job_progress_ratio{platform="kizen",source="kp",job_id="5f0c…",action="upload"} 0.4
        bulk_jobs_finished_total{platform="kizen",source="kp",action="upload",phase="failed"} 0.0
    """

    def __init__(
        self,
        snapshots: Sequence[SourceSnapshot],
        status: ExporterStatus | None = None,
        now: float | None = None,
    ) -> None:
        self.snapshots = snapshots
        self.status = status
        self.now = time.time() if now is None else now

    def describe(self) -> Iterable[Metric]:
        return []  # an unchecked collector: the families depend on the snapshots

    def collect(self) -> Iterator[Metric]:
        yield from self._source_health()
        yield from self._counters()
        yield from self._aggregates()
        yield from self._per_job()
        if self.status is not None:
            yield from self._exporter()

    def _source_health(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "bulk_up", "1 when this scrape's refresh of the source succeeded, else 0.", labels=BASE
        )
        duration = GaugeMetricFamily(
            "bulk_scrape_duration_seconds",
            "How long this scrape's refresh of the source took.",
            labels=BASE,
            unit="seconds",
        )
        last = GaugeMetricFamily(
            "bulk_last_success_timestamp_seconds",
            "Unix time of the source's last successful refresh.",
            labels=BASE,
            unit="seconds",
        )
        for s in self.snapshots:
            labels = [s.platform, s.name]
            up.add_metric(labels, 1.0 if s.up else 0.0)
            duration.add_metric(labels, s.duration)
            if s.last_success is not None:
                last.add_metric(labels, s.last_success)
        yield from (up, duration, last)

    def _counters(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "bulk_api_requests",
            "Upstream API requests made, by endpoint and HTTP status (or timeout / error).",
            labels=[*BASE, "endpoint", "code"],
        )
        finished = CounterMetricFamily(
            "bulk_jobs_finished",
            "Jobs seen reaching completed, failed or cancelled since the exporter's baseline.",
            labels=[*BASE, "action", "phase"],
        )
        items = CounterMetricFamily(
            "bulk_items_processed",
            "Items seen moving to succeeded or failed since the exporter's baseline.",
            labels=[*BASE, "action", "result"],
        )
        for s in self.snapshots:
            for (endpoint, code), value in sorted(s.requests.items()):
                requests.add_metric([s.platform, s.name, endpoint, code], value)
            # Zero series for every known action, so rate() and increase() see the first event.
            for action in sorted(s.actions):
                for phase in TERMINAL:
                    finished.add_metric(
                        [s.platform, s.name, action, phase], s.finished.get((action, phase), 0)
                    )
                for result in RESULTS:
                    items.add_metric(
                        [s.platform, s.name, action, result], s.items.get((action, result), 0)
                    )
        yield from (requests, finished, items)

    def _aggregates(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "bulk_jobs", "Jobs the exporter knows of, by phase.", labels=[*BASE, "action", "phase"]
        )
        pending = GaugeMetricFamily(
            "bulk_pending_items",
            "Items still pending across queued and running jobs.",
            labels=[*BASE, "action"],
        )
        for s in self.snapshots:
            if not s.up:
                continue  # stale numbers are worse than none
            by_phase: defaultdict[tuple[str, str], int] = defaultdict(int)
            backlog: defaultdict[str, int] = defaultdict(int)
            actions = set()
            for tracked in s.jobs:
                job = tracked.job
                actions.add(job.action)
                by_phase[(job.action, job.phase.value)] += 1
                if job.phase in PENDING_PHASES:
                    backlog[job.action] += job.pending
            for action in sorted(actions):
                for phase in Phase:
                    jobs.add_metric(
                        [s.platform, s.name, action, phase.value], by_phase[(action, phase.value)]
                    )
                pending.add_metric([s.platform, s.name, action], backlog[action])
        yield from (jobs, pending)

    def _per_job(self) -> Iterator[Metric]:
        job_labels = [*BASE, "job_id", "action"]
        info = GaugeMetricFamily(
            "bulk_job_info",
            "Always 1: one series per emitted job, carrying its object, status and phase.",
            labels=[*job_labels, "object", "status", "phase"],
        )
        items = GaugeMetricFamily(
            "bulk_job_items", "The job's items by state.", labels=[*job_labels, "state"]
        )
        progress = GaugeMetricFamily(
            "bulk_job_progress_ratio", "The job's progress, from 0 to 1.", labels=job_labels
        )
        start = GaugeMetricFamily(
            "bulk_job_start_timestamp_seconds",
            "Unix time the job started, when the platform says.",
            labels=job_labels,
            unit="seconds",
        )
        completion = GaugeMetricFamily(
            "bulk_job_completion_timestamp_seconds",
            "Unix time the job finished; present once it is terminal.",
            labels=job_labels,
            unit="seconds",
        )
        change = GaugeMetricFamily(
            "bulk_job_last_change_timestamp_seconds",
            "Unix time the exporter last saw the job's counts or status change.",
            labels=job_labels,
            unit="seconds",
        )
        for s in self.snapshots:
            if not s.up:
                continue
            for tracked in emitted_jobs(s, self.now):
                job = tracked.job
                labels = [s.platform, s.name, job.id, job.action]
                info.add_metric([*labels, job.object, job.status, job.phase.value], 1.0)
                for state, value in zip(
                    ITEM_STATES, (job.pending, job.succeeded, job.failed), strict=True
                ):
                    items.add_metric([*labels, state], value)
                progress.add_metric(labels, job.progress)
                if job.started_at is not None:
                    start.add_metric(labels, job.started_at)
                if job.completed_at is not None:
                    completion.add_metric(labels, job.completed_at)
                change.add_metric(labels, tracked.last_change)
        yield from (info, items, progress, start, completion, change)

    def _exporter(self) -> Iterator[Metric]:
        assert self.status is not None
        build = GaugeMetricFamily(
            "bulk_build_info",
            "Always 1: the exporter's version and the Python running it.",
            labels=["version", "python_version"],
        )
        build.add_metric([__version__, _platform.python_version()], 1.0)
        ok = GaugeMetricFamily(
            "bulk_config_last_reload_successful",
            "1 when the last configuration (re)load succeeded, else 0.",
        )
        ok.add_metric([], 1.0 if self.status.reload_successful else 0.0)
        when = GaugeMetricFamily(
            "bulk_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
            unit="seconds",
        )
        when.add_metric([], self.status.reload_success_timestamp)
        yield from (build, ok, when)
