"""Reading every page: Kizen's page-number pagination, FirstPromoter's possible pagination."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from exporter.simulator.app import Simulator
from tests.conftest import ExporterFactory, SimHandle
from tests.helpers import one, parse_samples, select

KZ = {"platform": "kizen", "source": "kz"}
FP = {"platform": "firstpromoter", "source": "fp"}


def kizen_jobs(sim: SimHandle, n: int) -> None:
    now = time.time()
    for i in range(n):
        sim.world.add_kizen_job(
            status="completed", pending=0, success=i, started_at=now - 1000, completed_at=now - 900
        )


async def test_kizen_reads_every_page(sim: SimHandle, exporter: ExporterFactory) -> None:
    kizen_jobs(sim, 95)
    client = await exporter(fp=False, kizen_extra="    page_size: 10\n")
    s = parse_samples(await (await client.get("/metrics")).text())
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

    from aiohttp.test_utils import TestServer

    app = sim.sim.app()
    app.middlewares.append(meter)
    server = TestServer(app)
    await server.start_server()
    try:
        url = str(server.make_url("/kizen"))
        from tests.helpers import source_yaml

        client = await exporter(
            source_yaml(url, None, kizen_extra="    page_size: 10\n    max_concurrency: 3\n")
        )
        s = parse_samples(await (await client.get("/metrics")).text())
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
    s = parse_samples(await (await client.get("/metrics")).text())
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
        import json

        assert response.body is not None
        body = json.loads(response.body)  # type: ignore[arg-type]
        body["next"] = str(request.url.with_query({"page": "1", "page_size": "100"}))
        return web.json_response(body)

    Simulator.kizen_list = looping  # type: ignore[method-assign]
    try:
        # The running app holds the original handler; serve a new one built after the patch.
        from aiohttp.test_utils import TestServer

        server = TestServer(sim.sim.app())
        await server.start_server()
        from tests.helpers import source_yaml

        client = await exporter(source_yaml(str(server.make_url("/kizen")), None))
        s = parse_samples(await (await client.get("/metrics")).text())
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
    s = parse_samples(await (await client.get("/metrics")).text())
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
    s = parse_samples(await (await client.get("/metrics")).text())
    assert one(s, "bulk_jobs", **FP, action="promoters/accept", phase="completed") == 250
    assert sim.count("firstpromoter", "list") == 3  # 100 + 100 + 50 (short)


async def test_firstpromoter_unpaginated_list_costs_one_request(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    for _ in range(250):
        sim.world.add_fp_batch(status="completed", selected_total=10, processed=10)
    client = await exporter(kizen=False)
    s = parse_samples(await (await client.get("/metrics")).text())
    assert one(s, "bulk_jobs", **FP, action="promoters/accept", phase="completed") == 250
    # 250 rows for a 100-row page: the server ignores pagination, so no second request.
    assert sim.count("firstpromoter", "list") == 1


async def test_firstpromoter_repeated_page_stops(sim: SimHandle, exporter: ExporterFactory) -> None:
    for _ in range(100):
        sim.world.add_fp_batch(status="completed", selected_total=10, processed=10)
    client = await exporter(kizen=False)
    s = parse_samples(await (await client.get("/metrics")).text())
    assert one(s, "bulk_jobs", **FP, action="promoters/accept", phase="completed") == 100
    # Exactly a page's worth: page 2 comes back the same, and reading stops there.
    assert sim.count("firstpromoter", "list") == 2
