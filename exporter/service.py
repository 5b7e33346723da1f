"""The serving process: demo start-up, the runtime, the HTTP site, signals and reloads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from dataclasses import dataclass

from aiohttp import web

from exporter import __version__
from exporter.config import Config, ConfigError, summary
from exporter.demo import Demo
from exporter.logs import log
from exporter.redact import Redactor
from exporter.runtime import Runtime, Shard
from exporter.server import make_app
from exporter.state import StateStore
from exporter.webconfig import WebConfig

logger = logging.getLogger("exporter")

# Request headers must arrive within this; idle keep-alive connections are closed after it.
HEADER_TIMEOUT = 10.0


@dataclass(frozen=True)
class Listen:
    """Where and how to serve."""

    address: str
    host: str | None
    port: int
    web_config: WebConfig | None


def public_url(host: str | None, port: int, tls: bool) -> str:
    shown = host if host not in (None, "0.0.0.0", "::") else "localhost"
    if shown and ":" in shown:
        shown = f"[{shown}]"
    return f"{'https' if tls else 'http'}://{shown}:{port}/"


class Service:
    """Owns one run of the exporter, from start-up to a clean shutdown."""

    def __init__(
        self,
        *,
        config: Config | None,
        config_file: str | None,
        listen: Listen,
        shard: Shard,
        redactor: Redactor,
        storage_path: str | None = None,
        demo: bool = False,
        config_check: bool = False,
    ) -> None:
        self.config = config
        self.config_file = config_file
        self.listen = listen
        self.shard = shard
        self.redactor = redactor
        self.storage_path = storage_path
        self.demo = Demo() if demo else None
        self.config_check = config_check
        self._stop = asyncio.Event()
        self._reloads: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        config = await self._start_demo() if self.demo is not None else self.config
        assert config is not None
        if self.config_check:
            print(summary(config))
            await self._stop_demo()
            return
        store = StateStore(self.storage_path) if self.storage_path else None
        runtime = Runtime(
            config,
            None if self.demo is not None else self.config_file,
            redactor=self.redactor,
            shard=self.shard,
            store=store,
            demo=self.demo is not None,
        )
        for warning in config.warnings():
            log(logger, logging.WARNING, warning)
        runner = await self._start_site(runtime)
        self._handle_signals(runtime)
        try:
            await self._stop.wait()
        finally:
            log(logger, logging.INFO, "shutting down")
            runtime.ready = False
            await runner.cleanup()
            await self._stop_demo()

    async def _start_demo(self) -> Config:
        assert self.demo is not None
        config = await self.demo.start()
        self.redactor.add(config.secrets())
        return config

    async def _stop_demo(self) -> None:
        if self.demo is not None:
            await self.demo.stop()

    async def _start_site(self, runtime: Runtime) -> web.AppRunner:
        web_config = self.listen.web_config
        ssl_context: ssl.SSLContext | None = web_config.ssl_context() if web_config else None
        app = make_app(runtime, web_config.middlewares() if web_config else [])
        runner = web.AppRunner(
            app,
            access_log=logging.getLogger("aiohttp.access"),
            keepalive_timeout=HEADER_TIMEOUT,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.listen.host, self.listen.port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            await self._stop_demo()
            raise
        url = public_url(self.listen.host, self.listen.port, ssl_context is not None)
        log(
            logger,
            logging.INFO,
            "listening",
            address=self.listen.address,
            url=url,
            sources=len(runtime.sources),
            shard=f"{self.shard.index}/{self.shard.count}",
            demo=self.demo is not None,
            version=__version__,
        )
        what = "demo (simulated data)" if self.demo is not None else "serving"
        print(f"bulk-progress-exporter {what}: open {url} (metrics at {url}metrics)", flush=True)
        return runner

    def _handle_signals(self, runtime: Runtime) -> None:
        loop = asyncio.get_running_loop()

        def request_reload() -> None:
            async def run() -> None:
                with contextlib.suppress(ConfigError):  # logged; the old config keeps serving
                    await runtime.reload()

            task = loop.create_task(run())
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, request_reload)
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
