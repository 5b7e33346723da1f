"""A faithful fake of the Kizen and FirstPromoter endpoints the exporter reads.

Used by the tests, the benchmarks and `--demo`. `python -m exporter.simulator` serves it alone.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from exporter.simulator.app import (
    FP_PREFIX,
    KIZEN_PREFIX,
    Behaviour,
    Credentials,
    Fault,
    Simulator,
)
from exporter.simulator.control import add_control_routes
from exporter.simulator.world import World

__all__ = ["Behaviour", "Credentials", "Fault", "RunningSimulator", "Simulator", "World"]


async def serve_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """`app` served at host:port (0: any free port); its runner and the port it got."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    return runner, sockets[0].getsockname()[1] if sockets else port


class RunningSimulator:
    """A simulator served on loopback, optionally evolving its jobs every `tick` seconds."""

    def __init__(
        self, simulator: Simulator | None = None, tick: float | None = None, control: bool = False
    ) -> None:
        self.simulator = simulator or Simulator()
        self.tick = tick
        # `python -m exporter.simulator --control`: POST/PATCH routes under /_control that let
        # a test in another process shape the world (never in the demo).
        self.control = control
        self._runner: web.AppRunner | None = None
        self._evolve: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def kizen_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{KIZEN_PREFIX}"

    @property
    def firstpromoter_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{FP_PREFIX}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = self.simulator.app()
        if self.control:
            add_control_routes(self.simulator, app)
        self._runner, self.port = await serve_app(app, host, port)
        if self.tick:
            self._evolve = asyncio.create_task(self._run_evolution(self.tick))

    async def _run_evolution(self, tick: float) -> None:
        while True:
            await asyncio.sleep(tick)
            self.simulator.world.step()

    async def stop(self) -> None:
        if self._evolve is not None:
            self._evolve.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._evolve
        if self._runner is not None:
            await self._runner.cleanup()
