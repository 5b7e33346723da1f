"""Turns source snapshots into metric families.

Nothing here keeps state between scrapes: families are built from already-fetched snapshots,
so a job or source that disappears simply is not yielded again. Every value is converted to
a float while building, so a value that cannot be a sample fails here (for its source alone)
rather than in the encoder.

A source's samples are made one family at a time, not job by job across families, which is
also the order the encoder walks an answer in. Label dicts are made in whatever order reads
best: the encoders sort each sample's labels anyway, and building them already sorted saved
about 1 % of the encoding at 200 sources (docs/benchmarks.md, "Speed mechanisms"), under the
10 % a speed mechanism must show to stay (CONTRIBUTING.md).
"""

from __future__ import annotations

import platform as _platform
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample

from exporter import __version__, eta
from exporter.jobs import ITEM_STATES, PENDING_PHASES, TERMINAL_PHASES, Phase
from exporter.source import SourceSnapshot
from exporter.tracker import BUCKET_LABELS, Histogram, TrackedJob

BASE = ["platform", "source"]
TERMINAL = sorted(p.value for p in TERMINAL_PHASES)
RESULTS = ("succeeded", "failed")


@dataclass(frozen=True)
class ExporterStatus:
    """The exporter's own state, reported on /metrics (not on /probe)."""

    reload_successful: bool
    reload_success_timestamp: float
    state_write_failures: int = 0


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


def source_families(snapshots: Sequence[SourceSnapshot], now: float) -> Iterator[Metric]:
    """The families sources contribute to, always the same ones in the same order.

    One healthy Kizen source `kp` with one running import (action `upload` here, for
    brevity) gives, among others::

        bulk_up{platform="kizen",source="kp"} 1.0
        bulk_jobs{action="upload",phase="running",platform="kizen",source="kp"} 1.0
        bulk_pending_items{action="upload",platform="kizen",source="kp"} 120.0
        bulk_job_progress_ratio{action="upload",job_id="5f0c…",platform="kizen",source="kp"} 0.4
        bulk_jobs_finished_total{action="upload",phase="failed",platform="kizen",source="kp"} 0.0
        bulk_job_duration_seconds_bucket{action="upload",le="60.0",phase="completed",\
platform="kizen",source="kp"} 3.0
    """
    emitted = [emitted_jobs(s, now) for s in snapshots]
    yield from volatile_families(snapshots, emitted)
    yield from content_families(snapshots, emitted)


def volatile_families(
    snapshots: Sequence[SourceSnapshot], emitted: Sequence[Sequence[TrackedJob]]
) -> Iterator[Metric]:
    """The families whose values change with every refresh (health, request counts and rate-
    limit waits, and the running jobs' ETAs, which move with time even while a job stands
    still): `bulk_up` ... `bulk_rate_limit_requests_per_second`, `bulk_api_requests_total`,
    `bulk_rate_limit_wait_seconds_total`, `bulk_job_estimated_completion_timestamp_seconds`."""
    yield from _source_health(snapshots)
    yield _requests(snapshots)
    yield _rate_limit_wait(snapshots)
    yield _estimates(snapshots, emitted)


def content_families(
    snapshots: Sequence[SourceSnapshot], emitted: Sequence[Sequence[TrackedJob]]
) -> Iterator[Metric]:
    """The families that change only when the sources' jobs or counters do (or a finished
    job leaves the retention window): counters, histograms, aggregates and per-job series.
    `emitted` holds, for each snapshot, the jobs that get per-job series (`emitted_jobs`)."""
    yield from _counters(snapshots)
    yield from _histograms(snapshots)
    yield from _aggregates(snapshots)
    yield from _per_job(snapshots, emitted)


def exporter_families(status: ExporterStatus) -> Iterator[Metric]:
    """The exporter's own series, served once per replica on /metrics::

    bulk_build_info{python_version="3.11.7",version="0.1.0"} 1.0
    bulk_config_last_reload_successful 1.0
    bulk_state_write_failures_total 0.0
    """
    build = GaugeMetricFamily(
        "bulk_build_info",
        "Always 1: the exporter's version and the Python running it.",
        labels=["python_version", "version"],
    )
    build.add_metric([_platform.python_version(), __version__], 1.0)
    ok = GaugeMetricFamily(
        "bulk_config_last_reload_successful",
        "1 when the last configuration (re)load succeeded, else 0.",
    )
    ok.add_metric([], 1.0 if status.reload_successful else 0.0)
    when = GaugeMetricFamily(
        "bulk_config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful configuration load.",
        unit="seconds",
    )
    when.add_metric([], float(status.reload_success_timestamp))
    writes = CounterMetricFamily(
        "bulk_state_write_failures",
        "State writes to --storage.path that failed (the exporter keeps serving).",
    )
    writes.add_metric([], float(status.state_write_failures))
    yield from (build, ok, when, writes)


def process_families() -> Iterator[Metric]:
    """The exporter process's own families from prometheus_client's collectors, read now
    (`process_*` where /proc exists, `python_info`, `python_gc_*`), for /metrics only::

        process_resident_memory_bytes 5.6e+07
        python_info{implementation="CPython",major="3",minor="11",patchlevel="7",...} 1.0
    """
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        yield from collector.collect()


