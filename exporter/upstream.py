"""HTTP to one upstream account: rate limit, concurrency cap, deadline, retries, body limits.

Every request sent is counted once by (endpoint, code) for `bulk_api_requests_total`, where
code is the HTTP status, `timeout` (no answer before the deadline) or `error` (no answer at
all). Waiting for a token or a connection slot sends nothing and counts nothing.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from exporter import __version__
from exporter.logs import log
from exporter.ratelimit import RateLimitWait, TokenBucket
from exporter.recorder import KEPT_HEADERS, Recorder
from exporter.redact import Redact
from exporter.trace import RequestRecord, Trace

logger = logging.getLogger("exporter.upstream")

SNIPPET_LENGTH = 200
# An error body is redacted before it is cut to SNIPPET_LENGTH; only its start is looked at.
_SNIPPET_SCAN = 64 * 1024
_MAX_ATTEMPTS = 4
_BACKOFF_BASE = 0.25
_BACKOFF_CAP = 4.0
# How long an idle upstream connection is kept for the next scrape. aiohttp's default (15 s)
# is shorter than the usual scrape interval (Prometheus' default is 1 min): every scrape would
# open every connection again, a TCP and TLS handshake each, 400 a scrape for 200 sources.
# Two minutes covers a 1-minute interval with room for a late scrape, and stays under the
# idle timeouts of the load balancers and NAT gateways that drop a connection without a word
# (4 minutes and more). A server that closes sooner says so, and its connection is not
# reused; one that closes just as a request goes out has that GET sent again once, on another
# connection, by aiohttp itself (from 3.10; HTTP/1.1 allows it for idempotent methods).
KEEPALIVE = 120.0
USER_AGENT = f"bulk-progress-exporter/{__version__}"

Params = Sequence[tuple[str, str]] | Mapping[str, str]


@dataclass
class Progress:
    """How far a paged read has got, reported by the client as pages arrive, so that whoever
    waits for the read can tell early whether it will finish in time. `on_page`, when set, is
    called after each report, from inside the read's own step (before its next pages go out)."""

    pages: int | None = None  # how many pages the read expects, once known
    done: int = 0
    workers: int = 1
    on_page: Callable[[], None] | None = None

    def started(self, pages: int, workers: int) -> None:
        """Page 1 is in: the read expects `pages` pages, `workers` at a time."""
        self.pages, self.workers, self.done = pages, workers, 1
        self._notify()

    def advance(self) -> None:
        """One more page is in."""
        self.done += 1
        self._notify()

    def _notify(self) -> None:
        if self.on_page is not None:
            try:
                self.on_page()
            except Exception:  # a watcher must never break the read it watches
                logger.exception("progress watcher failed")


@dataclass(frozen=True)
class Budget:
    """What a read may spend: until `deadline` (an event-loop time), and whether it is
    background work (a long full read) that yields tokens and connection slots to scrapes.
    `progress`, when given, is where a paged read reports how far it has got; `trace`, when
    given, records every request and row of the read (see exporter/trace.py)."""

    deadline: float
    background: bool = False
    progress: Progress | None = None
    trace: Trace | None = None


class UpstreamError(Exception):
    """The upstream could not give a usable answer. Whoever raises it has redacted `reason`."""

    def __init__(self, endpoint: str, reason: str, status: int | None = None) -> None:
        self.endpoint = endpoint
        self.reason = reason
        self.status = status
        super().__init__(f"{endpoint}: {reason}")


class NotFound(UpstreamError):
    """A 404: an unknown id, or (for Kizen) a page past the end."""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def snippet(body: bytes, redact: Redact) -> str:
    """The start of a body for an error message: redacted first, then shortened, so a secret
    that straddles the cut can never be shown in part."""
    text = " ".join(body[:_SNIPPET_SCAN].decode("utf-8", "replace").split())
    text = redact(text)
    if len(text) > SNIPPET_LENGTH:
        return text[:SNIPPET_LENGTH] + "…"
    return text


def _kept_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    """The headers a recording keeps (exporter.recorder.KEPT_HEADERS), when present."""
    found = {name: response.headers.get(name) for name in KEPT_HEADERS}
    return {name: value for name, value in found.items() if value is not None}


@dataclass(slots=True)
class _Answer:
    """The outcome of sending one request. `code` is what `bulk_api_requests_total` counts."""

    code: str
    status: int | None = None
    body: bytes = b""
    retry_after: float | None = None
    failure: str | None = None  # set when no usable answer came (timeout, error, too large)
    ms: float = 0.0  # from sending to the end of the body
    waited: float = 0.0  # seconds waited for a rate-limit token
    # The answer's Content-Type and Retry-After as sent, kept only while recording.
    headers: dict[str, str] | None = None


