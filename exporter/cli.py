"""Command line: flags (each also settable by a BULK_EXPORTER_* variable) and the serve loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import signal
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from exporter import __version__, logs
from exporter.config import Config, ConfigError, load_config, summary
from exporter.logs import log
from exporter.runtime import Runtime
from exporter.server import make_app
from exporter.webconfig import WebConfig, WebConfigError, load_web_config

logger = logging.getLogger("exporter")

ENV_PREFIX = "BULK_EXPORTER_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace(".", "_").replace("-", "_")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bulk-progress-exporter",
        description="Prometheus exporter for Kizen bulk actions and FirstPromoter batch "
        f"processes. Every flag can also be set as {ENV_PREFIX}<FLAG>; the flag wins.",
    )

    def value(flag: str, default: str | None, **kwargs: object) -> None:
        parser.add_argument(
            flag,
            default=env.get(env_name(flag), default),
            help=f"{kwargs.pop('help')} (env {env_name(flag)}; default: %(default)s)",
            **kwargs,  # type: ignore[arg-type]
        )

    def switch(flag: str, dest: str, help_text: str) -> None:
        raw = env.get(env_name(flag), "").strip().lower()
        if raw not in _TRUE | _FALSE:
            parser.error(f"{env_name(flag)}={raw!r} is not a boolean (true/false)")
        parser.add_argument(
            flag,
            dest=dest,
            action="store_true",
            default=raw in _TRUE,
            help=f"{help_text} (env {env_name(flag)})",
        )

    value(
        "--config.file",
        "config.yaml",
        dest="config_file",
        metavar="PATH",
        help="configuration file",
    )
    value(
        "--web.listen-address",
        ":9840",
        dest="listen_address",
        metavar="ADDR",
        help="address to listen on: host:port, :port or [::]:port",
    )
    value(
        "--web.config.file",
        None,
        dest="web_config_file",
        metavar="PATH",
        help="TLS and basic auth configuration, in exporter-toolkit format",
    )
    value(
        "--log.level",
        "info",
        dest="log_level",
        help="log level",
        choices=["debug", "info", "warn", "error"],
    )
    value(
        "--log.format", "logfmt", dest="log_format", help="log format", choices=["logfmt", "json"]
    )
    switch(
        "--config.check",
        "config_check",
        "validate the configuration, print a redacted summary and exit",
    )
    switch("--demo", "demo", "run against the built-in simulator of both APIs")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def parse_listen_address(address: str) -> tuple[str | None, int]:
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"listen address {address!r} needs a port, as in :9840")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"listen address {address!r} has no valid port") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {address!r}: port out of range")
    host = host.strip("[]")
    return (host or None), port


@dataclass
class Options:
    config_file: str
    listen_address: str
    web_config_file: str | None
    log_level: str
    log_format: str
    config_check: bool
    demo: bool
    version: bool


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = build_parser(env)
    opts = Options(**vars(parser.parse_args(argv)))
    if opts.version:
        print(f"bulk-progress-exporter {__version__} (Python {platform.python_version()})")
        return 0
    if opts.log_level not in logs.LEVELS or opts.log_format not in ("logfmt", "json"):
        parser.error("invalid --log.level or --log.format")
    logs.setup(opts.log_level, opts.log_format)
    try:
        host, port = parse_listen_address(opts.listen_address)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    config: Config | None = None
    if not opts.demo:
        try:
            config = load_config(opts.config_file)
        except ConfigError as exc:
            for problem in exc.problems:
                print(f"error: {problem}", file=sys.stderr)
            return 1
        if opts.config_check:
            print(f"{opts.config_file}: OK")
            print(summary(config))
            return 0

    web_config: WebConfig | None = None
    if opts.web_config_file:
        try:
            web_config = load_web_config(opts.web_config_file)
        except WebConfigError as exc:
            for problem in exc.problems:
                print(f"error: {problem}", file=sys.stderr)
            return 1

    try:
        asyncio.run(serve(opts, config, host, port, web_config))
    except OSError as exc:
        print(
            f"error: cannot listen on {opts.listen_address}: {exc.strerror or exc}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def serve(
    opts: Options,
    config: Config | None,
    host: str | None,
    port: int,
    web_config: WebConfig | None,
) -> None:
    loop = asyncio.get_running_loop()
    demo = None
    if opts.demo:
        from exporter.demo import Demo

        demo = Demo()
        config = await demo.start()
        if opts.config_check:
            print(summary(config))
            await demo.stop()
            return
    assert config is not None
    runtime = Runtime(config, None if opts.demo else opts.config_file)
    middlewares = web_config.middlewares() if web_config else []
    ssl_context: ssl.SSLContext | None = web_config.ssl_context() if web_config else None
    app = make_app(runtime, middlewares)
    runner = web.AppRunner(app, access_log=logging.getLogger("aiohttp.access"))
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        if demo is not None:
            await demo.stop()
        raise

    scheme = "https" if ssl_context else "http"
    shown = host if host not in (None, "0.0.0.0", "::") else "localhost"
    if shown and ":" in shown:
        shown = f"[{shown}]"
    url = f"{scheme}://{shown}:{port}/"
    log(
        logger,
        logging.INFO,
        "listening",
        address=opts.listen_address,
        url=url,
        sources=len(config.sources),
        demo=opts.demo,
        version=__version__,
    )
    if opts.demo:
        print(f"bulk-progress-exporter demo: open {url} (metrics at {url}metrics)", flush=True)

    stop = asyncio.Event()

    reloads: set[asyncio.Task[None]] = set()

    def request_reload() -> None:
        async def run() -> None:
            with contextlib.suppress(ConfigError):  # logged; the old configuration keeps serving
                await runtime.reload()

        task = loop.create_task(run())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, request_reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        await stop.wait()
    finally:
        log(logger, logging.INFO, "shutting down")
        runtime.ready = False
        await runner.cleanup()
        if demo is not None:
            await demo.stop()
