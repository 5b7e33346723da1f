"""A recording served over HTTP: `--replay` and `python -m exporter.simulator --replay FILE`.

Each recorded source is served under `/replay/<source>`, followed by the path its exchanges
were recorded at. A request is matched on (source, method, path, query without its time-valued
parameters): the k-th such request gets the k-th recorded answer, and the last one after that;
one the recording never saw gets a 404 naming it, so that a replay that goes another way than
the recording shows where.

Every time an answer holds (a job's start, completion, creation, update) is moved by one same
amount: the time between the first answer's recording and its replay. The exporter compares
those times with its own clock (a job that started after its first refresh is counted; a
finished job keeps its series for `finished_job_retention`), so the recording plays as if it
were happening now, the first refresh of the replay where the recording's first was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from exporter.recordfile import Exchange, Recording, match_query
from exporter.settings import parse_duration
from exporter.simulator import serve_app

PREFIX = "/replay"
# How long an answer recorded as a timeout is held back when the source's own timeout is not
# known: the exporter's default.
DEFAULT_TIMEOUT = 10.0

_Key = tuple[str, str, str, tuple[tuple[str, str], ...]]
# The fields of a row that hold a time (RFC 3339, as both platforms write them).
TIME_FIELDS = frozenset({"started_at", "completed_at", "created_at", "updated_at"})


def _moved(text: str, offset: timedelta) -> str:
    """An RFC 3339 time moved by `offset`, written with as many decimals as it had."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text  # not a time: as recorded (the exporter skips the row alike)
    if moment.tzinfo is None:
        return text
    digits = len(text.partition(".")[2].rstrip("Z").split("+")[0]) if "." in text else 0
    moved = (moment + offset).strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        moved += "." + f"{(moment + offset).microsecond:06d}"[:digits].ljust(digits, "0")
    return moved + ("Z" if text.endswith("Z") else (moment + offset).strftime("%z"))


def shift_times(value: Any, offset: timedelta) -> Any:
    """`value` (a decoded answer) with every time field moved by `offset`."""
    if isinstance(value, dict):
        return {
            k: _moved(v, offset)
            if k in TIME_FIELDS and isinstance(v, str)
            else shift_times(v, offset)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [shift_times(v, offset) for v in value]
    return value


def _timeout_of(settings: object) -> float:
    try:
        return parse_duration(settings.get("timeout")) if isinstance(settings, dict) else 0.0
    except ValueError:
        return DEFAULT_TIMEOUT


class Replayer:
    """Answers requests from a recording's exchanges."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.answers: dict[_Key, list[Exchange]] = {}
        for exchange in recording.exchanges:
            key = (exchange.source, exchange.method, exchange.path, match_query(exchange.query))
            self.answers.setdefault(key, []).append(exchange)
        self.asked: Counter[_Key] = Counter()
        self.unmatched = 0
        self.offset: timedelta | None = None  # set by the first answer
        # A timeout is replayed as an answer that comes after the source's own deadline.
        self.hold = {
            s.name: (_timeout_of(dict(s.settings)) or DEFAULT_TIMEOUT) + 1.0
            for s in recording.sources
        }

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", PREFIX + "/{source}/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        source = request.match_info["source"]
        path = "/" + request.match_info["path"]
        query = list(request.query.items())
        key = (source, request.method, path, match_query(query))
        recorded = self.answers.get(key)
        if recorded is None:
            self.unmatched += 1
            shown = path + ("?" + urlencode(query) if query else "")
            return web.json_response({"detail": f"not in the recording: {shown}"}, status=404)
        k = self.asked[key]
        self.asked[key] += 1
        exchange = recorded[min(k, len(recorded) - 1)]
        if exchange.error == "timeout":
            await asyncio.sleep(self.hold.get(source, DEFAULT_TIMEOUT))
        if exchange.error is not None:
            # No answer: the connection closes (after the deadline, for a timeout).
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        if self.offset is None:
            then = self.recording.started.timestamp() + exchange.t
            self.offset = timedelta(seconds=time.time() - then)
        body = exchange.body
        if isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(shift_times(body, self.offset)).encode()
        assert exchange.status is not None
        headers = {
            name.title(): value
            for name, value in exchange.headers.items()
            if name in ("content-type", "retry-after")
        }
        return web.Response(status=exchange.status, body=data, headers=headers)


class RunningReplay:
    """A recording served on loopback until stopped."""

    def __init__(self, recording: Recording) -> None:
        self.replayer = Replayer(recording)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def base_url(self, source: str, base_path: str) -> str:
        """Where the exporter reads `source` from: its recorded base path under its prefix."""
        return f"http://127.0.0.1:{self.port}{PREFIX}/{source}{base_path}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner, self.port = await serve_app(self.replayer.app(), host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