class ConnectionPool:
    """One pool of connections and one DNS cache for the sources of a runtime.

    Sources on one host (an agency's many accounts) reuse each other's kept-alive
    connections instead of each holding its own; everything that is a source's own (headers
    and credentials, rate limit, concurrency cap, deadline) stays on its `Upstream`, which
    sends every request with its own headers over whichever connection is free. Unbounded
    here: each source's concurrency cap bounds what it has in flight.
    """

    def __init__(self) -> None:
        self._connector: aiohttp.TCPConnector | None = None

    def connector(self) -> aiohttp.TCPConnector:
        if self._connector is None or self._connector.closed:
            self._connector = aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE
            )
        return self._connector

    async def close(self) -> None:
        if self._connector is not None and not self._connector.closed:
            await self._connector.close()


class Upstream:
    """One aiohttp session, token bucket, connection cap and request counter for one source;
    its connections come from a shared `ConnectionPool` when given one."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        bucket: TokenBucket,
        max_concurrency: int,
        *,
        source: str,
        max_body: int,
        redact: Redact,
        pool: ConnectionPool | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.pool = pool
        # What a trace shows of a request: the path and query, never the host or userinfo.
        self._base_path = urlsplit(self.base_url).path
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **headers}
        self.bucket = bucket
        self.max_concurrency = max_concurrency
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self.source = source
        self.max_body = max_body
        self.redact = redact
        self.requests: Counter[tuple[str, str]] = Counter()
        # Seconds requests spent waiting for the rate-limit bucket, for
        # bulk_rate_limit_wait_seconds_total.
        self.rate_limit_wait = 0.0
        # `--record.path`: where every exchange is handed over (None: not recording).
        self.recorder: Recorder | None = None
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self.pool is not None:
                connector, owned = self.pool.connector(), False
            else:
                connector, owned = (
                    aiohttp.TCPConnector(
                        limit=max(self.max_concurrency, 1) * 2, keepalive_timeout=KEEPALIVE
                    ),
                    True,
                )
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=connector,
                connector_owner=owned,
                # The per-request deadline governs; no separate aiohttp total timeout.
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    def workers(self, budget: Budget) -> int:
        """How many requests one read may keep in flight: all slots, or half in background."""
        if budget.background:
            return max(1, self.max_concurrency // 2)
        return self.max_concurrency

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def decode_json(self, endpoint: str, body: bytes) -> Any:
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            # RecursionError: deeply nested JSON is refused rather than crashing the refresh.
            if isinstance(exc, RecursionError):
                detail = "nested too deeply"
            else:
                detail = snippet(body, self.redact)
            raise UpstreamError(endpoint, f"response is not valid JSON: {detail}") from None

    async def get_json(self, endpoint: str, path: str, params: Params, budget: Budget) -> Any:
        """GET base_url+path and decode its JSON body, retrying what is worth retrying,
        never waiting past the budget's deadline."""
        loop = asyncio.get_running_loop()
        url = self.base_url + path
        trace = budget.trace
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await self._send(endpoint, url, params, budget)
            except UpstreamError as exc:
                if trace is not None:
                    self._note(
                        trace, endpoint, path, params, _Answer("not sent"), attempt, exc.reason
                    )
                raise
            self.requests[(endpoint, answer.code)] += 1
            if self.recorder is not None:
                self._record(path, params, answer)
            if answer.status == 200 and answer.failure is None:
                if trace is not None:
                    self._note(trace, endpoint, path, params, answer, attempt)
                return self.decode_json(endpoint, answer.body)
            reason = self._reason(answer)
            if answer.status == 404:
                if trace is not None:
                    self._note(trace, endpoint, path, params, answer, attempt, "not found")
                raise NotFound(endpoint, reason, 404)
            retryable = answer.code == "error" or answer.status == 429
            retryable = retryable or (answer.status is not None and answer.status >= 500)
            if answer.failure is not None and answer.code != "error":
                retryable = False  # a timeout or an oversized body will not improve
            if not retryable or attempt >= _MAX_ATTEMPTS:
                if trace is not None:
                    self._note(trace, endpoint, path, params, answer, attempt, f"gave up: {reason}")
                raise UpstreamError(endpoint, reason, answer.status)
            backoff = random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1)))
            delay = max(backoff, answer.retry_after or 0.0)
            if loop.time() + delay >= budget.deadline:
                if trace is not None:
                    why = f"gave up, no time left to retry before the deadline: {reason}"
                    self._note(trace, endpoint, path, params, answer, attempt, why)
                raise UpstreamError(
                    endpoint,
                    f"{reason} (no time left to retry before the deadline)",
                    answer.status,
                )
            if trace is not None:
                why = f"retried after {delay:.2f}s: {reason}"
                self._note(trace, endpoint, path, params, answer, attempt, why)
            log(
                logger,
                logging.DEBUG,
                "retrying upstream request",
                source=self.source,
                endpoint=endpoint,
                attempt=attempt,
                delay=f"{delay:.2f}s",
                reason=reason,
            )
            await asyncio.sleep(delay)

    def _note(
        self,
        trace: Trace,
        endpoint: str,
        path: str,
        params: Params,
        answer: _Answer,
        attempt: int,
        note: str = "",
    ) -> None:
        trace.request(
            RequestRecord(
                endpoint,
                self._base_path + path,
                tuple(params.items()) if isinstance(params, Mapping) else tuple(params),
                answer.code,
                len(answer.body),
                answer.ms,
                attempt,
                answer.waited,
                note,
            )
        )

    def _record(self, path: str, params: Params, answer: _Answer) -> None:
        assert self.recorder is not None
        full = self._base_path + path
        if answer.status is None:
            error = "timeout" if answer.code == "timeout" else "connection"
            self.recorder.exchange(self.source, full, params, error=error)
        else:
            self.recorder.exchange(
                self.source, full, params, answer.status, answer.headers, answer.body
            )

    def _reason(self, answer: _Answer) -> str:
        if answer.failure is not None:
            return answer.failure
        if answer.body:
            return f"HTTP {answer.status}: {snippet(answer.body, self.redact)}"
        return f"HTTP {answer.status}"

    async def _send(self, endpoint: str, url: str, params: Params, budget: Budget) -> _Answer:
        """Wait for a connection slot and a token, then send one request."""
        if self._semaphore.locked():
            try:
                async with asyncio.timeout_at(budget.deadline):
                    await self._semaphore.acquire()
            except TimeoutError:
                raise UpstreamError(
                    endpoint, "deadline reached waiting for a request slot"
                ) from None
        else:
            # A free slot is taken without waiting, so without a deadline to arm and cancel:
            # the usual case, hundreds of times a scrape on a replica of many sources.
            await self._semaphore.acquire()
        try:
            try:
                waited = await self.bucket.acquire(budget.deadline, background=budget.background)
                self.rate_limit_wait += waited
            except RateLimitWait as exc:
                raise UpstreamError(endpoint, str(exc)) from None
            sent = time.perf_counter()
            answer = await self._exchange(endpoint, url, params, budget.deadline)
            answer.ms, answer.waited = (time.perf_counter() - sent) * 1000, waited
            return answer
        finally:
            self._semaphore.release()

    async def _exchange(self, endpoint: str, url: str, params: Params, deadline: float) -> _Answer:
        """The HTTP exchange itself, its outcome as an `_Answer` (never raised)."""
        try:
            async with (
                asyncio.timeout_at(deadline),
                # No redirects: one could carry the key's headers to another host.
                self._client().get(url, params=params, allow_redirects=False) as response,
            ):
                status = response.status
                too_large = await self._read_body(response)
                kept = None if self.recorder is None else _kept_headers(response)
                if isinstance(too_large, str):
                    return _Answer(str(status), status, failure=too_large, headers=kept)
                return _Answer(
                    str(status),
                    status,
                    too_large,
                    _retry_after(response.headers.get("Retry-After")),
                    headers=kept,
                )
        except TimeoutError:
            return _Answer("timeout", failure="no answer before the deadline")
        except asyncio.CancelledError:
            # Cancelled from outside while sent (the refresh's backstop, which a busy loop
            # can run in the same turn as this request's own deadline, or shutdown): the
            # request was made and got no answer, so it is counted as one that timed out.
            self.requests[(endpoint, "timeout")] += 1
            if self.recorder is not None:
                path = urlsplit(url).path
                self.recorder.exchange(self.source, path, params, error="timeout")
            raise
        except (aiohttp.ClientError, OSError) as exc:
            detail = self.redact(f"{type(exc).__name__}: {exc}")
            log(
                logger,
                logging.DEBUG,
                "upstream connection failed",
                source=self.source,
                endpoint=endpoint,
                err=detail,
            )
            return _Answer("error", failure=f"connection failed: {detail}")

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes | str:
        """The body, or why it was not read whole (over `max_body`)."""
        length = response.content_length
        if length is not None and length > self.max_body:
            return f"response of {length} bytes is over the {self.max_body}-byte limit"
        # A compressed body's length is that of its packed bytes; aiohttp unpacks as it reads,
        # so only the loop below, counting what comes out, bounds it.
        packed = response.headers.get("Content-Encoding", "identity") not in ("identity", "")
        if length is not None and not packed:
            # The announced length is the body's own: read it in one call, no chunk loop.
            return await response.read()
        chunks = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            chunks += chunk
            if len(chunks) > self.max_body:
                return f"response is over the {self.max_body}-byte limit; stopped reading"
        return bytes(chunks)
