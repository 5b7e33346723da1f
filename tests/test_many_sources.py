"""Many accounts on one replica: sources on one host share a connection pool, an idle source's
families are not built again, and a source's answer stays right whichever sources changed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from exporter.exposition import Renderer
from exporter.runtime import Runtime
from exporter.simulator import Credentials, Simulator, World
from exporter.simulator.app import FP_PREFIX, KIZEN_PREFIX
from exporter.upstream import KEEPALIVE
from tests.helpers import config_from, one, parse_samples

CREDS = Credentials()


class Counted:
    """The simulator over HTTP, noting the client port of every request it answers."""

    def __init__(self) -> None:
        world = World(seed=3)
        world.populate()
        self.simulator = Simulator(world)
        self.peers: set[object] = set()
        self.server: TestServer | None = None

    async def start(self) -> None:
        app = self.simulator.app()

        @web.middleware
        async def note_peer(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            transport = request.transport
            self.peers.add(transport.get_extra_info("peername") if transport else None)
            return await handler(request)

        app.middlewares.append(note_peer)
        self.server = TestServer(app)
        await self.server.start_server()

    def url(self, prefix: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(prefix))


@pytest.fixture
async def counted() -> AsyncIterator[Counted]:
    sim = Counted()
    await sim.start()
    try:
        yield sim
    finally:
        assert sim.server is not None
        await sim.server.close()


def sources_yaml(sim: Counted, pairs: int) -> str:
    lines = ["sources:"]
    for i in range(pairs):
        lines += [
            f"  - name: kz-{i}",
            "    platform: kizen",
            f"    base_url: {sim.url(KIZEN_PREFIX)}",
            f"    business_id: {CREDS.kizen_business_id}",
            f"    user_id: {CREDS.kizen_user_id}",
            f"    api_key: {CREDS.kizen_api_key}",
            f"  - name: fp-{i}",
            "    platform: firstpromoter",
            f"    base_url: {sim.url(FP_PREFIX)}",
            f"    account_id: {CREDS.fp_account_id}",
            f"    api_key: {CREDS.fp_api_key}",
        ]
    return "\n".join(lines) + "\n"


async def test_sources_on_one_host_reuse_each_others_connections(counted: Counted) -> None:
    runtime = Runtime(config_from(sources_yaml(counted, 5)))
    try:
        # One source after another: each finds the connections the previous ones left idle.
        for name in runtime.sources:
            (snapshot,) = await runtime.scrape([name])
            assert snapshot.up, snapshot.error
        # Ten sources, two requests in flight each at most: a pool per source would have
        # opened at least one connection per source.
        assert 0 < len(counted.peers) <= 4, counted.peers
    finally:
        await runtime.close()


async def test_idle_connections_are_kept_across_a_one_minute_scrape_interval(
    counted: Counted, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pool's clock, moved on instead of waiting: idle time is what it reads from it.
    idle = [0.0]
    clock = time.monotonic  # what aiohttp's connector reads idle time from
    monkeypatch.setattr("aiohttp.connector.monotonic", lambda: clock() + idle[0])
    runtime = Runtime(config_from(sources_yaml(counted, 2)))
    try:
        for _ in range(2):  # the cold refresh, then a steady one: as many connections as it uses
            assert all(s.up for s in await runtime.scrape())
        opened = set(counted.peers)
        idle[0] = 61.0  # a scrape a minute and a second later
        assert all(s.up for s in await runtime.scrape())
        assert counted.peers == opened
        # Past the keep-alive, they are opened again: the test sees a new connection.
        idle[0] += KEEPALIVE + 1
        assert all(s.up for s in await runtime.scrape())
        assert counted.peers > opened
    finally:
        await runtime.close()


async def test_connections_the_server_closed_while_idle_cost_no_failed_request(
    counted: Counted,
) -> None:
    runtime = Runtime(config_from(sources_yaml(counted, 2)))
    try:
        assert all(s.up for s in await runtime.scrape())
        assert counted.server is not None
        server = counted.server.runner.server if counted.server.runner else None
        assert server is not None
        assert server.connections
        for handler in list(server.connections):  # a server's own idle timeout
            handler.force_close()
            if handler.transport is not None:
                handler.transport.close()
        opened = set(counted.peers)
        snapshots = await runtime.scrape()
        assert all(s.up for s in snapshots), [s.error for s in snapshots]
        assert counted.peers > opened
        # Every request answered, none counted as failed.
        codes = {code for s in snapshots for (_, code) in s.requests}
        assert codes == {"200"}
    finally:
        await runtime.close()


async def test_a_source_retired_by_a_reload_leaves_the_shared_pool_to_the_others(
    counted: Counted, tmp_path: object
) -> None:
    runtime = Runtime(config_from(sources_yaml(counted, 2)))
    try:
        assert all(s.up for s in await runtime.scrape())
        kept = runtime.sources["kz-1"]
        retired = runtime.sources.pop("kz-0")
        await retired.close()  # what a reload does with a runner it no longer uses
        snapshots = await runtime.scrape()
        assert [s.name for s in snapshots] == ["fp-0", "kz-1", "fp-1"]
        assert all(s.up for s in snapshots), [s.error for s in snapshots]
        assert runtime.sources["kz-1"] is kept
    finally:
        await runtime.close()


async def test_an_idle_sources_families_are_reused_and_a_busy_ones_rebuilt(
    counted: Counted,
) -> None:
    runtime = Runtime(config_from(sources_yaml(counted, 1)))
    renderer = Renderer()
    try:
        first = {s.name: s for s in await runtime.scrape()}
        built = {n: renderer.families(s) for n, s in first.items()}
        # Nothing moves in the simulated accounts: the next refresh changes no job and no
        # counter, so the content families are the very same objects.
        second = {s.name: s for s in await runtime.scrape()}
        assert second["kz-0"] is not first["kz-0"]  # a new refresh, a new snapshot
        again = {n: renderer.families(s) for n, s in second.items()}
        assert again["kz-0"][-1] is built["kz-0"][-1]  # per-job series: kept
        assert again["fp-0"][-1] is built["fp-0"][-1]
        # A job moves in the Kizen account only: its families are built again, with the
        # new numbers; the FirstPromoter source's stay.
        job = next(j for j in counted.simulator.world.kizen if j.status == "in_progress")
        job.success += 7
        job.pending = max(0, job.pending - 7)
        third = {s.name: s for s in await runtime.scrape()}
        rebuilt = {n: renderer.families(s) for n, s in third.items()}
        assert rebuilt["kz-0"][-1] is not built["kz-0"][-1]
        assert rebuilt["fp-0"][-1] is built["fp-0"][-1]
        body, _ = renderer.render(list(third.values()), runtime.status, "text/plain")
        samples = parse_samples(body.decode())
        value = one(samples, "bulk_job_items", source="kz-0", job_id=job.id, state="succeeded")
        assert value == job.success
    finally:
        await runtime.close()
