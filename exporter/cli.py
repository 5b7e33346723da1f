"""Command line: the flags' values (read by exporter.flags) checked into `Options`, this
replica's shard, `--config.check`, and handing over to the service."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter import __version__, garbage, logs
from exporter.accounts import check_accounts, report
from exporter.config import Config, ConfigError, load_config, summary
from exporter.demo import DEMO_CONFIG_NAME, Demo
from exporter.flags import (
    FLAGS,
    Given,
    ListenAddress,
    Origin,
    UsageError,
    build_parser,
    env_name,
    parse,
)
from exporter.recorder import Recorder, RecordError
from exporter.recordfile import Recording, RecordingError, load_recording
from exporter.recordfile import start as start_recording
from exporter.redact import Redactor
from exporter.replay import Replay, replay_config_name
from exporter.runtime import Shard
from exporter.service import Listen, Service
from exporter.webconfig import WebConfig, WebConfigError, load_web_config


@dataclass(frozen=True)
class Options:
    """The parsed command line, every value checked and of its type; `given` says, per flag
    with a value (by its destination), how the user gave it, for errors found later."""

    config_file: str
    listen_address: ListenAddress
    web_config_file: str | None
    log_level: str
    log_format: str
    storage_path: str | None
    shard_index: int | None  # None: auto, the host name's trailing number
    shard_count: int
    config_check: bool
    config_check_upstream: bool
    demo: bool
    record_path: str | None
    record_max_size: int
    record_keep_text: bool
    replay: str | None
    version: bool
    given: Mapping[str, Given]


def parse_options(argv: Sequence[str] | None, env: Mapping[str, str]) -> Options:
    """Parse and check every value; a bad one names its flag, or its variable and value."""
    found = vars(build_parser(env).parse_args(argv))
    values: dict[str, Any] = {"version": found.pop("version")}
    given: dict[str, Given] = {}
    for flag in FLAGS:
        values[flag.dest] = parse(flag, found[flag.dest])
        if found[flag.dest] is not None:
            given[flag.dest] = found[flag.dest]
    upstream = given["config_check_upstream"]
    if values["config_check_upstream"] and not values["config_check"]:
        # Named by what it means, whichever word (1, yes, on) switched it on.
        named = (
            upstream.flag if upstream.origin is Origin.FLAG else f"{env_name(upstream.flag)}=true"
        )
        raise UsageError(
            f"{named} needs --config.check: it reads every source after the configuration "
            "is checked, and exits"
        )
    if values["replay"] is not None and values["demo"]:
        raise UsageError("--replay and --demo cannot go together: each is its own simulator")
    return Options(**values, given=given)


def _trailing_number(given: Given, name: str) -> int:
    digits = len(name) - len(name.rstrip("0123456789"))
    if digits == 0:
        raise UsageError(f"{given.named()}: the host name {name!r} does not end in a number")
    return int(name[-digits:])


def resolve_shard(opts: Options, hostname: str | None = None) -> Shard:
    """`--shard.index`/`--shard.count` as a Shard; `auto` takes the host name's trailing
    number (a StatefulSet pod's ordinal). With one shard, `auto` is 0 whatever the host name:
    a single replica owns every source, so its name (a container id, a Deployment pod's) does
    not matter."""
    index_given = opts.given["shard_index"]
    count_given = opts.given["shard_count"]
    total = opts.shard_count
    number = opts.shard_index
    if number is None:
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


@dataclass(frozen=True)
class Recordings:
    """What `--record.*` and `--replay` opened at start-up: the recording being written, the
    one being replayed."""

    recorder: Recorder | None = None
    replay: Recording | None = None


def check_config(
    opts: Options, redactor: Redactor | None = None, recordings: Recordings | None = None
) -> int:
    """`--config.check`: the configuration the exporter would serve (the file, or the demo's
    with `--demo`, or the replay's with `--replay`) and the `--web.config.file` when given are
    OK, with a redacted summary (0), or the problems of both, one a line (1). With
    `--config.check.upstream`, then every source read once: 0 when each was read, 1 naming
    each that was not and why; `--record.path` records those reads."""
    return asyncio.run(_check_config(opts, redactor or Redactor(), recordings or Recordings()))


async def _check_config(opts: Options, redactor: Redactor, recordings: Recordings) -> int:
    # Demo or replay mode: its simulator runs while the configuration is made and read.
    demo: Demo | Replay | None = None
    name = opts.config_file
    if recordings.replay is not None:
        demo, name = Replay(recordings.replay), replay_config_name(recordings.replay)
    elif opts.demo:
        demo, name = Demo(), DEMO_CONFIG_NAME
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
        print(f"{name}: OK")
        if opts.web_config_file:
            print(f"{opts.web_config_file}: OK")
        print(summary(config))
        if not opts.config_check_upstream:
            return 0
        if recordings.recorder is not None:
            # The check reads every source, of all shards: each is recorded.
            start_recording(recordings.recorder, config, [s.name for s in config.sources])
        return await _check_upstream(config, redactor, recordings.recorder)
    finally:
        if demo is not None:
            await demo.stop()


async def _check_upstream(
    config: Config, redact: Redactor, recorder: Recorder | None = None
) -> int:
    """Read every source once; print what each answered; name each failure on stderr.
    `redact` (the one the logs use too) learns the configuration's secrets first."""
    redact.add(config.secrets())
    checks = await check_accounts(config, redact, recorder)
    print(redact(report(checks)), end="", flush=True)
    failed = [c for c in checks if c.cause is not None]
    for check in failed:
        _error(redact(f"{check.source.name}: {check.cause}"))
    return 1 if failed else 0


def serve(
    opts: Options, shard: Shard, redactor: Redactor, recordings: Recordings | None = None
) -> int:
    """Load the configuration and the web config, then serve until told to stop."""
    recordings = recordings or Recordings()
    config: Config | None = None
    # Demo and replay modes make their configuration when their simulator starts.
    if not opts.demo and recordings.replay is None:
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
    service = Service(
        config=config,
        config_file=opts.config_file,
        listen=Listen(opts.listen_address, web_config),
        shard=shard,
        redactor=redactor,
        storage_path=opts.storage_path,
        demo=opts.demo,
        on_sources=garbage.tune,
        recorder=recordings.recorder,
        replay=recordings.replay,
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
        shard = resolve_shard(opts)
    except UsageError as exc:
        return _error(str(exc))
    try:
        recordings = open_recordings(opts, redactor)
    except (RecordingError, RecordError) as exc:
        return _error(str(exc))
    try:
        if opts.config_check:
            return check_config(opts, redactor, recordings)
        return serve(opts, shard, redactor, recordings)
    finally:
        if recordings.recorder is not None:
            recordings.recorder.close()


def open_recordings(opts: Options, redactor: Redactor) -> Recordings:
    """The recording to replay, read and checked whole, then the one to write, opened (so a
    path that cannot be written stops the exporter before it serves)."""
    replay = load_recording(opts.replay) if opts.replay is not None else None
    recorder = None
    if opts.record_path is not None:
        try:
            recorder = Recorder(
                opts.record_path,
                opts.record_max_size,
                redactor,
                keep_text=opts.record_keep_text,
            )
        except RecordError as exc:
            raise RecordError(
                f"{opts.given['record_path'].named(with_value=False)}: {exc}"
            ) from None
    return Recordings(recorder, replay)
