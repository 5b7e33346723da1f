"""The platforms' unpublished behaviour, the other way round: an account that answers
otherwise than the exporter's first guesses (docs/api.md) is still read right, or the
exporter sees it and says so once, on the client's `notices` and in one warning line.

The churn test of every world is in test_incremental.py; these are the users' scenarios."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import pytest

from exporter.logs import LogfmtFormatter
from exporter.redact import Redactor
from exporter.server import RUNTIME
from exporter.simulator import Behaviour, Credentials
from tests.conftest import Client, ExporterFactory, SimHandle
from tests.helpers import Samples, add_kizen_history, capture_logs, eventually, one, scrape, select

FP = {"platform": "firstpromoter", "source": "fp"}
KZ = {"platform": "kizen", "source": "kz"}
ACCEPT = "promoters/accept"
UPLOAD = "custom_object_upload"
FP_STATUSES = ["pending", "in_progress", "completed", "failed", "stopped"]


def notices(client: Client, source: str) -> dict[str, str]:
    assert client.app is not None
    return client.app[RUNTIME].sources[source].refresher.client.notices


def warnings_of(logs: io.StringIO, key: str) -> int:
    """Warning lines naming a detected behaviour (logfmt; capture_logs writes JSON too)."""
    return sum(
        1
        for line in logs.getvalue().splitlines()
        if line.startswith("ts=") and "level=warn" in line and f"behaviour={key}" in line
    )


def new_users_account(sim: SimHandle) -> list[int]:
    """The issue's account: 20 completed, 2 failed, 1 stopped and 4 active batches, whose
    unfiltered list and progress map answer only the batches in progress."""
    sim.sim.behaviour = Behaviour(fp_unfiltered="active")
    now = time.time()
    for status, n in (("completed", 20), ("failed", 2), ("stopped", 1)):
        for _ in range(n):
            sim.world.add_fp_batch(
                status=status,
                selected_total=10,
                processed=10 if status == "completed" else 4,
                failed=0 if status == "completed" else 2,
                created_at=now - 7200,
                updated_at=now - 7000,
            )
    return [
        sim.world.add_fp_batch(status="in_progress", selected_total=10, processed=i).id
        for i in range(4)
    ]


@pytest.mark.parametrize("incremental", [True, False])
async def test_an_account_whose_unfiltered_answers_hold_only_active_batches(
    sim: SimHandle, exporter: ExporterFactory, incremental: bool
) -> None:
    running = new_users_account(sim)
    client = await exporter(kizen=False, fp_extra=f"    incremental: {str(incremental).lower()}\n")
    s = await scrape(client)
    assert one(s, "bulk_up", **FP) == 1
    phases = {p: one(s, "bulk_jobs", **FP, action=ACCEPT, phase=p) for p in FP_PHASE_NAMES}
    assert phases == {"queued": 0, "running": 4, "completed": 20, "failed": 2, "cancelled": 1}
    assert select(s, "bulk_last_finished_timestamp_seconds", **FP, action=ACCEPT, phase="completed")
    # Every list and progress request named the statuses it wanted: all five.
    assert sim.sim.fp_queries
    for _, query in sim.sim.fp_queries:
        assert [v for k, v in query if k == "filters[status][]"] == FP_STATUSES

    # A running batch completes: it leaves the active answers, and is counted.
    batch = sim.world.fp[running[-1]]
    batch.status, batch.processed, batch.updated_at = "completed", 10, time.time()
    s = await scrape(client)
    assert one(s, "bulk_jobs_finished_total", **FP, action=ACCEPT, phase="completed") == 1
    assert one(s, "bulk_jobs", **FP, action=ACCEPT, phase="completed") == 21
    assert one(s, "bulk_jobs", **FP, action=ACCEPT, phase="running") == 3
    assert one(s, "bulk_job_duration_seconds_count", **FP, action=ACCEPT, phase="completed") == 1


FP_PHASE_NAMES = ("queued", "running", "completed", "failed", "cancelled")


@pytest.mark.parametrize("incremental", [True, False])
async def test_an_active_batch_missing_from_every_answer_is_read_by_id(
    sim: SimHandle, exporter: ExporterFactory, incremental: bool
) -> None:
    """A batch that moves to a status no filter names is in no answer: it is read by id and
    shown (phase unknown), through later full reads too; one the platform no longer knows
    (404) is forgotten."""
    moved = sim.world.add_fp_batch(status="in_progress", selected_total=10, processed=2)
    deleted = sim.world.add_fp_batch(status="in_progress", selected_total=10, processed=2)
    client = await exporter(
        kizen=False,
        defaults="  full_sync_interval: 1s\n",
        fp_extra=f"    incremental: {str(incremental).lower()}\n",
    )
    s = await scrape(client)
    assert one(s, "bulk_jobs", **FP, action=ACCEPT, phase="running") == 2
    moved.status = "paused"
    del sim.world.fp[deleted.id]
    sim.sim.requests.clear()
    s = await scrape(client)
    assert sim.count("firstpromoter", "detail") == 2
    assert one(s, "bulk_jobs", **FP, action=ACCEPT, phase="unknown") == 1
    assert one(s, "bulk_jobs", **FP, action=ACCEPT, phase="running") == 0
    info = select(s, "bulk_job_info", **FP, job_id=str(moved.id))
    assert [dict(k)["status"] for k in info] == ["paused"]
    if not incremental:
        # Every scrape is a full read: the paused batch is read by id each time.
        sim.sim.requests.clear()
        s = await scrape(client)
        assert sim.count("firstpromoter", "detail") == 1
        assert one(s, "bulk_jobs", **FP, action=ACCEPT, phase="unknown") == 1
        assert not select(s, "bulk_job_info", **FP, job_id=str(deleted.id))
        return
    # A full read (due after 1s) lists neither; the paused batch is read by id again.
    assert client.app is not None
    refresher = client.app[RUNTIME].sources["fp"].refresher
    before = refresher.state.last_full

    async def full_read_taken_in() -> Samples | None:
        s = await scrape(client)
        last_full = refresher.state.last_full
        return s if last_full is not None and before is not None and last_full > before else None

    await eventually(full_read_taken_in, "a full read taken in", interval=0.25)
    # The paused batch was read by id during that full read: still there.
    s = await scrape(client)
    assert one(s, "bulk_jobs", **FP, action=ACCEPT, phase="unknown") == 1
    assert not select(s, "bulk_job_info", **FP, job_id=str(deleted.id))


async def test_a_batch_read_by_id_in_a_status_the_source_does_not_ask_for_leaves(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    """With `statuses: [pending, in_progress]` a batch that completes leaves the source, as a
    full read would leave it out: it is not counted as a job of the source any more."""
    batch = sim.world.add_fp_batch(status="in_progress", selected_total=10, processed=2)
    client = await exporter(kizen=False, fp_extra="    statuses: [pending, in_progress]\n")
    await scrape(client)
    batch.status, batch.processed = "completed", 10
    s = await scrape(client)
    assert sim.count("firstpromoter", "detail") == 1
    assert sum(select(s, "bulk_jobs", **FP).values()) == 0
    assert sum(select(s, "bulk_jobs_finished_total", **FP).values()) == 0
    for _, query in sim.sim.fp_queries:
        statuses = [v for k, v in query if k == "filters[status][]"]
        assert statuses == ["pending", "in_progress"]


async def test_kizen_ignoring_started_after_is_seen_and_steady_scrapes_stay_cheap(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    sim.sim.behaviour = Behaviour(kizen_started_after="ignored")
    add_kizen_history(sim.world, 2000)
    # Started an hour ago: when it finishes, only a read by id finds it.
    running = sim.world.add_kizen_job(
        status="in_progress", pending=10, started_at=time.time() - 3600
    )
    with capture_logs() as logs:
        client = await exporter(fp=False, kizen_extra="    page_size: 100\n")
        await scrape(client)  # the baseline: a full read of 21 pages
        assert sim.count("kizen", "list") == 21
        sim.sim.requests.clear()
        await scrape(client)
        # The finished read's page 1 holds jobs started long before started_after: seen,
        # and no further page of that read is asked for.
        assert "started_after_ignored" in notices(client, "kz")
        assert sim.count("kizen") == 2
        for _ in range(3):
            sim.sim.requests.clear()
            sim.sim.kizen_list_queries.clear()
            s = await scrape(client)
            # The active jobs, and the newest page of finished ones: no started_after.
            assert sim.count("kizen") == 2
            assert all("started_after" not in q for q in sim.sim.kizen_list_queries)
        # A job born and finished between scrapes is still counted; one that was running
        # and finished, too (read by id).
        now = time.time()
        sim.world.add_kizen_job(status="failed", pending=0, success=1, failed=2, started_at=now)
        running.status, running.pending, running.success = "completed", 0, 10
        running.completed_at = now
        sim.sim.requests.clear()
        s = await scrape(client)
        assert sim.count("kizen") == 3
    assert one(s, "bulk_jobs_finished_total", **KZ, action=UPLOAD, phase="failed") == 1
    assert one(s, "bulk_jobs_finished_total", **KZ, action=UPLOAD, phase="completed") == 1
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="completed") == 2001
    assert warnings_of(logs, "started_after_ignored") == 1
    # The debug trace of the source says it too, in the same words.
    response = await client.get("/probe?source=kz&debug=true")
    assert response.status == 200
    trace = await response.text()
    sentence = notices(client, "kz")["started_after_ignored"]
    assert f"  started_after_ignored: {sentence}" in trace


async def test_the_default_world_raises_no_notice(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    add_kizen_history(sim.world, 300)
    sim.world.add_fp_batch(status="completed", selected_total=10, processed=8, failed=2)
    # A finished batch whose progress number was left at 0 is no sign of fractions.
    sim.world.add_fp_batch(
        status="completed", selected_total=10, processed=10
    ).progress_override = 0
    client = await exporter(kizen_extra="    page_size: 100\n")
    for _ in range(3):
        await scrape(client)
    assert sim.count("kizen", "list") == 3 + 2 * 2
    assert notices(client, "kz") == {}
    assert notices(client, "fp") == {}


# World -> (simulator set-up, the notice key it raises).
KIZEN_WORLDS = {
    "completed-succeeded": (
        Behaviour(kizen_completed="succeeded"),
        None,
        "completed_means_succeeded",
    ),
    "next-missing": (Behaviour(kizen_next="missing"), None, "next_missing"),
    "count-missing": (Behaviour(kizen_count="missing"), None, "count_missing"),
    "page-cap-20": (Behaviour(), 20, "page_size_capped"),
}


@pytest.mark.parametrize("name", list(KIZEN_WORLDS))
async def test_each_kizen_world_is_read_right_and_said_once(
    sim: SimHandle, exporter: ExporterFactory, name: str
) -> None:
    behaviour, cap, key = KIZEN_WORLDS[name]
    sim.sim.behaviour = behaviour
    if cap is not None:
        sim.sim.kizen_max_page_size = cap
    add_kizen_history(sim.world, 95)
    now = time.time()
    for _ in range(3):
        sim.world.add_kizen_job(
            status="cancelled", pending=5, started_at=now - 9000, completed_at=now - 8000
        )
    running = [
        sim.world.add_kizen_job(status="in_progress", pending=10, started_at=now) for _ in range(45)
    ]
    with capture_logs() as logs:
        client = await exporter(fp=False, kizen_extra="    page_size: 50\n")
        s = await scrape(client)
        assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="completed") == 95
        assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="cancelled") == 3
        assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="running") == 45
        running[0].status, running[0].completed_at = "failed", time.time()
        running[1].status, running[1].pending, running[1].success = "completed", 0, 10
        running[1].completed_at = time.time()
        for _ in range(3):
            s = await scrape(client)
    assert one(s, "bulk_up", **KZ) == 1
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="running") == 43
    assert one(s, "bulk_jobs_finished_total", **KZ, action=UPLOAD, phase="failed") == 1
    assert one(s, "bulk_jobs_finished_total", **KZ, action=UPLOAD, phase="completed") == 1
    assert one(s, "bulk_items_processed_total", **KZ, action=UPLOAD, result="succeeded") == 10
    assert key in notices(client, "kz")
    assert warnings_of(logs, key) == 1


async def test_firstpromoter_processed_count_including_failed_is_seen(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    sim.sim.behaviour = Behaviour(fp_processed="includes-failed")
    sim.world.add_fp_batch(status="completed", selected_total=10, processed=8, failed=2)
    batch = sim.world.add_fp_batch(status="in_progress", selected_total=100, processed=10, failed=5)
    with capture_logs() as logs:
        client = await exporter(kizen=False)
        s = await scrape(client)
        assert one(s, "bulk_pending_items", **FP, action=ACCEPT) == 85
        batch.processed, batch.failed = 30, 6
        for _ in range(2):
            s = await scrape(client)
    assert one(s, "bulk_items_processed_total", **FP, action=ACCEPT, result="succeeded") == 20
    assert one(s, "bulk_items_processed_total", **FP, action=ACCEPT, result="failed") == 1
    assert one(s, "bulk_pending_items", **FP, action=ACCEPT) == 64
    assert "processed_includes_failed" in notices(client, "fp")
    assert warnings_of(logs, "processed_includes_failed") == 1


@pytest.mark.parametrize(
    ("unit", "key"), [("fraction", "progress_is_fraction"), ("items", "progress_not_percent")]
)
async def test_firstpromoter_progress_numbers_that_are_not_percentages_are_seen(
    sim: SimHandle, exporter: ExporterFactory, unit: Literal["fraction", "items"], key: str
) -> None:
    sim.sim.behaviour = Behaviour(fp_progress=unit)
    sim.world.add_fp_batch(status="completed", selected_total=400, processed=390, failed=10)
    batch = sim.world.add_fp_batch(status="in_progress", selected_total=1000, processed=250)
    with capture_logs() as logs:
        client = await exporter(kizen=False)
        for _ in range(2):
            s = await scrape(client)
    assert one(s, "bulk_job_progress_ratio", **FP, job_id=str(batch.id)) == 0.25
    assert key in notices(client, "fp")
    assert warnings_of(logs, key) == 1


@contextmanager
def redacted_logs(secrets: list[str]) -> Iterator[io.StringIO]:
    """Warning lines as the running exporter writes them: logfmt through its redactor."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter(Redactor(secrets)))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