def _source_health(snapshots: Sequence[SourceSnapshot]) -> Iterator[Metric]:
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
    allowance = GaugeMetricFamily(
        "bulk_rate_limit_requests_per_second",
        "The source's configured upstream allowance (rate_limit), in requests a second.",
        labels=BASE,
    )
    loaded = GaugeMetricFamily(
        "bulk_history_loaded",
        "1 once the source's first full read has completed; 0 while it runs in the background "
        "(the aggregates then hold the active jobs only).",
        labels=BASE,
    )
    for s in snapshots:
        labels = [s.platform, s.name]
        up.add_metric(labels, 1.0 if s.up else 0.0)
        duration.add_metric(labels, float(s.duration))
        if s.last_success is not None:
            last.add_metric(labels, float(s.last_success))
        loaded.add_metric(labels, 1.0 if s.history_loaded else 0.0)
        if s.rate_limit is not None:
            allowance.add_metric(labels, float(s.rate_limit))
    yield from (up, duration, last, loaded, allowance)


def _requests(snapshots: Sequence[SourceSnapshot]) -> Metric:
    requests = CounterMetricFamily(
        "bulk_api_requests",
        "Upstream API requests made, by endpoint and HTTP status (or timeout / error).",
        labels=["code", "endpoint", *BASE],
    )
    for s in snapshots:
        for (endpoint, code), value in sorted(s.requests.items()):
            requests.add_metric([code, endpoint, s.platform, s.name], float(value))
    return requests


def _rate_limit_wait(snapshots: Sequence[SourceSnapshot]) -> Metric:
    waited = CounterMetricFamily(
        "bulk_rate_limit_wait_seconds",
        "Time the source's upstream requests waited for its rate-limit bucket.",
        labels=BASE,
        unit="seconds",
    )
    for s in snapshots:
        waited.add_metric([s.platform, s.name], float(s.rate_limit_wait))
    return waited


def _estimates(
    snapshots: Sequence[SourceSnapshot], emitted: Sequence[Sequence[TrackedJob]]
) -> Metric:
    estimate = GaugeMetricFamily(
        "bulk_job_estimated_completion_timestamp_seconds",
        "Running jobs: Unix time the job should finish at the pace the exporter observed over "
        "the last 10 minutes; absent until it has seen the job move, and for stalled jobs.",
        labels=["action", "job_id", *BASE],
        unit="seconds",
    )
    add = estimate.samples.append
    for s, jobs in zip(snapshots, emitted, strict=True):
        if not s.up or not s.rates:
            continue
        # As of the refresh that saw the jobs.
        seen, rates = s.refreshed_at, s.rates
        for tracked in jobs:
            job = tracked.job
            history = rates.get(job.id)
            if history is None:
                continue
            finish = eta.completion(job, tracked.last_change, history, seen)
            if finish is not None:
                labels = {
                    "action": job.action,
                    "job_id": job.id,
                    "platform": s.platform,
                    "source": s.name,
                }
                add(Sample(estimate.name, labels, float(finish)))
    return estimate


def _counters(snapshots: Sequence[SourceSnapshot]) -> Iterator[Metric]:
    finished = CounterMetricFamily(
        "bulk_jobs_finished",
        "Jobs seen reaching completed, failed or cancelled since the exporter's baseline.",
        labels=["action", "phase", *BASE],
    )
    items = CounterMetricFamily(
        "bulk_items_processed",
        "Items seen moving to succeeded or failed since the exporter's baseline.",
        labels=["action", "platform", "result", "source"],
    )
    skipped = CounterMetricFamily(
        "bulk_rows_skipped",
        "Upstream rows the exporter could not use, by endpoint and reason.",
        labels=["endpoint", "platform", "reason", "source"],
    )
    for s in snapshots:
        # Zero series for every known action, so rate() and increase() see the first event.
        # One family at a time (see the module's docstring).
        actions = sorted(s.actions)
        for action in actions:
            for phase in TERMINAL:
                value = s.finished.get((action, phase), 0)
                finished.add_metric([action, phase, s.platform, s.name], float(value))
        for action in actions:
            for result in RESULTS:
                value = s.items.get((action, result), 0)
                items.add_metric([action, s.platform, result, s.name], float(value))
        for (endpoint, reason), value in sorted(s.rows_skipped.items()):
            skipped.add_metric([endpoint, s.platform, reason, s.name], float(value))
    yield from (finished, items, skipped)


