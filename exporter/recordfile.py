"""The recording file (docs/operations.md, "Reporting a problem"): its header, made from a
configuration, and reading a recording back with every line checked.

JSON Lines. Line 1 is the header: which sources were recorded and, for each, every setting that
shapes its requests, written as the configuration file writes them (so that a replay can serve
them again as they were). Then one line per upstream exchange. Nothing here knows a secret:
the header is made from the non-secret settings only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter import __version__
from exporter.config import Config
from exporter.platforms.base import SourceConfig
from exporter.recorder import Recorder
from exporter.settings import Settings, format_duration

FORMAT = 1
# The settings a replay must not take from `settings`: where the source is, set by the replay.
BASE_PATH = "base_path"
ERRORS = ("timeout", "connection")
# Query parameters whose value is a time: a replay matches requests without them, since a
# replay runs at another time than the recording (Kizen's `started_after`).
TIME_PARAMS = frozenset({"started_after"})
# Keys of a source's configuration that are never written: where it is and who it is.
_NOT_SETTINGS = frozenset({"name", "platform", "base_url", "api_key", "api_key_file"})


class RecordingError(Exception):
    """A recording that cannot be replayed; the message names the file, the line and what."""


def _setting(key: str, value: Any) -> Any:
    """A resolved setting as a configuration file writes it."""
    if key in ("timeout", "min_interval", "finished_job_retention", "full_sync_interval"):
        return format_duration(value)
    if key == "rate_limit":
        return value.text
    return value


def source_settings(source: SourceConfig, settings: Settings) -> dict[str, Any]:
    """Every non-secret setting that shapes the source's requests: the resolved tunables, the
    platform's own keys (page size, filters, statuses, incremental) and the base URL's path
    (never its host). The account's identifiers are left out: they are sent as headers."""
    out = {k: _setting(k, v) for k, v in settings if v is not None}
    skipped = set(_NOT_SETTINGS) | set(Settings.model_fields) | set(source.identifiers())
    out.update(source.model_dump(mode="json", exclude_none=True, exclude=skipped))
    out[BASE_PATH] = urlsplit(source.url).path
    return out


def header(config: Config, names: Iterable[str], started: datetime) -> dict[str, Any]:
    """Line 1 of a recording of the named sources of `config`."""
    wanted = set(names)
    return {
        "recording": FORMAT,
        "version": __version__,
        "started": started.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "sources": [
            {
                "name": s.name,
                "platform": s.platform_name,
                "settings": source_settings(s, config.settings(s)),
            }
            for s in config.sources
            if s.name in wanted
        ],
    }


def start(recorder: Recorder, config: Config, names: Iterable[str]) -> None:
    """Start `recorder` on the named sources of `config` (the sources this process reads)."""
    hosts = [urlsplit(s.url).hostname or "" for s in config.sources]
    recorder.start(header(config, names, datetime.now(UTC)), hosts)


def match_query(query: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """What of a query a replay matches on: every parameter but the time-valued ones, in
    order of name (a client may build the same query in another order)."""
    return tuple(sorted((k, v) for k, v in query if k not in TIME_PARAMS))


@dataclass(frozen=True)
class Exchange:
    """One recorded upstream exchange: an answer (status, headers, body) or an `error`."""

    t: float
    source: str
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    status: int | None
    headers: Mapping[str, str]
    body: Any
    error: str | None


@dataclass(frozen=True)
class RecordedSource:
    name: str
    platform: str
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class Recording:
    """A recording read back: its header's fields and its exchanges, in file order."""

    path: str
    version: str
    started: datetime
    sources: tuple[RecordedSource, ...]
    exchanges: tuple[Exchange, ...]


def _problem(path: str, line: int, what: str) -> RecordingError:
    return RecordingError(f"{path}: line {line}: {what}")


def _header(path: str, data: Any) -> tuple[str, datetime, tuple[RecordedSource, ...]]:
    if not isinstance(data, dict) or "recording" not in data:
        raise _problem(path, 1, 'not a recording header (no "recording" key)')
    if data["recording"] != FORMAT:
        raise _problem(
            path,
            1,
            f"unknown header version {json.dumps(data['recording'])} "
            f"(this exporter reads version {FORMAT})",
        )
    try:
        started = datetime.fromisoformat(str(data.get("started")).replace("Z", "+00:00"))
    except ValueError:
        raise _problem(path, 1, '"started" is not an RFC 3339 time') from None
    raw = data.get("sources")
    if not isinstance(raw, list):
        raise _problem(path, 1, '"sources" is not a list')
    sources = []
    for i, entry in enumerate(raw):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("platform"), str)
            or not isinstance(entry.get("settings"), dict)
        ):
            raise _problem(path, 1, f"sources[{i}] needs a name, a platform and settings")
        sources.append(RecordedSource(entry["name"], entry["platform"], entry["settings"]))
    return str(data.get("version", "")), started, tuple(sources)


def _exchange(path: str, line: int, data: Any, names: set[str]) -> Exchange:
    if not isinstance(data, dict):
        raise _problem(path, line, "not a JSON object")
    source, request_path, method = data.get("source"), data.get("path"), data.get("method")
    if source not in names:
        raise _problem(path, line, f"source {json.dumps(source)} is not in the header")
    if not isinstance(method, str) or not isinstance(request_path, str):
        raise _problem(path, line, "needs a method and a path")
    query = data.get("query", [])
    if not isinstance(query, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in query
    ):
        raise _problem(path, line, '"query" is not a list of [key, value] text pairs')
    t = data.get("t", 0)
    if not isinstance(t, int | float) or isinstance(t, bool):
        raise _problem(path, line, '"t" is not a number')
    error = data.get("error")
    status = data.get("status")
    headers = data.get("headers", {})
    if error is not None:
        if error not in ERRORS:
            raise _problem(path, line, f'"error" must be one of {", ".join(ERRORS)}')
        status, headers = None, {}
    elif not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise _problem(path, line, 'needs an HTTP "status" (or an "error")')
    elif not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise _problem(path, line, '"headers" is not an object of text values')
    return Exchange(
        float(t),
        str(source),
        method,
        request_path,
        tuple((k, v) for k, v in query),
        status,
        headers,
        data.get("body"),
        error,
    )


def load_recording(path: str | Path) -> Recording:
    """Read and check a whole recording; RecordingError names the file, the line and what is
    wrong (a last line cut short, a line that is not JSON, an unknown header version)."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise RecordingError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if not raw:
        raise RecordingError(f"{name}: empty: a recording starts with its header line")
    lines = raw.split(b"\n")
    # A recording is written a whole line at a time, each ending in a newline; a last line
    # without one was cut (a full disk, a copy stopped half-way).
    cut = lines[-1] != b""
    if not cut:
        lines.pop()
    parsed: list[Any] = []
    for number, line in enumerate(lines, start=1):
        try:
            parsed.append(json.loads(line))
        except (ValueError, RecursionError) as exc:
            if cut and number == len(lines):
                raise _problem(name, number, "cut short: the last line is not whole") from None
            raise _problem(name, number, f"not JSON ({exc})") from None
    if cut:
        raise _problem(name, len(lines), "cut short: the last line has no end of line")
    version, started, sources = _header(name, parsed[0])
    names = {s.name for s in sources}
    exchanges = tuple(
        _exchange(name, number, data, names) for number, data in enumerate(parsed[1:], start=2)
    )
    return Recording(name, version, started, sources, exchanges)
