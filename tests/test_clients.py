"""The platform clients' by-id reads, through `read_changes`, against the simulator over HTTP."""

from __future__ import annotations

import asyncio
import gzip
import time

import pytest

from exporter.jobs import Phase
from exporter.platforms.base import Known
from exporter.platforms.firstpromoter import FirstPromoterSource
from exporter.platforms.kizen import KizenSource
from exporter.ratelimit import TokenBucket
from exporter.redact import Redactor
from exporter.simulator.app import Fault
from exporter.upstream import Budget, Upstream, UpstreamError
from tests.conftest import SimHandle
from tests.helpers import config_from, source_yaml


async def test_by_id_reads_for_both_platforms(sim: SimHandle) -> None:
    # Started long before the last read: not in the list of jobs finished since then.
    job = sim.world.add_kizen_job(
        status="failed", pending=1, success=2, failed=3, started_at=time.time() - 3600
    )
    batch = sim.world.add_fp_batch(status="stopped", selected_total=9, processed=4)
    config = config_from(source_yaml(sim.kizen_url, sim.fp_url))
    budget = Budget(asyncio.get_running_loop().time() + 5)
    for source in config.sources:
        upstream = Upstream(
            source.url,
            source.auth_headers(),
            TokenBucket(source.rate),
            2,
            source=source.name,
            max_body=config.settings(source).max_response_size,
            redact=Redactor(),
        )
        client = source.client(upstream, config.settings(source))
        try:
            if isinstance(source, KizenSource):
                # Both were active at the last read and are in neither list now.
                gone_id = "00000000-0000-4000-8000-000000000000"
                active = [job.id, gone_id]
                result = await client.read_changes(budget, Known(active, active, time.time()))
                found = result.jobs[job.id]
                assert (found.phase, found.succeeded, found.failed) == (Phase.FAILED, 2, 3)
            else:
                assert isinstance(source, FirstPromoterSource)
                # The progress map lists a batch never seen before.
                known = Known(active=(), ids=(), since=time.time())
                found = (await client.read_changes(budget, known)).jobs[str(batch.id)]
                assert (found.phase, found.succeeded, found.pending) == (Phase.CANCELLED, 4, 5)
                # Deleted between the progress map and the read by id.
                not_found = Fault(status=404, endpoints=frozenset({"detail"}), remaining=1)
                sim.sim.set_fault("firstpromoter", not_found)
                result = await client.read_changes(budget, known)
                gone_id = str(batch.id)
            assert result.gone == {gone_id}
            assert gone_id not in result.jobs
            assert upstream.requests[("detail", "200")] == 1
            assert upstream.requests[("detail", "404")] == 1
        finally:
            await upstream.close()


async def test_a_request_cancelled_from_outside_is_counted_as_timed_out(sim: SimHandle) -> None:
    """A refresh's backstop (or shutdown) can cancel a request in flight before the request's
    own deadline turns into a timeout: it was still a request made, with no answer."""
    sim.sim.latency["kizen"] = 30.0  # never answers within this test
    upstream = Upstream(
        sim.kizen_url,
        {},
        TokenBucket(config_from(source_yaml(sim.kizen_url, None)).sources[0].rate),
        2,
        source="kz",
        max_body=1024,
        redact=Redactor(),
    )
    try:
        budget = Budget(asyncio.get_running_loop().time() + 60)
        read = asyncio.create_task(
            upstream.get_json("list", "/api/bulk-action-progress", {}, budget)
        )
        async with asyncio.timeout(10):
            # The simulator counts requests but signals nothing: poll its counter.
            while sim.count("kizen") == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        assert upstream.requests == {("list", "timeout"): 1}
    finally:
        await upstream.close()


async def test_when_one_of_two_concurrent_reads_fails_the_other_is_cancelled(
    sim: SimHandle,
) -> None:
    """FirstPromoter reads its list and its progress map side by side: when the progress map
    fails (here: more batches than max_jobs), the list read still waiting for its answer is
    cancelled at once, not left sending requests until the deadline."""
    for _ in range(3):
        sim.world.add_fp_batch(status="completed", selected_total=5, processed=5)
    sim.sim.set_fault("firstpromoter", Fault(status=200, delay=30, endpoints=frozenset({"list"})))
    config = config_from(source_yaml(None, sim.fp_url, defaults="  max_jobs: 1\n"))
    (source,) = config.sources
    settings = config.settings(source)
    upstream = Upstream(
        source.url,
        source.auth_headers(),
        TokenBucket(source.rate),
        4,
        source=source.name,
        max_body=settings.max_response_size,
        redact=Redactor(),
    )
    client = source.client(upstream, settings)
    before = asyncio.all_tasks()
    try:
        with pytest.raises(UpstreamError, match="max_jobs"):
            await client.read_all(Budget(asyncio.get_running_loop().time() + 60))
        # The simulator serves in this loop too: only the exporter's own tasks count.
        left = [
            t
            for t in asyncio.all_tasks() - before
            if "/exporter/platforms/" in t.get_coro().cr_code.co_filename  # type: ignore[union-attr]
        ]
        assert left == []
        assert upstream.requests[("list", "timeout")] == 1  # sent, cancelled, counted
    finally:
        await upstream.close()


async def test_bodies_over_max_response_size_are_refused_declared_or_streamed() -> None:
    """A body over the limit is refused: at once when its length is announced, and as soon
    as the limit is passed when it is streamed without one (chunked) or announced only for its
    compressed bytes (a gzip bomb); bodies within the limit are read whole either way."""
    from aiohttp import web

    big, small = b"[" + b"0," * 1500 + b"0]", b"[1, 2, 3]"

    async def declared(request: web.Request) -> web.Response:
        return web.Response(body=big if request.query.get("big") else small)

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        body = big if request.query.get("big") else small
        for i in range(0, len(body), 100):
            await response.write(body[i : i + 100])
        await response.write_eof()
        return response

    async def gzipped(request: web.Request) -> web.Response:
        # A length announced for the packed bytes: what counts is what they unpack to.
        packed = gzip.compress(big if request.query.get("big") else small)
        assert len(packed) < 1024 < len(big)
        return web.Response(body=packed, headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/declared", declared)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/gzipped", gzipped)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    upstream = Upstream(
        f"http://127.0.0.1:{port}",
        {},
        TokenBucket(config_from(source_yaml("http://127.0.0.1:1", None)).sources[0].rate),
        2,
        source="kz",
        max_body=1024,
        redact=Redactor(),
    )
    budget = Budget(asyncio.get_running_loop().time() + 10)
    try:
        for path in ("/declared", "/chunked", "/gzipped"):
            assert await upstream.get_json("list", path, {}, budget) == [1, 2, 3]
            with pytest.raises(UpstreamError) as refused:
                await upstream.get_json("list", path, {"big": "1"}, budget)
            expected = (
                f"response of {len(big)} bytes is over the 1024-byte limit"
                if path == "/declared"
                else "response is over the 1024-byte limit; stopped reading"
            )
            assert expected in str(refused.value)
    finally:
        await upstream.close()
        await runner.cleanup()
