"""Each documented metric and label, checked by value, over real HTTP against the simulator."""

from __future__ import annotations

import gc
import gzip
import time
import zlib
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from tests.conftest import ExporterFactory, SimHandle
from tests.helpers import (
    one,
    parse_samples,
    promtool_check_metrics,
    require_tool,
    scrape,
    scrape_text,
    select,
)

KZ = {"platform": "kizen", "source": "kz"}
FP = {"platform": "firstpromoter", "source": "fp"}
UPLOAD = "custom_object_upload"
ARCHIVE = "custom_object_archive"


def populate(sim: SimHandle) -> dict[str, Any]:
    now = time.time()
    w = sim.world
    running = w.add_kizen_job(
        action=UPLOAD,
        status="in_progress",
        pending=60,
        success=30,
        failed=10,
        started_at=now - 300,
        custom_object={
            "id": "0b6f8b2e-1111-4111-8111-000000000001",
            "object_name": "contacts",
            "entity_name": "client",
        },
        extra={"send_email_notification": True},
    )
    done = w.add_kizen_job(
        action=UPLOAD,
        status="completed",
        pending=0,
        success=50,
        started_at=now - 200,
        completed_at=now - 60,
    )
    queued = w.add_kizen_job(action=UPLOAD, status="queued", pending=20)
    odd = w.add_kizen_job(action=ARCHIVE, status="reticulating", pending=5, started_at=now - 50)
    old = w.add_kizen_job(
        action=ARCHIVE,
        status="skipped",
        pending=0,
        started_at=now - 9000,
        completed_at=now - 7200,
    )
    empty_done = w.add_kizen_job(
        action=ARCHIVE, status="completed", pending=0, started_at=now - 100, completed_at=now - 90
    )
    b_run = w.add_fp_batch(
        action_label="promoters/accept",
        status="in_progress",
        selected_total=100,
        processed=40,
        failed=10,
        created_at=now - 400,
    )
    b_run.progress_override = 55
    b_done = w.add_fp_batch(
        action_label="referral/delete",
        status="completed",
        selected_total=10,
        processed=9,
        failed=1,
        created_at=now - 500,
        updated_at=now - 30,
    )
    b_pending = w.add_fp_batch(
        action_label="promoters/accept",
        status="pending",
        selected_total=None,
        total=20,
        created_at=now - 10,
    )
    b_stopped = w.add_fp_batch(
        action_label="referral/delete",
        status="stopped",
        selected_total=30,
        processed=5,
        created_at=now - 700,
        updated_at=now - 20,
    )
    return {
        "running": running,
        "done": done,
        "queued": queued,
        "odd": odd,
        "old": old,
        "empty_done": empty_done,
        "b_run": b_run,
        "b_done": b_done,
        "b_pending": b_pending,
        "b_stopped": b_stopped,
    }