def _histograms(snapshots: Sequence[SourceSnapshot]) -> Iterator[Metric]:
    durations = HistogramMetricFamily(
        "bulk_job_duration_seconds",
        "Completion time minus start time of jobs seen reaching completed, failed or "
        "cancelled since the baseline.",
        labels=["action", "phase", *BASE],
        unit="seconds",
    )
    waits = HistogramMetricFamily(
        "bulk_job_queue_wait_seconds",
        "Time from a job's creation (or first sighting in the queue) to its start, for jobs "
        "seen leaving the queue since the baseline.",
        labels=["action", *BASE],
        unit="seconds",
    )
    last = GaugeMetricFamily(
        "bulk_last_finished_timestamp_seconds",
        "Completion time of the most recent known job of the action in the phase.",
        labels=["action", "phase", *BASE],
        unit="seconds",
    )
    empty = Histogram()
    for s in snapshots:
        for (action, phase), when in sorted(s.last_finished.items()):
            last.add_metric([action, phase, s.platform, s.name], float(when))
        if not s.up:
            continue  # like every bulk_job_* series of a failed source
        # Zero histograms for every known action, like the counters: rate() and
        # histogram_quantile() then see an action's first observation too.
        actions = sorted(s.actions)
        for action in actions:
            for phase in TERMINAL:
                histogram = s.durations.get((action, phase), empty)
                labels = {"action": action, "phase": phase, "platform": s.platform}
                _add_histogram(durations, labels, s.name, histogram)
        for action in actions:
            labels = {"action": action, "platform": s.platform}
            _add_histogram(waits, labels, s.name, s.queue_waits.get(action, empty))
    yield from (durations, waits, last)


def _add_histogram(
    family: Metric, labels: dict[str, str], source: str, histogram: Histogram
) -> None:
    """The samples `HistogramMetricFamily.add_metric` would add (cumulative buckets, count,
    sum), made directly: with ~70 zero-valued series per action and hundreds of sources,
    its label lists rebuilt for every bucket were most of a cold answer's build time. The
    count and sum share one label dict; nothing downstream changes them."""
    bucket, add = family.name + "_bucket", family.samples.append
    series = {**labels, "source": source}
    running = 0
    for le, n in zip(BUCKET_LABELS, histogram.counts, strict=True):
        running += n
        add(Sample(bucket, {**series, "le": le}, float(running)))
    add(Sample(family.name + "_count", series, float(running)))
    add(Sample(family.name + "_sum", series, float(histogram.total)))


def _aggregates(snapshots: Sequence[SourceSnapshot]) -> Iterator[Metric]:
    jobs = GaugeMetricFamily(
        "bulk_jobs", "Jobs the exporter knows of, by phase.", labels=["action", "phase", *BASE]
    )
    pending = GaugeMetricFamily(
        "bulk_pending_items",
        "Items still pending across queued and running jobs.",
        labels=["action", *BASE],
    )
    for s in snapshots:
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
                count = by_phase[(action, phase.value)]
                jobs.add_metric([action, phase.value, s.platform, s.name], float(count))
        for action in sorted(actions):
            pending.add_metric([action, s.platform, s.name], float(backlog[action]))
    yield from (jobs, pending)


def _per_job(
    snapshots: Sequence[SourceSnapshot], emitted: Sequence[Sequence[TrackedJob]]
) -> Iterator[Metric]:
    job_labels = ["action", "job_id", *BASE]  # for the families; samples are made below
    info = GaugeMetricFamily(
        "bulk_job_info",
        "Always 1: one series per emitted job, carrying its object, status and phase.",
        labels=["action", "job_id", "object", "phase", "platform", "source", "status"],
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
    # The samples are made directly rather than through add_metric: with thousands of jobs
    # the zip into a fresh label dict per sample was a fifth of the answer's build time.
    # A job's label dict is shared by its samples (nothing downstream changes them); each
    # family's samples are made in a run of their own (see the module's docstring).
    for s, jobs in zip(snapshots, emitted, strict=True):
        if not s.up:
            continue
        platform, source = s.platform, s.name
        labels = [
            {"action": t.job.action, "job_id": t.job.id, "platform": platform, "source": source}
            for t in jobs
        ]
        info.samples.extend(
            Sample(
                info.name,
                {
                    "action": job.action,
                    "job_id": job.id,
                    "object": job.object,
                    "phase": job.phase.value,
                    "platform": platform,
                    "source": source,
                    "status": job.status,
                },
                1.0,
            )
            for job in (t.job for t in jobs)
        )
        items.samples.extend(
            Sample(items.name, {**shared, "state": state}, float(value))
            for shared, job in zip(labels, (t.job for t in jobs), strict=True)
            for state, value in zip(
                ITEM_STATES, (job.pending, job.succeeded, job.failed), strict=True
            )
        )
        progress.samples.extend(
            Sample(progress.name, shared, float(t.job.progress))
            for shared, t in zip(labels, jobs, strict=True)
        )
        start.samples.extend(
            Sample(start.name, shared, float(t.job.started_at))
            for shared, t in zip(labels, jobs, strict=True)
            if t.job.started_at is not None
        )
        completion.samples.extend(
            Sample(completion.name, shared, float(t.job.completed_at))
            for shared, t in zip(labels, jobs, strict=True)
            if t.job.completed_at is not None
        )
        change.samples.extend(
            Sample(change.name, shared, float(t.last_change))
            for shared, t in zip(labels, jobs, strict=True)
        )
    yield from (info, items, progress, start, completion, change)