async def test_a_status_nobody_mapped_is_warned_of_once_per_source(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    creds = Credentials()
    long_status = "x" * 300
    leaky = f"paused-{creds.kizen_api_key}"
    for status in ("archived", "archived", long_status, leaky):
        sim.world.add_kizen_job(status=status, pending=1, started_at=time.time())
    # FirstPromoter is asked for the five statuses it publishes: a batch in another status is
    # seen when it moves there from one of them (it is then read by id).
    batch = sim.world.add_fp_batch(status="in_progress", selected_total=3)
    with redacted_logs([creds.kizen_api_key, creds.fp_api_key]) as logs:
        client = await exporter()
        await scrape(client)
        batch.status = "archived"
        for _ in range(3):
            s = await scrape(client)
    assert one(s, "bulk_jobs", **FP, action=ACCEPT, phase="unknown") == 1
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="unknown") == 4
    lines = [line for line in logs.getvalue().splitlines() if "no phase maps" in line]
    assert len(lines) == 4  # kz: archived, the long one, the leaky one; fp: archived
    assert sum("source=kz" in line and "status=archived" in line for line in lines) == 1
    assert sum("source=fp" in line and "status=archived" in line for line in lines) == 1
    assert any("status=" + "x" * 199 + "…" in line for line in lines)  # cut like a label
    assert not any("x" * 200 in line for line in lines)
    assert any("status=paused-<secret>" in line for line in lines)
    assert creds.kizen_api_key not in logs.getvalue()