async def test_kizen_metrics_by_value(sim: SimHandle, exporter: ExporterFactory) -> None:
    jobs = populate(sim)
    client = await exporter()
    s = parse_samples(await scrape_text(client))

    assert one(s, "bulk_up", **KZ) == 1
    assert one(s, "bulk_scrape_duration_seconds", **KZ) > 0
    assert one(s, "bulk_last_success_timestamp_seconds", **KZ) == pytest.approx(time.time(), abs=10)
    assert one(s, "bulk_api_requests_total", **KZ, endpoint="list", code="200") == 1

    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="running") == 1
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="queued") == 1
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="completed") == 1
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="failed") == 0
    assert one(s, "bulk_jobs", **KZ, action=ARCHIVE, phase="unknown") == 1
    assert one(s, "bulk_jobs", **KZ, action=ARCHIVE, phase="cancelled") == 1
    assert one(s, "bulk_jobs", **KZ, action=ARCHIVE, phase="completed") == 1
    # Pending across queued and running jobs only: 60 + 20; the unknown-status job is not counted.
    assert one(s, "bulk_pending_items", **KZ, action=UPLOAD) == 80
    assert one(s, "bulk_pending_items", **KZ, action=ARCHIVE) == 0

    running = jobs["running"]
    labels = {**KZ, "job_id": running.id, "action": UPLOAD}
    info = select(s, "bulk_job_info", **labels)
    assert list(info.values()) == [1]
    assert dict(next(iter(info))) == {
        **labels,
        "object": "contacts",
        "status": "in_progress",
        "phase": "running",
    }
    assert one(s, "bulk_job_items", **labels, state="pending") == 60
    assert one(s, "bulk_job_items", **labels, state="succeeded") == 30
    assert one(s, "bulk_job_items", **labels, state="failed") == 10
    assert one(s, "bulk_job_progress_ratio", **labels) == pytest.approx(0.4)
    assert one(s, "bulk_job_start_timestamp_seconds", **labels) == pytest.approx(
        running.started_at,
        abs=1e-3,
    )
    assert select(s, "bulk_job_completion_timestamp_seconds", **labels) == {}
    # First sight: the job's start time.
    assert one(s, "bulk_job_last_change_timestamp_seconds", **labels) == pytest.approx(
        running.started_at,
        abs=1e-3,
    )

    queued = jobs["queued"]
    q_labels = {**KZ, "job_id": queued.id, "action": UPLOAD}
    assert select(s, "bulk_job_start_timestamp_seconds", **q_labels) == {}
    assert one(s, "bulk_job_progress_ratio", **q_labels) == 0
    assert one(s, "bulk_job_last_change_timestamp_seconds", **q_labels) == pytest.approx(
        time.time(), abs=10
    )

    done = jobs["done"]
    d_labels = {**KZ, "job_id": done.id, "action": UPLOAD}
    assert one(s, "bulk_job_completion_timestamp_seconds", **d_labels) == pytest.approx(
        done.completed_at,
        abs=1e-3,
    )
    assert one(s, "bulk_job_progress_ratio", **d_labels) == 1
    empty = jobs["empty_done"]
    e_labels = {**KZ, "job_id": empty.id, "action": ARCHIVE}
    assert one(s, "bulk_job_progress_ratio", **e_labels) == 1  # empty and terminal
    odd = jobs["odd"]
    o_labels = {**KZ, "job_id": odd.id, "action": ARCHIVE}
    assert dict(next(iter(select(s, "bulk_job_info", **o_labels))))["status"] == "reticulating"

    # Finished two hours ago: outside the 1h retention, so no per-job series, but still counted.
    old_id = jobs["old"].id
    assert not [k for (name, k) in s if dict(k).get("job_id") == old_id]

    # Everything was already there at the baseline: counters exist at zero.
    assert one(s, "bulk_jobs_finished_total", **KZ, action=UPLOAD, phase="completed") == 0
    assert one(s, "bulk_items_processed_total", **KZ, action=UPLOAD, result="succeeded") == 0
    assert not [k for (name, k) in s if dict(k).get("job") or dict(k).get("instance")]


