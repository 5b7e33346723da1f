"""Answers are prometheus_client's own encodings: parsed back with its parsers, checked by
promtool, shared across scrapes, and one bad source never fails the answer."""

from __future__ import annotations

import dataclasses
import time

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_om,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.collector import (
    ExporterStatus,
    _add_histogram,
    emitted_jobs,
    exporter_families,
    source_families,
)
from exporter.exposition import Renderer, render_scrape
from exporter.jobs import Job, Phase, QueueClock
from exporter.settings import Settings
from exporter.source import SourceSnapshot
from exporter.tracker import Histogram, JobTracker, TrackedJob
from tests.helpers import Labels, promtool_check_metrics

# The families built afresh for every snapshot (health and request counts).
VOLATILE = {
    "bulk_up",
    "bulk_scrape_duration_seconds",
    "bulk_last_success_timestamp_seconds",
    "bulk_history_loaded",
    "bulk_rate_limit_requests_per_second",
    "bulk_api_requests",
    "bulk_rate_limit_wait_seconds",
    "bulk_job_estimated_completion_timestamp_seconds",
}
SETTINGS = Settings.model_construct(
    timeout=10,
    min_interval=0,
    finished_job_retention=3600,
    max_job_series=500,
    full_sync_interval=3600,
    max_concurrency=4,
)


def snapshots() -> list[SourceSnapshot]:
    now = time.time()
    tricky = ["plain", 'quo"te', "back\\slash", "new\nline", "ünï©ødé ✓ 日本", ""]
    jobs = tuple(
        TrackedJob(
            Job(
                id=f"job-{i}",
                action=tricky[i % len(tricky)] or "a",
                object=tricky[(i + 1) % len(tricky)],
                status="in_progress",
                phase=[Phase.RUNNING, Phase.COMPLETED, Phase.UNKNOWN][i % 3],
                pending=i,
                succeeded=i * 1000,
                failed=i % 2,
                progress=i / 17,
                started_at=now - 1e5 * i if i % 4 else None,
                completed_at=now - 10 if i % 3 == 1 else None,
            ),
            now - i,
        )
        for i in range(30)
    )
    up = SourceSnapshot(
        name="kz",
        platform="kizen",
        up=True,
        duration=0.123456789,
        refreshed_at=now,
        last_success=now,
        error=None,
        settings=SETTINGS,
        jobs=jobs,
        actions=frozenset(t.job.action for t in jobs),
        finished={("plain", "failed"): 3},
        items={('quo"te', "succeeded"): 10**12},
        requests={("list", "200"): 7, ("detail", "timeout"): 1},
        durations={("plain", "completed"): Histogram([1, 0, 2] + [0] * 13, 42.5)},
        queue_waits={"plain": Histogram([0] * 15 + [1], 90000.0)},
        last_finished={("plain", "completed"): now - 5},
        rows_skipped={("list", "bad_field"): 2},
        history_loaded=True,
    )
    down = SourceSnapshot(
        name="fp",
        platform="firstpromoter",
        up=False,
        duration=float("inf"),
        refreshed_at=now,
        last_success=None,
        error="boom",
        settings=SETTINGS,
    )
    return [up, down]


