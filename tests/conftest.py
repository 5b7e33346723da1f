from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, settings

from exporter.runtime import Runtime
from exporter.server import RUNTIME, make_app
from exporter.simulator import Simulator, World
from exporter.simulator.app import FP_PREFIX, KIZEN_PREFIX
from tests.helpers import Client, config_from, source_yaml

__all__ = ["Client", "ExporterFactory", "SimHandle", "last_error"]

# Generated histories (tests/test_histories.py, tests/test_read_histories.py): a short run in
# `make test`; `HYPOTHESIS_PROFILE=long` hunts longer. No deadline: a step that waits on HTTP
# or the state store is not slow code, and a timed limit would flake on a shared machine.
_UNTIMED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "default",
    _UNTIMED,
    max_examples=60,
    stateful_step_count=40,
    derandomize=bool(os.environ.get("CI")),
)
settings.register_profile("long", _UNTIMED, max_examples=2000, stateful_step_count=80)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


class SimHandle:
    def __init__(self, simulator: Simulator, server: TestServer) -> None:
        self.sim = simulator
        self.server = server

    @property
    def world(self) -> World:
        return self.sim.world

    @property
    def kizen_url(self) -> str:
        return str(self.server.make_url(KIZEN_PREFIX))

    @property
    def fp_url(self) -> str:
        return str(self.server.make_url(FP_PREFIX))

    def count(self, platform: str, endpoint: str | None = None) -> int:
        return sum(
            n
            for (p, e), n in self.sim.requests.items()
            if p == platform and (endpoint is None or e == endpoint)
        )


@pytest.fixture
async def sim() -> AsyncIterator[SimHandle]:
    simulator = Simulator(World(seed=1))
    server = TestServer(simulator.app())
    await server.start_server()
    try:
        yield SimHandle(simulator, server)
    finally:
        await server.close()


ExporterFactory = Callable[..., Awaitable[Client]]


def last_error(client: Client, source: str) -> str:
    """The error of the source's last refresh, as the landing page shows it; fails if none."""
    app = client.app
    assert app is not None
    last = app[RUNTIME].sources[source].last
    assert last is not None
    assert last.error is not None
    return last.error


@pytest.fixture
async def exporter(sim: SimHandle) -> AsyncIterator[ExporterFactory]:
    """Start an exporter over real HTTP, configured against the simulator."""
    clients: list[Client] = []

    async def start(
        text: str | None = None,
        *,
        kizen: bool = True,
        fp: bool = True,
        defaults: str = "",
        kizen_extra: str = "",
        fp_extra: str = "",
    ) -> Client:
        if text is None:
            text = source_yaml(
                sim.kizen_url if kizen else None,
                sim.fp_url if fp else None,
                defaults=defaults,
                kizen_extra=kizen_extra,
                fp_extra=fp_extra,
            )
        runtime = Runtime(config_from(text))
        client: Client = TestClient(TestServer(make_app(runtime)))
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield start
    finally:
        for client in clients:
            await client.close()
