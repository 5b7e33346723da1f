"""Reading every page, over real HTTP against the simulator.

Kizen's page-number paging: every page read, at most `max_concurrency` at a time; rows shifting
between pages, a list growing mid-read, a `next` link that loops; the adaptive page size (a
server that caps the size silently, one that refuses a large size with a 400, rows shifting
while a capped read runs and while pages are answered out of order, a page holding more rows
than were asked for). FirstPromoter's list, documented as unpaginated, read right either way."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from exporter.simulator.app import Simulator
from tests.conftest import ExporterFactory, SimHandle
from tests.helpers import (
    Samples,
    capture_logs,
    one,
    scrape,
    select,
    source_yaml,
)

KZ = {"platform": "kizen", "source": "kz"}
FP = {"platform": "firstpromoter", "source": "fp"}
UPLOAD = "custom_object_upload"
# Every job's series, so that the emitted ids show which rows were read.
ALL_SERIES = "  max_job_series: 5000\n"


def history(sim: SimHandle, n: int) -> set[str]:
    now = time.time()
    return {
        sim.world.add_kizen_job(
            status="completed",
            pending=0,
            success=1 + i % 9,
            # Finished within the hour: every job keeps its series, whose ids show what was read.
            started_at=now - 2000 - i,
            completed_at=now - 1000 - i,
            at_end=True,
        ).id
        for i in range(n)
    }


def sizes(sim: SimHandle) -> list[str]:
    return [q.get("page_size", "") for q in sim.sim.kizen_list_queries]


def emitted(s: Samples) -> list[str]:
    return [dict(k)["job_id"] for k in select(s, "bulk_job_info", **KZ)]


async def test_a_capped_server_is_read_once_at_its_cap(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    ids = history(sim, 950)
    sim.sim.kizen_max_page_size = 100  # asks 1000 (the default), gets 100 with a next link
    client = await exporter(fp=False, defaults=ALL_SERIES)
    s = await scrape(client)
    assert one(s, "bulk_up", **KZ) == 1
    assert one(s, "bulk_history_loaded", **KZ) == 1
    got = emitted(s)
    assert sorted(got) == sorted(ids)  # every row, each once
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="completed") == 950
    # Page 1 at 1000, then the other pages at the size the server really serves.
    assert sim.count("kizen", "list") == math.ceil(950 / 100)
    assert sizes(sim) == ["1000"] + ["100"] * 9
    assert [q["page"] for q in sim.sim.kizen_list_queries] == [str(p) for p in range(1, 11)]


async def test_a_cap_that_does_not_divide_the_list(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    ids = history(sim, 500)
    sim.sim.kizen_max_page_size = 70
    client = await exporter(fp=False, defaults=ALL_SERIES, kizen_extra="    page_size: 300\n")
    s = await scrape(client)
    assert sorted(emitted(s)) == sorted(ids)
    assert sim.count("kizen", "list") == math.ceil(500 / 70)
    assert sizes(sim) == ["300"] + ["70"] * 7


async def test_a_refused_size_falls_back_to_100_and_keeps_it(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    ids = history(sim, 250)
    running = sim.world.add_kizen_job(status="in_progress", pending=20, started_at=time.time())
    sim.sim.kizen_refuse_page_size_above = 100
    with capture_logs() as logs:
        client = await exporter(fp=False, defaults=ALL_SERIES)
        s = await scrape(client)
        assert one(s, "bulk_up", **KZ) == 1
        assert sorted(emitted(s)) == sorted(ids | {running.id})
        assert one(s, "bulk_api_requests_total", **KZ, endpoint="list", code="400") == 1
        assert sizes(sim) == ["1000", "100", "100", "100"]
        # Later reads ask 100 directly: no more refusals.
        sim.sim.kizen_list_queries.clear()
        running.success, running.pending = 5, 15
        for _ in range(3):
            s = await scrape(client)
            assert one(s, "bulk_up", **KZ) == 1
    assert set(sizes(sim)) == {"100"}
    assert one(s, "bulk_api_requests_total", **KZ, endpoint="list", code="400") == 1
    assert one(s, "bulk_items_processed_total", **KZ, action=UPLOAD, result="succeeded") == 5
    assert logs.getvalue().count('msg="page size refused') == 1


async def test_a_refusal_below_100_fails_the_source(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    history(sim, 30)
    sim.sim.kizen_refuse_page_size_above = 10
    client = await exporter(fp=False)
    s = await scrape(client)
    assert one(s, "bulk_up", **KZ) == 0
    # 1000 refused, 100 refused: no size below 100 is guessed.
    assert sizes(sim) == ["1000", "100"]


async def test_rows_shifting_during_a_capped_read_are_neither_lost_nor_doubled(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    ids = history(sim, 500)
    sim.sim.kizen_max_page_size = 100
    sim.sim.kizen_insert_per_page = 3  # new jobs on top before each page after the first
    sim.sim.latency["kizen"] = 0.02
    client = await exporter(fp=False, defaults=ALL_SERIES)
    s = await scrape(client)
    assert one(s, "bulk_up", **KZ) == 1
    got = emitted(s)
    assert len(got) == len(set(got))
    assert ids <= set(got)  # every job that was there before the read
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="completed") == 500
    # 3 newcomers before each of pages 2-5 pushed 12 old rows past the 5 pages page 1
    # announced: the next link of the last page was followed for them.
    assert sim.count("kizen", "list") == 6
    sim.sim.kizen_insert_per_page = 0
    # The next scrape sees every newcomer once; nothing finished, nothing counted.
    s = await scrape(client)
    queued = sum(1 for j in sim.world.kizen if j.status == "queued")
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="queued") == queued
    assert sum(select(s, "bulk_jobs_finished_total", **KZ).values()) == 0


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def test_a_page_with_more_rows_than_asked_fails_the_source(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    history(sim, 300)

    @web.middleware
    async def overserve(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The server answers as if 50 more rows had been asked for.
        asked = int(request.query.get("page_size", "100"))
        url = request.rel_url.update_query(page_size=str(asked + 50))
        return await handler(request.clone(rel_url=url))

    app = sim.sim.app()
    app.middlewares.append(overserve)
    server = TestServer(app)
    await server.start_server()
    try:
        text = source_yaml(str(server.make_url("/kizen")), None, kizen_extra="    page_size: 100\n")
        client = await exporter(text)
        s = await scrape(client)
    finally:
        await server.close()
    assert one(s, "bulk_up", **KZ) == 0
    assert not select(s, "bulk_jobs", **KZ)
    assert client.app is not None
    from exporter.server import RUNTIME

    last = client.app[RUNTIME].sources["kz"].last
    assert last is not None
    assert last.error is not None
    assert "150 rows where 100 were asked for" in last.error


async def test_rows_shifting_while_pages_are_served_out_of_order_are_not_lost(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    """A busy server can answer concurrent pages in any order; rows arriving meanwhile then
    push some rows past a page already read before the page that should have held them is
    served. Every page carries the list's `count`, which tells how far rows moved: the rows
    no page held are read again."""
    ids = history(sim, 500)
    sim.sim.kizen_max_page_size = 100
    sim.sim.kizen_insert_per_page = 3

    @web.middleware
    async def reverse(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Later pages are answered first (the inserts happen as each is answered).
        page = int(request.query.get("page", "1"))
        await asyncio.sleep(0.03 * max(0, 10 - page))
        return await handler(request)

    app = sim.sim.app()
    app.middlewares.append(reverse)
    server = TestServer(app)
    await server.start_server()
    try:
        text = source_yaml(str(server.make_url("/kizen")), None, defaults=ALL_SERIES)
        client = await exporter(text)
        s = await scrape(client)
    finally:
        await server.close()
    assert one(s, "bulk_up", **KZ) == 1
    got = emitted(s)
    assert len(got) == len(set(got))
    assert ids <= set(got), f"{len(ids - set(got))} rows lost"
    assert one(s, "bulk_jobs", **KZ, action=UPLOAD, phase="completed") == 500


# --- every page, concurrently, once ------------------------------------------------------------


def kizen_jobs(sim: SimHandle, n: int) -> None:
    now = time.time()
    for i in range(n):
        sim.world.add_kizen_job(
            status="completed", pending=0, success=i, started_at=now - 1000, completed_at=now - 900
        )


async def test_kizen_reads_every_page(sim: SimHandle, exporter: ExporterFactory) -> None:
    kizen_jobs(sim, 95)
    client = await exporter(fp=False, kizen_extra="    page_size: 10\n")
    s = await scrape(client)
    assert one(s, "bulk_jobs", **KZ, action="custom_object_upload", phase="completed") == 95
    assert len(select(s, "bulk_job_info", **KZ)) == 95  # finished within the retention
    assert one(s, "bulk_api_requests_total", **KZ, endpoint="list", code="200") == 10
    assert sim.count("kizen", "list") == 10


async def test_kizen_concurrency_is_capped(exporter: ExporterFactory, sim: SimHandle) -> None:
    kizen_jobs(sim, 95)
    sim.sim.latency["kizen"] = 0.05
    peak = 0
    in_flight = 0

    @web.middleware
    async def meter(request: web.Request, handler: Any) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            in_flight -= 1

    app = sim.sim.app()
    app.middlewares.append(meter)
    server = TestServer(app)
    await server.start_server()
    try:
        url = str(server.make_url("/kizen"))
        client = await exporter(
            source_yaml(url, None, kizen_extra="    page_size: 10\n    max_concurrency: 3\n")
        )
        s = await scrape(client)
    finally:
        await server.close()
    assert one(s, "bulk_jobs", **KZ, action="custom_object_upload", phase="completed") == 95
    # Pages after the first went out concurrently, never more than max_concurrency at once
    # (timings are not asserted: shared machines are noisy; the benchmark measures them).
    assert peak == 3


async def test_kizen_rows_shifting_between_pages_are_deduplicated(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    kizen_jobs(sim, 30)
    before = {j.id for j in sim.world.kizen}
    sim.sim.kizen_insert_per_page = 2  # two new jobs on top before each page after the first
    client = await exporter(fp=False, kizen_extra="    page_size: 10\n    max_concurrency: 1\n")
    s = await scrape(client)
    emitted = {dict(k)["job_id"] for k in select(s, "bulk_job_info", **KZ)}
    # Every job that existed before the read is seen exactly once, despite the shifting.
    assert before <= emitted
    completed = one(s, "bulk_jobs", **KZ, action="custom_object_upload", phase="completed")
    assert completed == 30
    assert one(s, "bulk_up", **KZ) == 1


async def test_kizen_bad_next_link_does_not_loop(sim: SimHandle, exporter: ExporterFactory) -> None:
    kizen_jobs(sim, 5)
    original = Simulator.kizen_list

    async def looping(self: Simulator, request: web.Request) -> web.Response:
        response = await original(self, request)
        assert response.body is not None
        body = json.loads(response.body)  # type: ignore[arg-type]
        body["next"] = str(request.url.with_query({"page": "1", "page_size": "100"}))
        return web.json_response(body)

    Simulator.kizen_list = looping  # type: ignore[method-assign]
    try:
        # The running app holds the original handler; serve a new one built after the patch.
        server = TestServer(sim.sim.app())
        await server.start_server()
        client = await exporter(source_yaml(str(server.make_url("/kizen")), None))
        s = await scrape(client)
        await server.close()
    finally:
        Simulator.kizen_list = original  # type: ignore[method-assign]
    assert one(s, "bulk_up", **KZ) == 1
    assert one(s, "bulk_jobs", **KZ, action="custom_object_upload", phase="completed") == 5
    assert one(s, "bulk_api_requests_total", **KZ, endpoint="list", code="200") == 1


async def test_kizen_count_growing_mid_read_follows_next(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    kizen_jobs(sim, 20)
    sim.sim.kizen_insert_per_page = 5
    client = await exporter(fp=False, kizen_extra="    page_size: 10\n    max_concurrency: 1\n")
    s = await scrape(client)
    # Page 1 said 20 rows (2 pages); 5 more arrived before page 2, so page 2 links to page 3,
    # which holds the last old rows. All 20 old jobs are there.
    assert one(s, "bulk_jobs", **KZ, action="custom_object_upload", phase="completed") == 20
    assert sim.count("kizen", "list") == 3


async def test_firstpromoter_paginated_list_stops_on_short_page(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    for _ in range(250):
        sim.world.add_fp_batch(status="completed", selected_total=10, processed=10)
    sim.sim.fp_paginate = True
    client = await exporter(kizen=False)
    s = await scrape(client)
    assert one(s, "bulk_jobs", **FP, action="promoters/accept", phase="completed") == 250
    assert sim.count("firstpromoter", "list") == 3  # 100 + 100 + 50 (short)


async def test_firstpromoter_unpaginated_list_costs_one_request(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    for _ in range(250):
        sim.world.add_fp_batch(status="completed", selected_total=10, processed=10)
    client = await exporter(kizen=False)
    s = await scrape(client)
    assert one(s, "bulk_jobs", **FP, action="promoters/accept", phase="completed") == 250
    # 250 rows for a 100-row page: the server ignores pagination, so no second request.
    assert sim.count("firstpromoter", "list") == 1


async def test_firstpromoter_repeated_page_stops(sim: SimHandle, exporter: ExporterFactory) -> None:
    for _ in range(100):
        sim.world.add_fp_batch(status="completed", selected_total=10, processed=10)
    client = await exporter(kizen=False)
    s = await scrape(client)
    assert one(s, "bulk_jobs", **FP, action="promoters/accept", phase="completed") == 100
    # Exactly a page's worth: page 2 comes back the same, and reading stops there.
    assert sim.count("firstpromoter", "list") == 2
