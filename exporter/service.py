"""The serving process: demo start-up, the runtime, the HTTP site, signals and reloads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from exporter import __version__
from exporter.config import Config, ConfigError
from exporter.demo import Demo
from exporter.flags import ListenAddress
from exporter.logs import log
from exporter.recorder import Recorder
from exporter.recordfile import Recording
from exporter.recordfile import start as start_recording
from exporter.redact import Redactor
from exporter.replay import Replay
from exporter.runtime import Runtime, Shard
from exporter.server import make_app
from exporter.state import StateStore
from exporter.webconfig import WebConfig

logger = logging.getLogger("exporter")

# Request headers must arrive within this (from connecting, or from the previous answer on a
# kept-alive connection); idle connections are closed after it. Tests lower it.
HEADER_TIMEOUT = 10.0
_HEADERS_END = (b"\r\n\r\n", b"\n\n")


class HeaderDeadline(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind a deadline for the first request's headers.

    aiohttp's server has no header timeout of its own. Its `keepalive_timeout` closes a
    kept-alive connection whose next request has not arrived whole within that time of the
    previous answer, however slowly its bytes trickle in, but before the first request only
    recent versions arm it. This wrapper sits between the transport and aiohttp's protocol and
    closes the connection when the blank line ending the first request's headers has not
    arrived within `timeout` of connecting; with `keepalive_timeout` set to the same value,
    every request's headers must arrive within it and idle connections are closed.
    A half-closed connection is closed by aiohttp at once (`eof_received`).
    """

    def __init__(self, inner: asyncio.Protocol, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.timeout, self._expire)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if any(end in seen for end in _HEADERS_END):
                self._timer.cancel()
                self._timer = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            log(logger, logging.DEBUG, "closing a connection whose request headers are late")
            self._transport.close()


@dataclass
class Serving:
    """The HTTP server of one run: aiohttp's runner and the listening socket(s)."""

    runner: web.AppRunner
    server: asyncio.Server

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening, close every connection and run the app's shutdown hooks."""
        self.server.close()
        await self.runner.cleanup()


async def serve_http(
    app: web.Application,
    host: str | None,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    *,
    header_timeout: float | None = None,
) -> Serving:
    """Serve `app` as the exporter does: aiohttp's runner behind `HeaderDeadline`, idle
    connections closed after `header_timeout` (HEADER_TIMEOUT unless given), and the TLS
    handshake bounded by it too. Raises OSError when it cannot listen."""
    timeout = HEADER_TIMEOUT if header_timeout is None else header_timeout
    runner = web.AppRunner(
        app, access_log=logging.getLogger("aiohttp.access"), keepalive_timeout=timeout
    )
    await runner.setup()
    handlers = runner.server
    assert handlers is not None
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            lambda: HeaderDeadline(handlers(), timeout),
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=timeout if ssl_context is not None else None,
        )
    except OSError:
        await runner.cleanup()
        raise
    return Serving(runner, server)


@dataclass(frozen=True)
class Listen:
    """Where and how to serve."""

    address: ListenAddress
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
        on_sources: Callable[[int], None] | None = None,
        recorder: Recorder | None = None,
        replay: Recording | None = None,
    ) -> None:
        self.config = config
        self.config_file = config_file
        self.listen = listen
        self.shard = shard
        self.redactor = redactor
        self.storage_path = storage_path
        # `--replay` is a demo of a recording: a simulator on loopback makes the config.
        self.demo: Demo | Replay | None = Replay(replay) if replay is not None else None
        if self.demo is None and demo:
            self.demo = Demo()
        self.recorder = recorder
        self.on_sources = on_sources
        self._stop = asyncio.Event()
        self._reloads: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        config = await self._start_demo() if self.demo is not None else self.config
        assert config is not None
        if self.recorder is not None:
            owned = [s.name for s in config.sources if self.shard.owns(s.name)]
            start_recording(self.recorder, config, owned)
        store = StateStore(self.storage_path) if self.storage_path else None
        runtime = Runtime(
            config,
            None if self.demo is not None else self.config_file,
            redactor=self.redactor,
            shard=self.shard,
            store=store,
            demo=self.demo is not None,
            on_sources=self.on_sources,
            recorder=self.recorder,
        )
        for warning in config.warnings():
            log(logger, logging.WARNING, warning)
        # Handlers before the port listens: whoever sees the port open may signal at once
        # (a supervisor, a test), and a SIGTERM then must shut down cleanly, not kill.
        self._handle_signals(runtime)
        serving = await self._start_site(runtime)
        try:
            await self._stop.wait()
        finally:
            log(logger, logging.INFO, "shutting down")
            runtime.ready = False
            await serving.close()
            await self._stop_demo()

    async def _start_demo(self) -> Config:
        assert self.demo is not None
        config = await self.demo.start()
        self.redactor.add(config.secrets())
        return config

    async def _stop_demo(self) -> None:
        if self.demo is not None:
            await self.demo.stop()

    async def _start_site(self, runtime: Runtime) -> Serving:
        web_config = self.listen.web_config
        ssl_context: ssl.SSLContext | None = web_config.ssl_context() if web_config else None
        app = make_app(runtime, web_config.middlewares() if web_config else [])
        try:
            serving = await serve_http(
                app, self.listen.address.host, self.listen.address.port, ssl_context
            )
        except OSError:
            await self._stop_demo()
            raise
        url = public_url(
            self.listen.address.host, self.listen.address.port, ssl_context is not None
        )
        log(
            logger,
            logging.INFO,
            "listening",
            address=self.listen.address.text,
            url=url,
            sources=len(runtime.sources),
            shard=f"{self.shard.index}/{self.shard.count}",
            demo=self.demo is not None,
            version=__version__,
        )
        if isinstance(self.demo, Replay):
            what = f"replaying {self.demo.recording.path}"
        elif self.demo is not None:
            what = "demo (simulated data)"
        else:
            what = "serving"
        print(f"bulk-progress-exporter {what}: open {url} (metrics at {url}metrics)", flush=True)
        return serving

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
