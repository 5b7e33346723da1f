"""Command line: flags (each also settable by a BULK_EXPORTER_* variable), validation of
their values, `--config.check`, and handing over to the service."""

from __future__ import annotations

import argparse
import asyncio
import enum
import os
import platform
import socket
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter import __version__, logs
from exporter.accounts import check_accounts, report
from exporter.config import Config, ConfigError, load_config, summary
from exporter.demo import DEMO_CONFIG_NAME, Demo
from exporter.redact import Redactor
from exporter.runtime import Shard
from exporter.service import Listen, Service
from exporter.webconfig import WebConfig, WebConfigError, load_web_config

ENV_PREFIX = "BULK_EXPORTER_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("logfmt", "json")
LISTEN_FORM = "host:port, e.g. :9840"


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace(".", "_").replace("-", "_")


class UsageError(Exception):
    """A flag or BULK_EXPORTER_* variable with a value that cannot be used."""


class Origin(enum.Enum):
    """Where an option's value came from; an error names it the way the user gave it."""

    FLAG = "flag"
    VARIABLE = "variable"
    DEFAULT = "default"


@dataclass(frozen=True)
class Given:
    """One option's value and where it came from."""

    flag: str
    value: str
    origin: Origin = Origin.FLAG

    def named(self, *, with_value: bool = True) -> str:
        """The value as the user gave it, to start an error with: `VAR='value'` when it came
        from its variable, else the flag, followed by the value when `with_value` (a message
        comparing two values shows both) and marked when nobody gave it."""
        if self.origin is Origin.VARIABLE:
            return f"{env_name(self.flag)}={self.value!r}"
        if not with_value:
            return self.flag
        default = " (the default)" if self.origin is Origin.DEFAULT else ""
        return f"{self.flag} {self.value}{default}"


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
    # ASCII digits only, like the port: int() also takes ' 3', '3_0' and other scripts' digits.
    if not (value.isascii() and value.isdigit()):
        raise ValueError("must be a whole number")
    number = int(value)
    if number < 1:
        raise ValueError("must be 1 or more")
    return number


def _shard_index(value: str) -> str:
    if value != "auto" and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a shard number from 0, or auto")
    return value


