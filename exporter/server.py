"""The HTTP interface: /metrics, /probe, health, readiness, reload and the landing page."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from exporter.collector import ExporterStatus
from exporter.config import ConfigError
from exporter.exposition import Renderer
from exporter.landing import landing_page
from exporter.logs import log
from exporter.runtime import Runtime
from exporter.source import SourceSnapshot

logger = logging.getLogger("exporter.server")

RUNTIME = web.AppKey("runtime", Runtime)
TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
# Taken off Prometheus' scrape timeout so the answer arrives before Prometheus gives up.
TIMEOUT_MARGIN = 0.5
GZIP_MIN_BYTES = 1024
# Level 1: a third of level 6's time on a large answer (0.04 s against 0.12 s for 20 MB) for
# about a third more bytes, which a scrape over a network still sends at a twentieth of the
# plain text's size.
GZIP_LEVEL = 1
# The landing page runs no script and loads nothing: only its own inline styles.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}


def scrape_wait(request: web.Request) -> float | None:
    """How long this scrape may wait: its timeout header minus a margin, None without one."""
    value = request.headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if seconds != seconds or seconds <= 0:  # NaN or nonsense: ignore the header
        return None
    return seconds - TIMEOUT_MARGIN


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            q = params.strip()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


@dataclass(frozen=True)
class Encoded:
    """An answer ready to send: its body (gzipped or not) and content type."""

    body: bytes
    content_type: str
    gzipped: bool


class EncodingCache:
    """The last few encoded answers, keyed by the very snapshot objects they were built from.

    Scrapes that share one refresh (single flight, `min_interval`) get the same snapshot
    objects, so they share one encoding too instead of each paying for it. The entries hold the
    snapshots, so an identity can never be reused by a different snapshot while cached. Bounded
    in entries and in bytes: an answer larger than the byte budget is not kept at all.
    """

    def __init__(self, size: int = 8, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self._entries: list[tuple[tuple[object, ...], Encoded]] = []
        # Encodings under way, so that concurrent scrapes of one refresh wait for one.
        self._pending: list[tuple[tuple[object, ...], asyncio.Task[Encoded]]] = []

    def pending(self, key: tuple[object, ...]) -> asyncio.Task[Encoded] | None:
        return next((task for k, task in self._pending if self._same(k, key)), None)

    def start(self, key: tuple[object, ...], task: asyncio.Task[Encoded]) -> None:
        self._pending.append((key, task))

        def done(finished: asyncio.Task[Encoded]) -> None:
            self._pending = [(k, t) for k, t in self._pending if t is not finished]
            if not finished.cancelled() and finished.exception() is None:
                self.put(key, finished.result())

        task.add_done_callback(done)

    @staticmethod
    def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
        # Snapshots by identity (comparing their contents would cost more than encoding).
        return len(a) == len(b) and all(
            x is y or (not isinstance(x, SourceSnapshot) and x == y)
            for x, y in zip(a, b, strict=True)
        )

    def get(self, key: tuple[object, ...]) -> Encoded | None:
        return next((enc for k, enc in self._entries if self._same(k, key)), None)

    def put(self, key: tuple[object, ...], encoded: Encoded) -> None:
        if len(encoded.body) > self.max_bytes:
            return
        self._entries.insert(0, (key, encoded))
        del self._entries[self.size :]
        total = 0
        for i, (_, entry) in enumerate(self._entries):
            total += len(entry.body)
            if total > self.max_bytes:
                del self._entries[i:]
                break

    @property
    def bytes(self) -> int:
        return sum(len(e.body) for _, e in self._entries)


ENCODINGS = web.AppKey("encodings", EncodingCache)
RENDERER = web.AppKey("renderer", Renderer)


async def _encode(
    renderer: Renderer,
    snapshots: list[SourceSnapshot],
    status: ExporterStatus | None,
    accept: str,
    gzipped: bool,
) -> Encoded:
    """Encode in a worker thread, so that the loop keeps serving health checks and scrapes
    while the library's encoder works; gzip in one too (zlib lets go of the interpreter's
    lock while it compresses)."""
    body, content_type = await asyncio.to_thread(renderer.render, snapshots, status, accept)
    gzipped = gzipped and len(body) >= GZIP_MIN_BYTES
    if gzipped:
        body = await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL, mtime=0)
    return Encoded(body, content_type, gzipped)


async def _exposition(
    request: web.Request,
    snapshots: list[SourceSnapshot],
    status: ExporterStatus | None,
) -> web.Response:
    accept = request.headers.get("Accept", "")
    wants_gzip = _accepts_gzip(request.headers.get("Accept-Encoding", ""))
    cache = request.app[ENCODINGS]
    # The negotiated format, not the raw header, decides: many Accept strings map to one format.
    fmt = choose_encoder(accept)[1]
    key = (*snapshots, status, fmt, wants_gzip)
    encoded = cache.get(key)
    if encoded is None:
        task = cache.pending(key)
        if task is None:
            renderer = request.app[RENDERER]
            task = asyncio.create_task(_encode(renderer, snapshots, status, accept, wants_gzip))
            cache.start(key, task)
        # Shielded: a scraper that disconnects must not cancel what others wait for.
        encoded = await asyncio.shield(task)
    headers = {"Content-Type": encoded.content_type, "Vary": "Accept, Accept-Encoding"}
    if encoded.gzipped:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=encoded.body, headers=headers)


async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    snapshots = await runtime.scrape(wait=scrape_wait(request))
    return await _exposition(request, snapshots, runtime.status)


async def probe(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    name = request.query.get("source") or request.query.get("target")
    if not name:
        return web.Response(
            status=400, text="missing the source parameter: /probe?source=NAME (or target=NAME)\n"
        )
    if name not in runtime.sources:
        shard = runtime.shard_of(name)
        if shard is None:
            return web.Response(status=400, text=f"unknown source {name!r}\n")
        return web.Response(
            status=400,
            text=f"source {name!r} belongs to shard {shard} of {runtime.shard.count}; "
            f"this replica is shard {runtime.shard.index}\n",
        )
    debug = request.query.get("debug", "").strip().lower() in _TRUE
    snapshots = await runtime.scrape([name], wait=scrape_wait(request), traced=debug)
    if debug:
        return await _debug(request.app[RENDERER], runtime, snapshots)
    return await _exposition(request, snapshots, None)


_TRUE = ("true", "1", "yes", "on")


async def _debug(
    renderer: Renderer, runtime: Runtime, snapshots: list[SourceSnapshot]
) -> web.Response:
    """`/probe?debug=true`: the trace of the refresh the answer comes from, then the metrics
    of that answer in the text format; the whole text redacted."""
    (snapshot,) = snapshots
    body, _ = await asyncio.to_thread(renderer.render, snapshots, None, "")
    head = (
        f"debug trace of source {snapshot.name} (platform {snapshot.platform}); "
        f"up: {int(snapshot.up)}" + (f"; error: {snapshot.error}" if snapshot.error else "")
    )
    if snapshot.trace is None:
        trace = (
            "no trace: this scrape's wait ran out before a refresh that records one began "
            "(it follows the refresh that was in flight)\n"
        )
    else:
        trace = snapshot.trace.render()
    text = f"{head}\n\n{trace}\n--- metrics of this answer\n{body.decode('utf-8', 'replace')}"
    return web.Response(
        text=runtime.redactor(text),
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


async def healthy(_: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[RUNTIME].ready:
        return web.Response(text="OK\n")
    return web.Response(status=503, text="not ready\n")


async def reload(request: web.Request) -> web.Response:
    try:
        await request.app[RUNTIME].reload()
    except ConfigError as exc:
        redact = request.app[RUNTIME].redactor
        return web.Response(status=500, text=redact("failed to reload config:\n" + str(exc)) + "\n")
    return web.Response(text="config reloaded\n")


async def index(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    page = landing_page(
        runtime.sources.values(),
        demo=runtime.demo,
        now=time.time(),
        redact=runtime.redactor,
    )
    return web.Response(text=page, content_type="text/html", headers=PAGE_HEADERS)


async def _on_shutdown(app: web.Application) -> None:
    app[RUNTIME].ready = False
    await app[RUNTIME].close()


def make_app(runtime: Runtime, middlewares: Sequence[object] = ()) -> web.Application:
    app = web.Application(middlewares=list(middlewares))  # type: ignore[arg-type]
    app[RUNTIME] = runtime
    app[ENCODINGS] = EncodingCache()
    app[RENDERER] = Renderer()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/probe", probe)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/", index)
    app.on_shutdown.append(_on_shutdown)

    async def _mark_ready(app: web.Application) -> None:
        app[RUNTIME].ready = True
        log(logger, logging.DEBUG, "ready")

    app.on_startup.append(_mark_ready)
    return app