async def test_firstpromoter_metrics_by_value(sim: SimHandle, exporter: ExporterFactory) -> None:
    jobs = populate(sim)
    client = await exporter()
    s = parse_samples(await scrape_text(client))

    assert one(s, "bulk_up", **FP) == 1
    assert one(s, "bulk_api_requests_total", **FP, endpoint="list", code="200") == 1
    assert one(s, "bulk_api_requests_total", **FP, endpoint="progress", code="200") == 1
    accept, delete = "promoters/accept", "referral/delete"
    assert one(s, "bulk_jobs", **FP, action=accept, phase="running") == 1
    assert one(s, "bulk_jobs", **FP, action=accept, phase="queued") == 1
    assert one(s, "bulk_jobs", **FP, action=delete, phase="completed") == 1
    assert one(s, "bulk_jobs", **FP, action=delete, phase="cancelled") == 1
    # selected_total - processed - failed = 50; the pending batch falls back to total = 20.
    assert one(s, "bulk_pending_items", **FP, action=accept) == 70

    run = jobs["b_run"]
    labels = {**FP, "job_id": str(run.id), "action": accept}
    assert one(s, "bulk_job_items", **labels, state="succeeded") == 40
    assert one(s, "bulk_job_items", **labels, state="failed") == 10
    assert one(s, "bulk_job_items", **labels, state="pending") == 50
    # The progress endpoint's percent wins over the counts (which would say 0.5).
    assert one(s, "bulk_job_progress_ratio", **labels) == pytest.approx(0.55)
    assert one(s, "bulk_job_start_timestamp_seconds", **labels) == pytest.approx(
        run.created_at,
        abs=1e-3,
    )
    assert select(s, "bulk_job_completion_timestamp_seconds", **labels) == {}
    info = dict(next(iter(select(s, "bulk_job_info", **labels))))
    assert info["object"] == "" or "object" not in info
    assert info["status"] == "in_progress"

    done = jobs["b_done"]
    d_labels = {**FP, "job_id": str(done.id), "action": delete}
    assert one(s, "bulk_job_completion_timestamp_seconds", **d_labels) == pytest.approx(
        done.updated_at,
        abs=1e-3,
    )
    assert one(s, "bulk_job_progress_ratio", **d_labels) == 1
    stopped = jobs["b_stopped"]
    st_labels = {**FP, "job_id": str(stopped.id), "action": delete}
    assert dict(next(iter(select(s, "bulk_job_info", **st_labels))))["phase"] == "cancelled"
    assert one(s, "bulk_job_items", **st_labels, state="pending") == 25


