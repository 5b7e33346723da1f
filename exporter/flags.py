"""The exporter's flags, shared by the exporter's command line and the health check: each flag
with its BULK_EXPORTER_* variable, read from argv or the environment together with where its
value came from, and the parsers that turn a value into what the program uses."""

from __future__ import annotations

import argparse
import enum
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.settings import parse_size

ENV_PREFIX = "BULK_EXPORTER_"
PROGRAM = "bulk-progress-exporter"
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
    """One option's value as the user gave it, and where it came from."""

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


@dataclass(frozen=True)
class ListenAddress:
    """`--web.listen-address`, split once: `host` None means every address."""

    text: str
    host: str | None
    port: int


def parse_listen_address(address: str) -> ListenAddress:
    """`host:port`, `:port` or `[::]:port`; a ValueError says what is wrong, without naming
    the address (its caller knows how the user gave it)."""
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
    return ListenAddress(address, host or None, port)


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


def _shard_index(value: str) -> int | None:
    """A shard number, or None for `auto` (the host name's trailing number, found later)."""
    if value == "auto":
        return None
    if not (value.isascii() and value.isdigit()):
        raise ValueError("must be a shard number from 0, or auto")
    return int(value)


def _boolean(value: str) -> bool:
    word = value.strip().lower()
    if word not in _TRUE | _FALSE:
        raise ValueError("must be true or false")
    return word in _TRUE


def _text(value: str) -> str:
    return value


def _size(value: str) -> int:
    # The configuration's sizes (512KiB, 256MiB, 1GB, or bytes), and never nothing.
    number = parse_size(value)
    if number < 1:
        raise ValueError("must be 1 byte or more")
    return number


@dataclass(frozen=True)
class Flag:
    """One flag: its name, destination, default (as text), help and parser. A switch takes no
    value on the command line; its variable takes true or false."""

    name: str
    dest: str
    default: str | None
    help: str
    parse: Callable[[str], Any] = _text
    metavar: str | None = None
    switch: bool = False


def _switch(name: str, dest: str, text: str) -> Flag:
    return Flag(name, dest, "false", text, _boolean, switch=True)


FLAGS = (
    Flag("--config.file", "config_file", "config.yaml", "configuration file", metavar="PATH"),
    Flag(
        "--web.listen-address",
        "listen_address",
        ":9840",
        "address to listen on: host:port, :port or [::]:port",
        parse_listen_address,
        metavar="ADDR",
    ),
    Flag(
        "--web.config.file",
        "web_config_file",
        None,
        "TLS and basic auth configuration, in exporter-toolkit format",
        metavar="PATH",
    ),
    Flag("--log.level", "log_level", "info", "log level", _choice(LOG_LEVELS)),
    Flag("--log.format", "log_format", "logfmt", "log format", _choice(LOG_FORMATS)),
    Flag(
        "--storage.path",
        "storage_path",
        None,
        "keep each source's state in this directory across restarts",
        metavar="DIR",
    ),
    Flag(
        "--shard.index",
        "shard_index",
        "0",
        "this replica's shard (0-based) or auto: the host name's trailing number",
        _shard_index,
        metavar="N|auto",
    ),
    Flag("--shard.count", "shard_count", "1", "replicas the sources are split over", _count),
    _switch(
        "--config.check",
        "config_check",
        "validate the configuration, print a summary and exit",
    ),
    _switch(
        "--config.check.upstream",
        "config_check_upstream",
        "with --config.check: also read every source once (all shards) and report what each "
        "account answered",
    ),
    _switch("--demo", "demo", "run against the built-in simulator of both APIs"),
    Flag(
        "--record.path",
        "record_path",
        None,
        "write every upstream exchange of this process to this file (JSON Lines), for a bug "
        "report; with --config.check.upstream, the check's",
        metavar="FILE",
    ),
    Flag(
        "--record.max-size",
        "record_max_size",
        "256MiB",
        "past this size the recording stops, with one warning",
        _size,
        metavar="SIZE",
    ),
    _switch(
        "--record.keep-text",
        "record_keep_text",
        "keep free text (error messages, file names) in recorded answers; scrubbed by default",
    ),
    Flag(
        "--replay",
        "replay",
        None,
        "serve a recording: the built-in simulator answers from FILE and the exporter serves "
        "the recorded sources (no configuration file is read)",
        metavar="FILE",
    ),
)


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with status 1, like every other start-up error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


class _FromCommandLine(argparse.Action):
    """Records a value given on the command line as such, under the flag's full name (argparse
    also accepts abbreviations, `--shard.c 2`)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        value = "true" if self.nargs == 0 else str(values)
        setattr(namespace, self.dest, Given(self.option_strings[0], value, Origin.FLAG))


def _from_environment(flag: Flag, env: Mapping[str, str]) -> Given | None:
    """The flag's value when the command line does not give it: its variable, else its
    default (None when it has none)."""
    if env_name(flag.name) in env:
        return Given(flag.name, env[env_name(flag.name)], Origin.VARIABLE)
    if flag.default is None:
        return None
    return Given(flag.name, flag.default, Origin.DEFAULT)


def build_parser(env: Mapping[str, str], prog: str = PROGRAM) -> argparse.ArgumentParser:
    """The exporter's flags. Every flag's value comes back as a `Given` (None: unset, with no
    default): from the command line, else from its variable (the default argparse falls
    back on), else its default. Values are text here; `parse` turns each into its type."""
    parser = _Parser(
        prog=prog,
        description="Prometheus exporter for Kizen bulk actions and FirstPromoter batch "
        f"processes. Every flag can also be set as {ENV_PREFIX}<FLAG>; the flag wins.",
    )
    for flag in FLAGS:
        if flag.switch:
            help = f"{flag.help} (env {env_name(flag.name)})"
        else:
            help = f"{flag.help} (env {env_name(flag.name)}; default: {flag.default})"
        parser.add_argument(
            flag.name,
            dest=flag.dest,
            action=_FromCommandLine,
            nargs=0 if flag.switch else None,
            default=_from_environment(flag, env),
            metavar=None if flag.switch else flag.metavar,
            help=help,
        )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def parse(flag: Flag, given: Given | None) -> Any:
    """The flag's value as its type (None when unset); a bad one raises UsageError naming its
    flag, or its variable and value."""
    if given is None:
        return None
    try:
        return flag.parse(given.value)
    except ValueError as exc:
        raise UsageError(f"{given.named(with_value=False)}: {exc}") from None
