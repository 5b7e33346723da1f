"""Command line: flags (each also settable by a BULK_EXPORTER_* variable), validation of
their values, `--config.check`, and handing over to the service."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from exporter import __version__, logs
from exporter.config import Config, ConfigError, load_config, summary
from exporter.redact import Redactor
from exporter.runtime import Shard
from exporter.service import Listen, Service
from exporter.webconfig import WebConfig, WebConfigError, load_web_config

ENV_PREFIX = "BULK_EXPORTER_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("logfmt", "json")


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace(".", "_").replace("-", "_")


class UsageError(Exception):
    """A flag or BULK_EXPORTER_* variable with a value that cannot be used."""


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with status 1, like every other start-up error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _choice(allowed: Sequence[str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return check


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError("must be a whole number") from None
    if number < 1:
        raise ValueError("must be 1 or more")
    return number


def _shard_index(value: str) -> str:
    if value != "auto":
        try:
            if int(value) < 0:
                raise ValueError
        except ValueError:
            raise ValueError("must be a shard number from 0, or auto") from None
    return value


@dataclass(frozen=True)
class _Flag:
    """One valued flag: its name, destination, default, help and value check."""

    name: str
    dest: str
    default: str | None
    help: str
    check: Callable[[str], object] | None = None
    metavar: str | None = None


FLAGS = (
    _Flag("--config.file", "config_file", "config.yaml", "configuration file", metavar="PATH"),
    _Flag(
        "--web.listen-address",
        "listen_address",
        ":9840",
        "address to listen on: host:port, :port or [::]:port",
        metavar="ADDR",
    ),
    _Flag(
        "--web.config.file",
        "web_config_file",
        None,
        "TLS and basic auth configuration, in exporter-toolkit format",
        metavar="PATH",
    ),
    _Flag("--log.level", "log_level", "info", "log level", _choice(LOG_LEVELS)),
    _Flag("--log.format", "log_format", "logfmt", "log format", _choice(LOG_FORMATS)),
    _Flag(
        "--storage.path",
        "storage_path",
        None,
        "keep each source's state in this directory across restarts",
        metavar="DIR",
    ),
    _Flag(
        "--shard.index",
        "shard_index",
        "0",
        "this replica's shard (0-based) or auto: the host name's trailing number",
        _shard_index,
        metavar="N|auto",
    ),
    _Flag("--shard.count", "shard_count", "1", "replicas the sources are split over", _count),
)
SWITCHES = (
    ("--config.check", "config_check", "validate the configuration, print a summary and exit"),
    ("--demo", "demo", "run against the built-in simulator of both APIs"),
)


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The exporter's flags; a variable's value is the default its flag overrides."""
    parser = _Parser(
        prog="bulk-progress-exporter",
        description="Prometheus exporter for Kizen bulk actions and FirstPromoter batch "
        f"processes. Every flag can also be set as {ENV_PREFIX}<FLAG>; the flag wins.",
    )
    for flag in FLAGS:
        parser.add_argument(
            flag.name,
            dest=flag.dest,
            default=env.get(env_name(flag.name), flag.default),
            metavar=flag.metavar,
            help=f"{flag.help} (env {env_name(flag.name)}; default: {flag.default})",
        )
    for name, dest, text in SWITCHES:
        parser.add_argument(
            name,
            dest=dest,
            action="store_true",
            default=None,
            help=f"{text} (env {env_name(name)})",
        )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


@dataclass(frozen=True)
class Options:
    """The parsed command line, every value checked."""

    config_file: str
    listen_address: str
    web_config_file: str | None
    log_level: str
    log_format: str
    storage_path: str | None
    shard_index: str
    shard_count: str
    config_check: bool
    demo: bool
    version: bool


def parse_options(argv: Sequence[str] | None, env: Mapping[str, str]) -> Options:
    """Parse and check every value; a bad one names its flag, or its variable and value."""
    values = vars(build_parser(env).parse_args(argv))
    given = set(argv if argv is not None else sys.argv[1:])
    for flag in FLAGS:
        value = values[flag.dest]
        if flag.check is None or value is None:
            continue
        try:
            flag.check(value)
        except ValueError as exc:
            from_flag = any(a == flag.name or a.startswith(flag.name + "=") for a in given)
            where = flag.name if from_flag else f"{env_name(flag.name)}={value!r}"
            raise UsageError(f"{where}: {exc}") from None
    for name, dest, _ in SWITCHES:
        if values[dest] is None:
            raw = env.get(env_name(name), "").strip().lower()
            if raw not in _TRUE | _FALSE:
                raise UsageError(f"{env_name(name)}={raw!r}: must be true or false")
            values[dest] = raw in _TRUE
    return Options(**values)


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


def resolve_shard(index: str, count: str, hostname: str | None = None) -> Shard:
    """`--shard.index`/`--shard.count` as a Shard; `auto` takes the host name's trailing
    number (a StatefulSet pod's ordinal). With one shard, `auto` is 0 whatever the host name:
    a single replica owns every source, so its name (a container id, a Deployment pod's) does
    not matter."""
    total = int(count)
    if index == "auto":
        if total == 1:
            return Shard(0, 1)
        name = hostname if hostname is not None else socket.gethostname()
        digits = len(name) - len(name.rstrip("0123456789"))
        if digits == 0:
            raise UsageError(f"--shard.index auto: the host name {name!r} does not end in a number")
        number = int(name[-digits:])
        if number >= total:
            raise UsageError(
                f"--shard.index auto: the host name {name!r} gives shard {number}, "
                f"which is not below --shard.count {total}"
            )
    else:
        number = int(index)
    if number >= total:
        raise UsageError(f"--shard.index {number} is not below --shard.count {total}")
    return Shard(number, total)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        opts = parse_options(argv, env)
    except UsageError as exc:
        return _error(str(exc))
    if opts.version:
        print(f"bulk-progress-exporter {__version__} (Python {platform.python_version()})")
        return 0
    redactor = Redactor()
    logs.setup(opts.log_level, opts.log_format, redactor)
    try:
        host, port = parse_listen_address(opts.listen_address)
        shard = resolve_shard(opts.shard_index, opts.shard_count)
    except (ValueError, UsageError) as exc:
        return _error(str(exc))

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

    service = Service(
        config=config,
        config_file=opts.config_file,
        listen=Listen(opts.listen_address, host, port, web_config),
        shard=shard,
        redactor=redactor,
        storage_path=opts.storage_path,
        demo=opts.demo,
        config_check=opts.config_check,
    )
    try:
        asyncio.run(service.run())
    except OSError as exc:
        return _error(f"cannot listen on {opts.listen_address}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass
    return 0
