"""The exporter's own encoder gives exactly what prometheus_client's encoders give."""

from __future__ import annotations

import time

from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import CollectorRegistry

from exporter.collector import ExporterStatus, SnapshotCollector
from exporter.config import Settings
from exporter.exposition import render, render_scrape
from exporter.jobs import Job, Phase
from exporter.source import SourceSnapshot
from exporter.tracker import TrackedJob

SETTINGS = Settings(
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


def test_text_and_openmetrics_match_prometheus_client() -> None:
    snaps = snapshots()
    status = ExporterStatus(False, 1.5e9)
    registry = CollectorRegistry(auto_describe=False)
    collector = SnapshotCollector(snaps, status, now=time.time())
    registry.register(collector)

    ours, content_type = render(collector.collect(), "text/plain")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert ours == generate_latest(registry)

    ours, content_type = render(collector.collect(), "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert ours == generate_openmetrics(registry)  # type: ignore[no-untyped-call]
    assert ours.endswith(b"# EOF\n")


def test_scrape_rendering_matches_and_reuses_each_source() -> None:
    snaps = snapshots()
    status = ExporterStatus(True, 1.7e9)
    now = time.time()
    for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
        expected = render(SnapshotCollector(snaps, status, now=now).collect(), accept)
        assert render_scrape(snaps, status, accept, now=now) == expected
        # Again, from the lines cached on the snapshots; and a scrape of one source only.
        assert render_scrape(snaps, status, accept, now=now) == expected
        assert render_scrape(snaps[:1], None, accept, now=now) == render(
            SnapshotCollector(snaps[:1], None, now=now).collect(), accept
        )
    assert set(snaps[0].rendered) == {False, True}