async def test_counters_and_last_change_follow_changes(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    jobs = populate(sim)
    client = await exporter()
    await scrape_text(client)  # the baseline
    running = jobs["running"]
    running.pending, running.success, running.failed = 0, 85, 15
    running.status, running.completed_at = "completed", time.time()
    b_run = jobs["b_run"]
    b_run.processed, b_run.failed = 60, 12
    b_run.status = "failed"
    # A job created and finished between two scrapes, after the baseline: counted whole.
    sim.world.add_kizen_job(
        action=UPLOAD, status="failed", pending=2, success=3, failed=5, started_at=time.time()
    )
    before = time.time()
    s = parse_samples(await scrape_text(client))

    assert one(s, "bulk_jobs_finished_total", **KZ, action=UPLOAD, phase="completed") == 1
    assert one(s, "bulk_jobs_finished_total", **KZ, action=UPLOAD, phase="failed") == 1
    assert one(s, "bulk_items_processed_total", **KZ, action=UPLOAD, result="succeeded") == 55 + 3
    assert one(s, "bulk_items_processed_total", **KZ, action=UPLOAD, result="failed") == 5 + 5
    assert one(s, "bulk_jobs_finished_total", **FP, action="promoters/accept", phase="failed") == 1
    assert (
        one(s, "bulk_items_processed_total", **FP, action="promoters/accept", result="succeeded")
        == 20
    )
    assert (
        one(s, "bulk_items_processed_total", **FP, action="promoters/accept", result="failed") == 2
    )
    labels = {**KZ, "job_id": running.id, "action": UPLOAD}
    assert one(s, "bulk_job_last_change_timestamp_seconds", **labels) >= before - 1

    # Nothing changes: nothing more is counted; a count going down is not subtracted.
    running.success = 80
    s = parse_samples(await scrape_text(client))
    assert one(s, "bulk_jobs_finished_total", **KZ, action=UPLOAD, phase="completed") == 1
    assert one(s, "bulk_items_processed_total", **KZ, action=UPLOAD, result="succeeded") == 58


async def test_job_series_are_capped_active_first(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    now = time.time()
    for i in range(5):
        sim.world.add_kizen_job(
            status="completed",
            pending=0,
            success=1,
            started_at=now - 100,
            completed_at=now - 50 + i,
        )
    active = [
        sim.world.add_kizen_job(status="in_progress", pending=5, started_at=now - i)
        for i in range(3)
    ]
    client = await exporter(fp=False, kizen_extra="    max_job_series: 4\n")
    s = parse_samples(await scrape_text(client))
    emitted = {dict(k)["job_id"] for k in select(s, "bulk_job_info", **KZ)}
    assert len(emitted) == 4
    assert {j.id for j in active} <= emitted
    newest_finished = sim.world.kizen[3]  # completed_at now - 46: the newest finished
    assert newest_finished.id in emitted
    # Aggregates are never truncated.
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="completed") == 5


async def test_label_values_are_escaped(sim: SimHandle, exporter: ExporterFactory) -> None:
    tricky = 'we"ird\\ac\ntion ✓ 日本'
    sim.world.add_kizen_job(
        action=tricky,
        status="in_progress",
        pending=3,
        started_at=time.time(),
        custom_object={"id": "x", "object_name": 'Ob"j\\', "entity_name": "e"},
    )
    client = await exporter(fp=False)
    text = await scrape_text(client)
    s = parse_samples(text)
    assert one(s, "bulk_jobs", **KZ, action=tricky, phase="running") == 1
    info = dict(next(iter(select(s, "bulk_job_info", **KZ, action=tricky))))
    assert info["object"] == 'Ob"j\\'
    om = await scrape_text(
        client, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )

    values = {
        (smp.name, smp.labels.get("action"), smp.labels.get("phase")): smp.value
        for fam in om_parse(om)  # type: ignore[no-untyped-call]
        for smp in fam.samples
    }
    assert values[("bulk_jobs", tricky, "running")] == 1


async def test_openmetrics_and_gzip(sim: SimHandle, exporter: ExporterFactory) -> None:
    populate(sim)
    client = await exporter()
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
    )
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    body = await response.text()
    assert body.endswith("# EOF\n")
    assert "bulk_jobs_finished_total{" in body

    plain = await client.get("/metrics", headers={"Accept": "text/plain"})
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")

    # auto_decompress off so the test sees the bytes on the wire.
    raw = await client.session.get(
        client.make_url("/metrics"), headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert raw.headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(await raw.read()).decode()
    assert "bulk_up{" in text
    identity = await client.session.get(
        client.make_url("/metrics"),
        headers={"Accept-Encoding": "identity"},
        auto_decompress=False,
    )
    assert "Content-Encoding" not in identity.headers


@pytest.mark.tools
async def test_promtool_check_metrics(sim: SimHandle, exporter: ExporterFactory) -> None:
    require_tool("promtool")  # the check below is the test: never left out
    jobs = populate(sim)
    sim.world.add_kizen_job(
        action='a"b\\c\nd', status="in_progress", pending=1, started_at=time.time()
    )
    client = await exporter()
    await scrape_text(client)
    # A running job moves between the two scrapes: the answer holds ETAs too.
    jobs["running"].pending -= 10
    jobs["running"].success += 10
    text = await scrape_text(client)
    assert "bulk_job_estimated_completion_timestamp_seconds{" in text
    assert "process_resident_memory_bytes " in text
    # Not a single finding, not even a warning.
    assert (await promtool_check_metrics(text)).strip() == ""


async def test_rate_limit_allowance_and_wait(sim: SimHandle, exporter: ExporterFactory) -> None:
    now = time.time()
    for _ in range(40):
        sim.world.add_kizen_job(
            status="completed", pending=0, started_at=now - 99, completed_at=now - 90
        )
    # kz takes rate_limit from defaults, fp has its own.
    client = await exporter(
        defaults="  rate_limit: 5/s\n",
        kizen_extra="    page_size: 5\n",
        fp_extra="    rate_limit: 120/m\n",
    )
    s = await scrape(client)
    assert one(s, "bulk_up", **KZ) == 1
    assert one(s, "bulk_rate_limit_requests_per_second", **KZ) == 5.0
    assert one(s, "bulk_rate_limit_requests_per_second", **FP) == 2.0
    # 8 list pages against a bucket of 5: three requests waited, for 0.2, 0.4 and 0.6 s at most
    # (less by what the bucket refilled meanwhile).
    assert one(s, "bulk_api_requests_total", **KZ, endpoint="list", code="200") == 8
    waited = one(s, "bulk_rate_limit_wait_seconds_total", **KZ)
    assert 0 < waited <= 1.2 + 1e-9
    # fp made 2 requests with 120 tokens: no wait, and the zero is served.
    assert one(s, "bulk_rate_limit_wait_seconds_total", **FP) == 0.0
    # A counter: it never goes down, and /probe serves it too.
    probe = await scrape(client, "/probe?source=kz")
    assert one(probe, "bulk_rate_limit_wait_seconds_total", **KZ) >= waited
    assert one(probe, "bulk_rate_limit_requests_per_second", **KZ) == 5.0


async def test_platform_default_allowance(sim: SimHandle, exporter: ExporterFactory) -> None:
    client = await exporter()
    s = await scrape(client)
    for labels in (KZ, FP):
        assert one(s, "bulk_rate_limit_requests_per_second", **labels) == pytest.approx(100 / 60)


PROCESS_FAMILIES = ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info")


async def test_process_and_platform_collectors_on_metrics_only(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    populate(sim)
    # Scrapes within min_interval share one refresh, and so the cached encoding of its part.
    client = await exporter(defaults="  min_interval: 1h\n")
    first = await scrape(client)
    assert one(first, "process_resident_memory_bytes") > 0
    assert one(first, "process_cpu_seconds_total") >= 0
    assert one(first, "python_info", implementation="CPython") == 1
    assert select(first, "python_gc_objects_collected_total")
    for name, labels in first:
        if name.startswith(("process_", "python_")):
            assert not {"platform", "source"} & dict(labels).keys(), name
    probe = await scrape(client, "/probe?source=kz")
    assert not [name for name, _ in probe if name.startswith(("process_", "python_"))]
    assert one(probe, "bulk_up", **KZ) == 1

    # They are read when an answer is encoded: scrapes that share one refresh share its
    # encoding, and with it the values; a new refresh's answer reads them again.
    collections = one(first, "python_gc_collections_total", generation="2")
    gc.collect()
    shared = await scrape(client)
    assert one(shared, "python_gc_collections_total", generation="2") == collections
    fresh_client = await exporter()
    await scrape_text(fresh_client)
    gc.collect()
    fresh = await scrape(fresh_client)
    assert one(fresh, "python_gc_collections_total", generation="2") > collections


async def test_process_families_in_both_formats_and_gzip(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    populate(sim)
    client = await exporter(defaults="  min_interval: 1h\n")
    for accept in ("application/openmetrics-text; version=1.0.0", "text/plain"):
        for _ in range(2):  # the second answer comes from the cache
            raw = await client.session.get(
                client.make_url("/metrics"),
                headers={"Accept-Encoding": "gzip", "Accept": accept},
                auto_decompress=False,
            )
            assert raw.headers["Content-Encoding"] == "gzip"
            body = await raw.read()
            # One gzip member, whole: what every client can read.
            stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
            text = (stream.decompress(body) + stream.flush()).decode()
            assert stream.eof
            assert stream.unused_data == b""
            if accept.startswith("application/openmetrics-text"):
                assert text.count("# EOF") == 1
                assert text.endswith("# EOF\n")
                names = {f.name for f in om_parse(text)}  # type: ignore[no-untyped-call]
            else:
                assert "# EOF" not in text
                names = {name for name, _ in parse_samples(text)}
            assert "bulk_up" in names
            assert any(n.startswith("process_resident_memory_bytes") for n in names), accept
            assert any(n.startswith("python_gc_objects_collected") for n in names), accept
            if accept == "text/plain":
                await promtool_check_metrics(text)