def split_listen_address(address: str) -> tuple[str | None, int]:
    """`host:port`, `:port` or `[::]:port` as (host or None for every address, port); a
    ValueError says what is wrong, without naming the address (its caller knows how the user
    gave it)."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"needs a port ({LISTEN_FORM})")
    # isdigit alone takes digits such as '²' that int() refuses; int alone takes ' 80' and '8_0'.
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"the port must be a number ({LISTEN_FORM})")
    port = int(port_text)
    if port > 65535:
        raise ValueError("the port must be from 0 to 65535")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"an IPv6 host goes in brackets, as in [::1]:9840 ({LISTEN_FORM})")
    host = host.removeprefix("[").removesuffix("]")
    return (host or None), port


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """split_listen_address, its error naming the address, for callers that do not know
    where it came from (the health check)."""
    try:
        return split_listen_address(address)
    except ValueError as exc:
        raise ValueError(f"listen address {address!r}: {exc}") from None


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
        split_listen_address,
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
    (
        "--config.check.upstream",
        "config_check_upstream",
        "with --config.check: also read every source once (all shards) and report what each "
        "account answered",
    ),
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
    """The parsed command line, every value checked; `given` says, per valued flag with a
    value (by its destination), where that value came from."""

    config_file: str
    listen_address: str
    web_config_file: str | None
    log_level: str
    log_format: str
    storage_path: str | None
    shard_index: str
    shard_count: str
    config_check: bool
    config_check_upstream: bool
    demo: bool
    version: bool
    given: Mapping[str, Given]


def _given(flag: _Flag, from_command_line: str | None, env: Mapping[str, str]) -> Given | None:
    """The flag's value and where it came from: the command line, else its variable, else its
    default (None when it has none)."""
    if from_command_line is not None:
        return Given(flag.name, from_command_line, Origin.FLAG)
    if env_name(flag.name) in env:
        return Given(flag.name, env[env_name(flag.name)], Origin.VARIABLE)
    if flag.default is None:
        return None
    return Given(flag.name, flag.default, Origin.DEFAULT)


def _check(flag: _Flag, given: Given) -> None:
    if flag.check is None:
        return
    try:
        flag.check(given.value)
    except ValueError as exc:
        raise UsageError(f"{given.named(with_value=False)}: {exc}") from None


def _switch(name: str, on_command_line: bool | None, env: Mapping[str, str]) -> bool:
    if on_command_line is not None:
        return on_command_line
    given = env.get(env_name(name), "")
    value = given.strip().lower()
    if value not in _TRUE | _FALSE:
        raise UsageError(f"{env_name(name)}={given!r}: must be true or false")
    return value in _TRUE


def parse_options(argv: Sequence[str] | None, env: Mapping[str, str]) -> Options:
    """Parse and check every value; a bad one names its flag, or its variable and value."""
    parser = build_parser(env)
    # No defaults here, so that a value argparse returns was given on the command line
    # (scanning argv instead would miss the abbreviations argparse accepts, `--shard.c 2`).
    parser.set_defaults(**{flag.dest: None for flag in FLAGS})
    values: dict[str, Any] = vars(parser.parse_args(argv))
    given: dict[str, Given] = {}
    for flag in FLAGS:
        found = _given(flag, values[flag.dest], env)
        if found is None:  # unset, with no default: nothing to check
            values[flag.dest] = None
            continue
        _check(flag, found)
        values[flag.dest] = found.value
        given[flag.dest] = found
    upstream_on_command_line = values["config_check_upstream"] is not None
    for name, dest, _ in SWITCHES:
        values[dest] = _switch(name, values[dest], env)
    if values["config_check_upstream"] and not values["config_check"]:
        upstream = "--config.check.upstream"
        named = upstream if upstream_on_command_line else f"{env_name(upstream)}=true"
        raise UsageError(
            f"{named} needs --config.check: it reads every source after the configuration "
            "is checked, and exits"
        )
    return Options(**values, given=given)


def _as_given(flag: str, value: str | Given) -> Given:
    return value if isinstance(value, Given) else Given(flag, value)


def _trailing_number(given: Given, name: str) -> int:
    digits = len(name) - len(name.rstrip("0123456789"))
    if digits == 0:
        raise UsageError(f"{given.named()}: the host name {name!r} does not end in a number")
    return int(name[-digits:])


def resolve_shard(index: str | Given, count: str | Given, hostname: str | None = None) -> Shard:
    """`--shard.index`/`--shard.count` as a Shard (a plain string counts as given by its
    flag); `auto` takes the host name's trailing number (a StatefulSet pod's ordinal). With
    one shard, `auto` is 0 whatever the host name: a single replica owns every source, so its
    name (a container id, a Deployment pod's) does not matter."""
    index_given = _as_given("--shard.index", index)
    count_given = _as_given("--shard.count", count)
    total = int(count_given.value)
    if index_given.value == "auto":
        if total == 1:
            return Shard(0, 1)
        name = hostname if hostname is not None else socket.gethostname()
        number = _trailing_number(index_given, name)
        if number >= total:
            raise UsageError(
                f"{index_given.named()}: the host name {name!r} gives shard {number}, "
                f"which is not below {count_given.named()}"
            )
        return Shard(number, total)
    number = int(index_given.value)
    if number >= total:
        raise UsageError(f"{index_given.named()} is not below {count_given.named()}")
    return Shard(number, total)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _problems(problems: Iterable[str]) -> int:
    for problem in problems:
        _error(problem)
    return 1


def check_config(opts: Options, redactor: Redactor | None = None) -> int:
    """`--config.check`: the configuration the exporter would serve (the file, or the demo's
    with `--demo`) and the `--web.config.file` when given are OK, with a redacted summary
    (0), or the problems of both, one a line (1). With `--config.check.upstream`, then every
    source read once: 0 when each was read, 1 naming each that was not and why."""
    return asyncio.run(_check_config(opts, redactor or Redactor()))


async def _check_config(opts: Options, redactor: Redactor) -> int:
    # Demo mode: its simulator runs while the configuration is made and its sources read.
    demo = Demo() if opts.demo else None
    try:
        problems: list[str] = []
        config: Config | None = None
        try:
            config = await demo.start() if demo is not None else load_config(opts.config_file)
        except ConfigError as exc:
            problems += exc.problems
        if opts.web_config_file:
            try:
                load_web_config(opts.web_config_file)
            except WebConfigError as exc:
                problems += exc.problems
        if problems or config is None:
            return _problems(problems)
        print(f"{DEMO_CONFIG_NAME if opts.demo else opts.config_file}: OK")
        if opts.web_config_file:
            print(f"{opts.web_config_file}: OK")
        print(summary(config))
        if not opts.config_check_upstream:
            return 0
        return await _check_upstream(config, redactor)
    finally:
        if demo is not None:
            await demo.stop()


async def _check_upstream(config: Config, redact: Redactor) -> int:
    """Read every source once; print what each answered; name each failure on stderr.
    `redact` (the one the logs use too) learns the configuration's secrets first."""
    redact.add(config.secrets())
    checks = await check_accounts(config, redact)
    print(redact(report(checks)), end="", flush=True)
    failed = [c for c in checks if c.cause is not None]
    for check in failed:
        _error(redact(f"{check.source.name}: {check.cause}"))
    return 1 if failed else 0


def serve(opts: Options, shard: Shard, redactor: Redactor) -> int:
    """Load the configuration and the web config, then serve until told to stop."""
    config: Config | None = None
    if not opts.demo:  # demo mode makes its configuration when its simulator starts
        try:
            config = load_config(opts.config_file)
        except ConfigError as exc:
            return _problems(exc.problems)
    web_config: WebConfig | None = None
    if opts.web_config_file:
        try:
            web_config = load_web_config(opts.web_config_file)
        except WebConfigError as exc:
            return _problems(exc.problems)
    host, port = split_listen_address(opts.listen_address)  # checked by parse_options
    service = Service(
        config=config,
        config_file=opts.config_file,
        listen=Listen(opts.listen_address, host, port, web_config),
        shard=shard,
        redactor=redactor,
        storage_path=opts.storage_path,
        demo=opts.demo,
    )
    try:
        asyncio.run(service.run())
    except OSError as exc:
        listen = opts.given["listen_address"]
        return _error(f"{listen.named()}: cannot listen: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass
    return 0


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
        shard = resolve_shard(opts.given["shard_index"], opts.given["shard_count"])
    except UsageError as exc:
        return _error(str(exc))
    if opts.config_check:
        return check_config(opts, redactor)
    return serve(opts, shard, redactor)
