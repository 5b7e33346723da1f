"""Odd but plausible answers, over real HTTP against the simulator: the numbers hold.

Each test is one way an upstream can answer that once made jobs come and go, counters climb
on their own or a lesson be forgotten (docs/api.md, "Guesses and the other world"). The
generated histories of tests/test_histories.py prove the tracker's side of the same rules.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter.runtime import Runtime
from exporter.server import RUNTIME, make_app
from exporter.simulator import Behaviour, Fault
from exporter.state import StateStore
from tests.conftest import Client, ExporterFactory, SimHandle
from tests.helpers import Samples, config_from, eventually, one, scrape, select, source_yaml
from tests.test_debug_probe import debug
from tests.test_worlds import ACCEPT, FP, KZ, UPLOAD, notices

PHASES = ("queued", "running", "completed", "failed", "cancelled")


def fp_phases(s: Samples) -> dict[str, float]:
    return {p: one(s, "bulk_jobs", **FP, action=ACCEPT, phase=p) for p in PHASES}


def finished_history(sim: SimHandle) -> list[int]:
    """5 completed and 1 failed batch of long ago, and 3 running ones."""
    now = time.time()
    for status in ["completed"] * 5 + ["failed"]:
        sim.world.add_fp_batch(
            status=status,
            selected_total=10,
            processed=10 if status == "completed" else 4,
            failed=0 if status == "completed" else 2,
            created_at=now - 7200,
            updated_at=now - 7000,
        )
    return [
        sim.world.add_fp_batch(status="in_progress", selected_total=100, processed=10 * i).id
        for i in range(1, 4)
    ]


@pytest.mark.parametrize("entries", ["numbers", "garbled"])
async def test_a_progress_map_of_active_batches_only_erases_nothing(
    sim: SimHandle, exporter: ExporterFactory, entries: Literal["numbers", "garbled"]
) -> None:
    """The progress map lists only the batches in progress whatever it is asked (and, in
    the second world, some entries are missing, null, true, words or quoted numbers):
    finished batches stay, running ones never come and go, and the world is said."""
    sim.sim.behaviour = Behaviour(fp_progress_map="active", fp_progress_entries=entries)
    finished_history(sim)
    client = await exporter(kizen=False)
    for _ in range(4):
        s = await scrape(client)
        assert one(s, "bulk_up", **FP) == 1
        assert fp_phases(s) == {
            "queued": 0,
            "running": 3,
            "completed": 5,
            "failed": 1,
            "cancelled": 0,
        }
        assert len(select(s, "bulk_job_info", **FP)) == 3  # the finished ones are past retention
    assert "progress_map_active_only" in notices(client, "fp")


async def test_garbled_progress_entries_take_the_progress_from_the_counts(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    sim.sim.behaviour = Behaviour(fp_progress_entries="garbled")
    running = finished_history(sim)
    client = await exporter(kizen=False)
    s = await scrape(client)
    for batch_id in running:
        batch = sim.world.fp[batch_id]
        ratio = one(s, "bulk_job_progress_ratio", **FP, action=ACCEPT, job_id=str(batch_id))
        # Whatever the map held for it (missing, null, a word...), the ratio is the batch's.
        assert ratio == pytest.approx(batch.processed / 100, abs=0.011)


async def test_counts_a_stale_replica_answers_add_nothing(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    """Every other answer holds the counts of the tick before (10, 5, 10, 5...): the items
    counters count past the highest count seen, so they stay still while nothing moves."""
    sim.sim.behaviour = Behaviour(counts="stale")
    job = sim.world.add_kizen_job(status="in_progress", pending=90, success=5)
    batch = sim.world.add_fp_batch(status="in_progress", selected_total=100, processed=5)
    client = await exporter()
    await scrape(client)
    sim.world.tuning.item_failure_chance = 0.0
    job.previous, batch.previous = (90, 5, 0), (5, 0)
    job.pending, job.success, batch.processed = 80, 15, 15
    totals = []
    for _ in range(6):
        s = await scrape(client)
        totals.append(
            (
                one(s, "bulk_items_processed_total", **KZ, action=UPLOAD, result="succeeded"),
                one(s, "bulk_items_processed_total", **FP, action=ACCEPT, result="succeeded"),
            )
        )
    # Each row alternates fresh and stale answers: the first fresh one counts the 10 items.
    assert totals[-4:] == [(10, 10)] * 4
    assert all(k <= 10 and f <= 10 for k, f in totals)


async def test_what_an_account_taught_survives_a_restart(
    sim: SimHandle, exporter: ExporterFactory, tmp_path: Path
) -> None:
    """processed_count counts the failed items (learnt from a finished batch): an unchanged
    running batch reads the same after a restart, and its items counter gains nothing."""
    sim.sim.behaviour = Behaviour(fp_processed="includes-failed")
    now = time.time()
    sim.world.add_fp_batch(
        status="failed", selected_total=10, processed=6, failed=3, created_at=now - 900
    )
    running = sim.world.add_fp_batch(status="in_progress", selected_total=100, processed=30)
    running.failed = 10
    text = source_yaml(None, sim.fp_url)

    async def start() -> tuple[Client, Runtime]:
        runtime = Runtime(config_from(text), store=StateStore(tmp_path))
        client: Client = TestClient(TestServer(make_app(runtime)))
        await client.start_server()
        return client, runtime

    def reading(s: Samples) -> tuple[float, ...]:
        labels = {**FP, "action": ACCEPT, "job_id": str(running.id)}
        items = [one(s, "bulk_job_items", **labels, state=k) for k in ("succeeded", "failed")]
        counted = one(s, "bulk_items_processed_total", **FP, action=ACCEPT, result="succeeded")
        return (*items, counted)

    client, _ = await start()
    await scrape(client)
    before = reading(await scrape(client))
    assert before[:2] == (30, 10)
    await client.close()
    client, _ = await start()
    try:
        after = reading(await scrape(client))
        assert "processed_includes_failed" in notices(client, "fp")
    finally:
        await client.close()
    assert after == before


async def test_one_inconsistent_running_batch_changes_no_other_batch(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    """A running batch whose processed + failed momentarily exceed selected_total is no
    evidence of how the account counts: the other batches read as before."""
    other = sim.world.add_fp_batch(status="in_progress", selected_total=100, processed=40)
    other.failed = 10
    client = await exporter(kizen=False)
    await scrape(client)
    odd = sim.world.add_fp_batch(status="in_progress", selected_total=10, processed=9)
    odd.failed = 5
    s = await scrape(client)
    labels = {**FP, "action": ACCEPT, "job_id": str(other.id)}
    assert one(s, "bulk_job_items", **labels, state="succeeded") == 40
    assert "processed_includes_failed" not in notices(client, "fp")


async def test_an_upper_case_by_id_answer_is_one_job(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    sim.sim.behaviour = Behaviour(kizen_detail_id="upper")
    job = sim.world.add_kizen_job(
        status="in_progress", pending=5, success=5, started_at=time.time() - 3600
    )
    client = await exporter(fp=False)
    await scrape(client)
    job.status, job.pending, job.success, job.completed_at = "completed", 0, 10, time.time()
    for _ in range(2):
        s = await scrape(client)
        assert len(select(s, "bulk_job_info", **KZ)) == 1
        assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="completed") == 1
        assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="running") == 0
        assert one(s, "bulk_jobs_finished_total", **KZ, action=UPLOAD, phase="completed") == 1


async def test_times_out_of_order_count_the_job_but_not_its_times(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    # Every refresh reads the whole list, so that the debug probe's own refresh sees them.
    client = await exporter(kizen=False, fp_extra="    incremental: false\n")
    await scrape(client)
    now = time.time()
    sim.world.add_fp_batch(
        status="completed", selected_total=5, processed=5, created_at=now, updated_at=now - 600
    )
    sim.world.add_fp_batch(
        action_label="referral/delete",
        status="completed",
        selected_total=5,
        processed=5,
        created_at=now,
        updated_at=now + 365 * 86400,
    )
    s = await scrape(client)
    for action in (ACCEPT, "referral/delete"):
        assert one(s, "bulk_jobs_finished_total", **FP, action=action, phase="completed") == 1
        assert not any(select(s, "bulk_job_duration_seconds_count", **FP, action=action).values())
        assert not select(s, "bulk_last_finished_timestamp_seconds", **FP, action=action)
    text = await debug(client, "fp")
    assert "updated_at: before the start" in text
    assert "updated_at: in the future" in text


@pytest.mark.parametrize("broken", ["404", "empty"])
@pytest.mark.parametrize("incremental", [True, False])
async def test_a_list_page_that_fails_while_later_pages_answer_removes_nothing(
    sim: SimHandle,
    exporter: ExporterFactory,
    broken: Literal["404", "empty"],
    incremental: bool,
) -> None:
    now = time.time()
    for i in range(25):
        sim.world.add_kizen_job(
            status="completed",
            pending=0,
            success=3,
            started_at=now - 9000 - i,
            completed_at=now - 8000 - i,
        )
    client = await exporter(
        fp=False, kizen_extra=f"    page_size: 10\n    incremental: {str(incremental).lower()}\n"
    )
    s = await scrape(client)
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="completed") == 25
    sim.sim.kizen_broken_pages = {2: broken}
    # The next full read (every scrape when not incremental; a fallback when incremental).
    if incremental:
        assert client.app is not None
        client.app[RUNTIME].sources["kz"].refresher._last_full = 0.0
    for _ in range(3):
        s = await scrape(client)
        assert one(s, "bulk_up", **KZ) == 1
        assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="completed") == 25


async def test_a_burst_of_finishes_never_fails_a_scrape_on_a_slow_full_read(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    """More than 50 known active jobs finish between two reads on an account whose full read
    takes longer than a scrape: the scrape serves the active read, and the full read, in the
    background, brings the finishes in later."""
    now = time.time()
    jobs = [
        sim.world.add_kizen_job(status="in_progress", pending=5, started_at=now - 3600)
        for _ in range(60)
    ]
    client = await exporter(fp=False, defaults="  timeout: 3s\n", kizen_extra="    page_size: 5\n")
    s = await scrape(client)
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="running") == 60
    for job in jobs:
        job.status, job.pending, job.success, job.completed_at = "completed", 0, 5, time.time()
    sim.sim.latency["kizen"] = 0.3  # 12 pages, 4 at a time: longer than the patience
    started = time.monotonic()
    s = await scrape(client)
    assert one(s, "bulk_up", **KZ) == 1
    assert time.monotonic() - started < 3

    async def counted() -> bool:
        s = await scrape(client)
        assert one(s, "bulk_up", **KZ) == 1
        return one(s, "bulk_jobs_finished_total", **KZ, action=UPLOAD, phase="completed") == 60

    await eventually(counted, "the background full read's finishes", within=30, interval=0.5)


async def test_a_by_id_answer_for_another_id_is_skipped_and_counted(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    """A job left the active list; its by-id read answers another job's row: that answer is
    skipped and counted, the job asked for is neither gone nor taken for the other one."""
    now = time.time()
    asked = sim.world.add_kizen_job(status="in_progress", pending=5, started_at=now - 3600)
    other = sim.world.add_kizen_job(status="in_progress", pending=7, started_at=now - 3600)
    client = await exporter(fp=False)
    await scrape(client)
    asked.status, asked.pending, asked.completed_at = "completed", 0, now
    wrong = json.dumps({**other.to_json(), "status": "completed"}).encode()
    sim.sim.set_fault("kizen", Fault(status=200, body=wrong, endpoints=frozenset({"detail"})))
    s = await scrape(client)
    assert one(s, "bulk_up", **KZ) == 1
    assert one(s, "bulk_rows_skipped_total", **KZ, endpoint="detail", reason="bad_field") == 1
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="running") == 2
    assert one(s, "bulk_jobs_finished_total", **KZ, action=UPLOAD, phase="completed") == 0
