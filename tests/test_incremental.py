"""Incremental refresh: steady scrapes cost the active jobs, not the history, and the numbers
stay exactly what a full read gives."""

from __future__ import annotations

import random
import time

import pytest

from exporter.server import RUNTIME
from exporter.simulator import Behaviour
from tests.conftest import Client, ExporterFactory, SimHandle
from tests.helpers import (
    Samples,
    add_kizen_history,
    eventually,
    one,
    parse_samples,
    scrape,
    select,
)
from tests.reference import WorldReference, compared, differences


def history(sim: SimHandle, n: int = 50) -> None:
    now = time.time()
    add_kizen_history(sim.world, n)
    for _ in range(n):
        sim.world.add_fp_batch(
            status="completed",
            selected_total=5,
            processed=5,
            created_at=now - 9000,
            updated_at=now - 8000,
        )


async def test_steady_scrape_reads_only_active_jobs(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    history(sim)
    # Started an hour ago: when it finishes, the "started since the last read" query misses it.
    running = sim.world.add_kizen_job(
        status="in_progress", pending=10, started_at=time.time() - 3600
    )
    batch = sim.world.add_fp_batch(status="in_progress", selected_total=10)
    client = await exporter(kizen_extra="    page_size: 10\n")
    await scrape(client)  # the baseline: a full read
    assert sim.count("kizen", "list") == 6  # 51 jobs, 10 a page
    sim.sim.requests.clear()

    running.success, running.pending = 4, 6
    s = await scrape(client)
    # Kizen: active jobs + jobs that started since the last read and finished. FirstPromoter:
    # active batches + the progress map of every batch.
    assert sim.count("kizen") == 2
    assert sim.count("firstpromoter") == 2
    assert one(s, "bulk_jobs", source="kz", action="custom_object_upload", phase="completed") == 50
    assert one(s, "bulk_pending_items", source="kz", action="custom_object_upload") == 6
    assert (
        one(
            s,
            "bulk_items_processed_total",
            source="kz",
            action="custom_object_upload",
            result="succeeded",
        )
        == 4
    )

    # Jobs that finish between scrapes leave the active list and are read by id.
    sim.sim.requests.clear()
    running.status, running.pending, running.success = "completed", 0, 10
    running.completed_at = time.time()
    batch.status, batch.processed = "failed", 3
    s = await scrape(client)
    assert sim.count("kizen", "detail") == 1
    assert sim.count("firstpromoter", "detail") == 1
    assert (
        one(
            s,
            "bulk_jobs_finished_total",
            source="kz",
            action="custom_object_upload",
            phase="completed",
        )
        == 1
    )
    assert (
        one(s, "bulk_jobs_finished_total", source="fp", action="promoters/accept", phase="failed")
        == 1
    )
    assert one(s, "bulk_pending_items", source="kz", action="custom_object_upload") == 0


async def test_jobs_born_and_finished_between_scrapes_are_caught(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    history(sim, 5)
    client = await exporter()
    await scrape(client)
    now = time.time()
    sim.world.add_kizen_job(status="failed", pending=0, success=2, failed=3, started_at=now)
    sim.world.add_fp_batch(
        status="completed", selected_total=7, processed=6, failed=1, created_at=now
    )
    sim.sim.requests.clear()
    s = await scrape(client)
    assert (
        one(
            s,
            "bulk_jobs_finished_total",
            source="kz",
            action="custom_object_upload",
            phase="failed",
        )
        == 1
    )
    assert (
        one(
            s,
            "bulk_items_processed_total",
            source="kz",
            action="custom_object_upload",
            result="failed",
        )
        == 3
    )
    # FirstPromoter: a new id in the progress map is read by id.
    assert sim.count("firstpromoter", "detail") == 1
    assert (
        one(
            s, "bulk_jobs_finished_total", source="fp", action="promoters/accept", phase="completed"
        )
        == 1
    )
    assert (
        one(
            s,
            "bulk_items_processed_total",
            source="fp",
            action="promoters/accept",
            result="succeeded",
        )
        == 6
    )
    assert sim.count("kizen", "detail") == 0


async def test_vanished_jobs_are_forgotten_on_evidence_only(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    """An active job read by id that answers 404 is gone at once; a finished batch deleted
    from the account (no longer in the progress map, which is no evidence) is gone when the
    next full read's complete list lacks it."""
    history(sim, 3)
    victim = sim.world.add_fp_batch(status="completed", selected_total=1, processed=1)
    active = sim.world.add_kizen_job(status="in_progress", pending=3, started_at=time.time())
    client = await exporter(defaults="  full_sync_interval: 2s\n")
    await scrape(client)
    del sim.world.fp[victim.id]  # no longer in the progress map
    sim.world.kizen.remove(active)  # an active job the platform no longer knows: 404 by id
    s = await scrape(client)
    assert one(s, "bulk_jobs", source="fp", action="promoters/accept", phase="completed") == 4
    assert one(s, "bulk_jobs", source="kz", action="custom_object_upload", phase="running") == 0

    async def forgotten() -> bool:
        s = await scrape(client)
        fp = one(s, "bulk_jobs", source="fp", action="promoters/accept", phase="completed")
        return fp == 3

    await eventually(forgotten, "the deleted batch forgotten by a full read", interval=0.25)


async def test_full_sync_interval_rereads_everything(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    history(sim, 30)
    client = await exporter(
        defaults="  full_sync_interval: 1s\n", kizen_extra="    page_size: 10\n"
    )
    await scrape(client)
    sim.sim.requests.clear()
    await scrape(client)
    assert sim.count("kizen") == 2  # steady
    sim.sim.kizen_list_queries.clear()

    async def full_read_began() -> bool:
        # A full read asks for pages without `completed`; incremental reads always filter.
        assert one(await scrape(client), "bulk_up", source="kz") == 1
        return any("completed" not in q for q in sim.sim.kizen_list_queries)

    # A scrape every quarter second: enough to notice, few enough for the rate limit.
    await eventually(
        full_read_began, "a full read once full_sync_interval (1 s) had passed", interval=0.25
    )
    # The full read's three pages are all read.
    await eventually(
        lambda: sum("completed" not in q for q in sim.sim.kizen_list_queries) >= 3,
        "the full read's three pages",
    )


async def test_incremental_false_reads_everything_every_time(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    history(sim, 30)
    client = await exporter(
        kizen_extra="    page_size: 10\n    incremental: false\n",
        fp_extra="    incremental: false\n",
    )
    await scrape(client)
    sim.sim.requests.clear()
    await scrape(client)
    assert sim.count("kizen", "list") == 3
    assert sim.count("firstpromoter") == 2


async def test_a_slow_first_read_serves_the_active_jobs_at_once(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    history(sim, 100)
    running = [sim.world.add_kizen_job(status="in_progress", pending=7) for _ in range(3)]
    sim.sim.latency["kizen"] = 0.3
    # 11 pages at 0.3s, one at a time: 3.3s, more than the source's 2s timeout.
    client = await exporter(
        defaults="  timeout: 2s\n", kizen_extra="    page_size: 10\n    max_concurrency: 1\n"
    )
    started = time.monotonic()
    s = parse_samples(await (await client.get("/metrics")).text())
    first_scrape = time.monotonic() - started
    # The first scrape serves the active jobs, read on their own, as the baseline.
    assert one(s, "bulk_up", source="kz") == 1
    assert one(s, "bulk_history_loaded", source="kz") == 0
    assert one(s, "bulk_jobs", source="kz", action="custom_object_upload", phase="running") == 3
    assert one(s, "bulk_jobs", source="kz", action="custom_object_upload", phase="completed") == 0
    assert {dict(k)["job_id"] for k in select(s, "bulk_job_info", source="kz")} >= {
        j.id for j in running
    }
    assert first_scrape < 2.0
    # The full read carries on; a later scrape takes it in: history, never counted.

    async def history_loaded() -> Samples | None:
        s = await scrape(client)
        return s if one(s, "bulk_history_loaded", source="kz") == 1 else None

    s = await eventually(
        history_loaded, "bulk_history_loaded 1 after the background full read", interval=0.25
    )
    assert one(s, "bulk_up", source="kz") == 1
    assert one(s, "bulk_jobs", source="kz", action="custom_object_upload", phase="completed") == 100
    assert sum(select(s, "bulk_jobs_finished_total", source="kz").values()) == 0
    assert sum(select(s, "bulk_items_processed_total", source="kz").values()) == 0
    # The full read's pages were read once: nothing was thrown away and started again.
    assert sim.count("kizen", "list") <= 11 + 2 * 20


def last_errors(client: Client) -> list[object]:
    """Diagnostics for a failed churn round: each source's last error, requests and tokens."""
    assert client.app is not None
    return [
        (r.last.error if r.last else None, dict(r.upstream.requests), r.upstream.bucket.available)
        for r in client.app[RUNTIME].sources.values()
    ]


# Every world the simulator can play (docs/api.md: each guess, and the other way round).
WORLDS: dict[str, tuple[Behaviour, int | None]] = {
    "default": (Behaviour(), None),
    "fp-unfiltered-active": (Behaviour(fp_unfiltered="active"), None),
    "fp-processed-includes-failed": (Behaviour(fp_processed="includes-failed"), None),
    "fp-progress-fraction": (Behaviour(fp_progress="fraction"), None),
    "kizen-completed-succeeded": (Behaviour(kizen_completed="succeeded"), None),
    "kizen-started-after-ignored": (Behaviour(kizen_started_after="ignored"), None),
    "kizen-page-cap-7": (Behaviour(), 7),
    "kizen-next-missing": (Behaviour(kizen_next="missing"), None),
    "kizen-count-missing": (Behaviour(kizen_count="missing"), None),
    "fp-progress-map-active": (Behaviour(fp_progress_map="active"), None),
    "fp-progress-entries-garbled": (Behaviour(fp_progress_entries="garbled"), None),
    "kizen-detail-id-upper": (Behaviour(kizen_detail_id="upper"), None),
    "every-other-way": (
        Behaviour(
            fp_unfiltered="active",
            fp_processed="includes-failed",
            fp_progress="items",
            fp_progress_map="active",
            fp_progress_entries="garbled",
            kizen_completed="succeeded",
            kizen_started_after="ignored",
            kizen_next="missing",
            kizen_count="missing",
            kizen_detail_id="upper",
        ),
        7,
    ),
}
# Worlds where a batch that starts and finishes between two scrapes is found only by the next
# full read (the progress map does not list it): there the churn takes one tick a scrape, so
# that every batch is seen unfinished once (docs/api.md says so of these worlds).
ONE_TICK = ("fp-progress-map-active", "every-other-way")


@pytest.mark.parametrize("world_name", list(WORLDS))
async def test_numbers_match_the_simulators_truth_under_churn(
    sim: SimHandle, exporter: ExporterFactory, world_name: str
) -> None:
    """Hundreds of random transitions, in each world the simulator can play; after every
    round the aggregates, counters, histograms and last finishes of an incremental exporter
    and of one that reads everything every time both equal the reference computed from the
    simulator's own jobs."""
    behaviour, cap = WORLDS[world_name]
    sim.sim.behaviour = behaviour
    if cap is not None:
        sim.sim.kizen_max_page_size = cap
    world = sim.world
    world.populate(finished=25, running=6)
    t = world.tuning
    t.new_job_chance, t.start_chance, t.fail_chance, t.cancel_chance = 0.5, 0.5, 0.05, 0.04
    rng = random.Random(11)
    # The full reader reads every page on every scrape: lift the rate limit for both.
    fast = "    rate_limit: 1000/s\n"
    # Only aggregates, counters and histograms are compared: no per-job series.
    incremental_cfg = {
        "defaults": "  max_job_series: 0\n",
        "kizen_extra": "    page_size: 15\n" + fast,
        "fp_extra": fast,
    }
    full_cfg = {
        "defaults": "  max_job_series: 0\n",
        "kizen_extra": "    page_size: 15\n    incremental: false\n" + fast,
        "fp_extra": "    incremental: false\n" + fast,
    }

    async def start_pair() -> tuple[Client, Client, WorldReference, WorldReference]:
        reference, lingering = WorldReference(world), WorldReference(world, lingering=True)
        inc, full = await exporter(**incremental_cfg), await exporter(**full_cfg)
        reference.observe()
        lingering.observe()
        for client, expected in ((inc, lingering), (full, reference)):
            assert reference_differences(await scrape(client), expected) == {}
        return inc, full, reference, lingering

    inc, full, reference, lingering = await start_pair()
    transitions = 0
    # The default world gets the long run, the one where every guess goes the other way (whose
    # full reads go page after page, the slowest) a longer one than a world with one
    # alternative, which gets a shorter one (it still sees jobs start, finish, fail,
    # be cancelled and vanish, rows shift between pages, and a restart).
    rounds = {"default": 70, "every-other-way": 40, "fp-progress-map-active": 50}.get(
        world_name, 30
    )
    for round_number in range(rounds):
        if round_number == rounds // 2:  # a restart in the middle: fresh baselines for all
            await inc.close()
            await full.close()
            inc, full, reference, lingering = await start_pair()
        for _ in range(1 if world_name in ONE_TICK else rng.randint(1, 3)):
            before = {j.id: (j.status, j.success, j.failed) for j in world.kizen}
            world.step()
            transitions += sum(
                1 for j in world.kizen if before.get(j.id) != (j.status, j.success, j.failed)
            )
        if rng.random() < 0.1 and len(world.fp) > 5:
            done = [b for b in world.fp.values() if not b.active]
            if done:
                del world.fp[rng.choice(done).id]
        # Rows shift between pages during the incremental exporter's read.
        sim.sim.kizen_insert_per_page = 1 if rng.random() < 0.3 else 0
        await scrape(inc)
        sim.sim.kizen_insert_per_page = 0
        reference.observe()
        lingering.observe()
        for name, client, expected in (("full", full, reference), ("incremental", inc, lingering)):
            s = await scrape(client)
            assert set(select(s, "bulk_up").values()) == {1}, last_errors(client)
            wrong = reference_differences(s, expected)
            assert wrong == {}, f"round {round_number}, {name}: {wrong}"
    assert transitions > 2 * rounds
    # The churn really exercised the counters and the histograms.
    truth = reference.samples()
    assert sum(v for k, v in truth.items() if k[0] == "bulk_jobs_finished_total") > 10
    assert sum(v for k, v in truth.items() if k[0] == "bulk_job_queue_wait_seconds_count") > 5


def reference_differences(s: Samples, reference: WorldReference) -> dict[object, object]:
    return dict(differences(compared(s), reference.samples()))