def _samples(families: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in families:  # type: ignore[attr-defined]
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_both_formats_parse_back_to_the_same_samples() -> None:
    snaps = snapshots()
    status = ExporterStatus(False, 1.5e9, state_write_failures=2)
    now = time.time()
    text, content_type = render_scrape(snaps, status, "text/plain", now=now)
    assert content_type.startswith("text/plain; version=0.0.4")
    om, om_type = render_scrape(
        snaps, status, "application/openmetrics-text; version=1.0.0", now=now
    )
    assert om_type.startswith("application/openmetrics-text; version=1.0.0")
    assert om.endswith(b"# EOF\n")
    from_text = _samples(parse_text(text.decode()))
    from_om = _samples(parse_om(om.decode()))  # type: ignore[no-untyped-call]

    # OpenMetrics adds nothing but names counters' samples alike; the values agree.
    # The process's own families are read at each encoding: they may move between the two.
    def ours(samples: dict[tuple[str, Labels], float]) -> dict[tuple[str, Labels], float]:
        return {k: v for k, v in samples.items() if not k[0].startswith(("process_", "python_"))}

    assert ours(from_text) == {
        k: v for k, v in ours(from_om).items() if not k[0].endswith("_created")
    }
    key = (
        "bulk_items_processed_total",
        (("action", 'quo"te'), ("platform", "kizen"), ("result", "succeeded"), ("source", "kz")),
    )
    assert from_text[key] == 10**12
    labels = (("action", "new\nline"), ("job_id", "job-3"), ("platform", "kizen"), ("source", "kz"))
    assert from_text[("bulk_job_progress_ratio", labels)] == 3 / 17
    bucket = (
        "bulk_job_duration_seconds_bucket",
        (
            ("action", "plain"),
            ("le", "15.0"),
            ("phase", "completed"),
            ("platform", "kizen"),
            ("source", "kz"),
        ),
    )
    assert from_text[bucket] == 3
    assert from_text[("bulk_state_write_failures_total", ())] == 2
    assert from_text[("bulk_up", (("platform", "firstpromoter"), ("source", "fp")))] == 0
    await promtool_check_metrics(text.decode())


def test_the_library_negotiates_what_prometheus_3_asks_for() -> None:
    accept = (
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
        "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;"
        "escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
    )
    body, content_type = render_scrape(snapshots(), None, accept)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    assert _samples(parse_om(body.decode()))  # type: ignore[no-untyped-call]


def test_an_unchanged_source_reuses_its_families_and_a_changed_one_is_built_again() -> None:
    snaps = snapshots()
    now = time.time()
    renderer = Renderer()
    first = renderer.families(snaps[0], now)
    again = renderer.families(snaps[0], now)
    # The families that change with every refresh are built every time; the rest is kept.
    content = [f for f in first if f.name not in VOLATILE]
    assert content
    assert all(
        a is b for a, b in zip(content, [f for f in again if f.name not in VOLATILE], strict=True)
    )
    # A new snapshot of the same source whose jobs and counters are the very same objects
    # (what a refresh that changed nothing gives) keeps them too, with its own health values.
    later = dataclasses.replace(snaps[0], duration=9.0)
    kept = renderer.families(later, now)
    assert next(f for f in kept if f.name not in VOLATILE) is content[0]
    assert (
        _samples(kept)[("bulk_scrape_duration_seconds", (("platform", "kizen"), ("source", "kz")))]
        == 9.0
    )
    # Changed counters are built again.
    changed = dataclasses.replace(snaps[0], items={**snaps[0].items, ("plain", "failed"): 99})
    rebuilt = renderer.families(changed, now)
    assert next(f for f in rebuilt if f.name not in VOLATILE) is not content[0]
    key = (
        "bulk_items_processed_total",
        (("action", "plain"), ("platform", "kizen"), ("result", "failed"), ("source", "kz")),
    )
    assert _samples(rebuilt)[key] == 99
    # A finished job leaving the retention window changes the per-job series without any
    # new object: that is rebuilt too.
    later_still = now + snaps[0].settings.finished_job_retention + 10**6
    assert _samples(renderer.families(snaps[0], later_still)) != _samples(first)
    one, _ = renderer.render(snaps[:1], None, "text/plain", now=now)
    assert one == render_scrape(snaps[:1], None, "text/plain", now=now)[0]


def test_a_source_whose_values_cannot_be_encoded_fails_alone() -> None:
    good, _ = snapshots()
    bad = SourceSnapshot(
        name="huge",
        platform="kizen",
        up=True,
        duration=0.1,
        refreshed_at=time.time(),
        last_success=time.time(),
        error=None,
        settings=SETTINGS,
        actions=frozenset({"a"}),
        items={("a", "succeeded"): 10**401},
    )
    body, _ = render_scrape([good, bad], ExporterStatus(True, 1.7e9), "text/plain")
    samples = _samples(parse_text(body.decode()))
    assert samples[("bulk_up", (("platform", "kizen"), ("source", "huge")))] == 0
    assert samples[("bulk_up", (("platform", "kizen"), ("source", "kz")))] == 1
    assert not any(
        dict(k[1]).get("source") == "huge" and k[0] == "bulk_items_processed_total" for k in samples
    )


def test_histogram_samples_are_those_the_library_would_make() -> None:
    """The collector makes histogram samples directly (for speed): they must equal what
    `HistogramMetricFamily.add_metric` gives for the same histogram, empty or not."""
    for counts, total in (([0] * 16, 0.0), ([1, 0, 2] + [0] * 12 + [4], 1e6 + 0.5)):
        histogram = Histogram(list(counts), total)
        ours = HistogramMetricFamily("h", "help", labels=["action", "platform", "source"])
        _add_histogram(ours, {"action": "a", "platform": "kizen"}, "kz", histogram)
        theirs = HistogramMetricFamily("h", "help", labels=["action", "platform", "source"])
        theirs.add_metric(["a", "kizen", "kz"], histogram.cumulative(), histogram.total)
        assert ours.samples == theirs.samples


def test_every_family_of_a_source_and_of_the_exporter_has_samples() -> None:
    """Every family a source or the exporter gives, running jobs with an ETA among them, and
    a failed source's: none is served empty."""
    good, down = snapshots()
    t0 = time.time()
    tracker = JobTracker(QueueClock.START_KNOWN)
    running = dataclasses.replace(
        good.jobs[0].job, id="moving", pending=100, succeeded=0, started_at=t0
    )
    tracker.apply([running], t0 - 60, complete=True)
    tracker.apply([dataclasses.replace(running, pending=40, succeeded=60)], t0, complete=True)
    moving = dataclasses.replace(
        good,
        jobs=(*tracker.jobs.values(), *good.jobs),
        rates=dict(tracker.rates),
        rate_limit=5.0,
    )
    families = [
        *source_families([moving, down], t0),
        *exporter_families(ExporterStatus(True, t0)),
    ]
    assert [f.name for f in families if not f.samples] == []


def test_the_eta_moves_with_time_though_the_job_does_not() -> None:
    """The same jobs (what refreshes that change nothing give, whose other families the
    renderer keeps): the ETA is built at every refresh, later as the pace over the window
    drops, and gone once the job is stalled."""
    t0 = 1_800_000_000.0
    tracker = JobTracker(QueueClock.START_KNOWN)
    job = Job(
        id="j",
        action="a",
        object="",
        status="in_progress",
        phase=Phase.RUNNING,
        pending=100,
        succeeded=0,
        failed=0,
        progress=0.0,
        started_at=t0 - 60,
        completed_at=None,
    )
    tracker.apply([job], t0, complete=True)
    tracker.apply(
        [dataclasses.replace(job, pending=40, succeeded=60, progress=0.6)], t0 + 60, complete=True
    )
    base = SourceSnapshot(
        name="kz",
        platform="kizen",
        up=True,
        duration=0.1,
        refreshed_at=t0 + 60,
        last_success=t0 + 60,
        error=None,
        settings=Settings(),
        jobs=tuple(tracker.jobs.values()),
        actions=frozenset(tracker.actions),
        rates=dict(tracker.rates),
    )
    renderer = Renderer()

    def eta_at(refreshed: float) -> list[float]:
        families = renderer.families(dataclasses.replace(base, refreshed_at=refreshed), refreshed)
        (family,) = [
            f for f in families if f.name == "bulk_job_estimated_completion_timestamp_seconds"
        ]
        return [s.value for s in family.samples]

    assert eta_at(t0 + 60) == [t0 + 60 + 40 / 1.0]
    (later,) = eta_at(t0 + 120)
    assert later == t0 + 120 + 40 / (60 / 120)
    assert eta_at(t0 + 60 + 1800) == []  # stalled: unchanged for 30 minutes


def test_a_source_whose_families_cannot_be_built_fails_alone() -> None:
    """The health families are built for all sources at once; one source's unusable value
    there must still cost that source alone."""
    good, _ = snapshots()
    bad = dataclasses.replace(good, name="broken", rate_limit_wait=10**401)
    body, _ = render_scrape([good, bad], ExporterStatus(True, 1.7e9), "text/plain")
    samples = _samples(parse_text(body.decode()))
    assert samples[("bulk_up", (("platform", "kizen"), ("source", "broken")))] == 0
    assert samples[("bulk_up", (("platform", "kizen"), ("source", "kz")))] == 1
    assert any(k[0] == "bulk_job_info" and dict(k[1])["source"] == "kz" for k in samples)


def test_the_jobs_that_get_series_are_chosen_again_only_when_needed() -> None:
    """Kept while the source's jobs are the same objects and no finished one among them has
    left the retention window; chosen again once one has."""
    up, _ = snapshots()
    renderer = Renderer()
    now = time.time()
    first = renderer._emitted_of(up, now)
    assert renderer._emitted_of(up, now + 1) is first
    assert renderer._emitted_of(dataclasses.replace(up, duration=2.0), now + 2) is first
    finished = [t for t in first if t.job.phase.terminal]
    assert finished
    expiry = min(
        (t.job.completed_at or t.last_change) + up.settings.finished_job_retention for t in finished
    )
    later = renderer._emitted_of(up, expiry + 1)
    assert later is not first
    assert len(later) < len(first)
    assert later == emitted_jobs(up, expiry + 1)
    # New jobs (a changed source) are chosen again at once.
    changed = dataclasses.replace(up, jobs=up.jobs[:5])
    assert renderer._emitted_of(changed, now) == emitted_jobs(changed, now)


def test_a_source_left_bare_keeps_its_rate_limit_wait_counter() -> None:
    """A source whose counters cannot be built is answered down with its health series only;
    its rate-limit wait, a counter of the exporter's own, keeps its value rather than drop to
    0, which rate() would read as a reset and count the whole total again."""
    good, _ = snapshots()
    action = sorted(good.actions)[0]
    unusable = {(action, "completed"): 10**401}  # past any float: its counters cannot be built
    bad = dataclasses.replace(good, name="broken", finished=unusable, rate_limit_wait=12.5)
    body, _ = render_scrape([good, bad], ExporterStatus(True, 1.7e9), "text/plain")
    samples = _samples(parse_text(body.decode()))
    broken = (("platform", "kizen"), ("source", "broken"))
    assert samples[("bulk_up", broken)] == 0
    assert samples[("bulk_rate_limit_wait_seconds_total", broken)] == 12.5
    assert not any(k[0] == "bulk_jobs_finished_total" and k[1][:2] == broken for k in samples)
