"""HTTP to one upstream account: rate limit, concurrency cap, deadline, retries, body limits.

Every attempt is counted by (endpoint, code) for `bulk_api_requests_total`, where code is the
HTTP status, `timeout` (no answer before the deadline) or `error` (no answer at all).
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from exporter import __version__
from exporter.logs import log
from exporter.ratelimit import RateLimitWait, TokenBucket
from exporter.redact import REDACTOR

logger = logging.getLogger("exporter.upstream")

DEFAULT_MAX_BODY = 32 * 1024 * 1024
_SNIPPET = 200
_MAX_ATTEMPTS = 4
_BACKOFF_BASE = 0.25
_BACKOFF_CAP = 4.0
USER_AGENT = f"bulk-progress-exporter/{__version__}"

Params = Sequence[tuple[str, str]] | Mapping[str, str]

# Set inside a background full sync: its requests yield rate-limit tokens and connection slots
# to scrapes. A context variable, so every task the sync starts inherits it.
BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("background", default=False)


class UpstreamError(Exception):
    """The upstream could not give a usable answer; the message is already redacted."""

    def __init__(self, endpoint: str, reason: str, status: int | None = None) -> None:
        self.endpoint = endpoint
        self.reason = REDACTOR(reason)
        self.status = status
        super().__init__(f"{endpoint}: {self.reason}")


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


def _snippet(body: bytes) -> str:
    text = body[:_SNIPPET].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text + ("…" if len(body) > _SNIPPET else "")


def decode_json(endpoint: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        # RecursionError: deeply nested JSON is refused rather than crashing the refresh.
        detail = "nested too deeply" if isinstance(exc, RecursionError) else _snippet(body)
        raise UpstreamError(endpoint, f"response is not valid JSON: {detail}") from None


class Upstream:
    """One aiohttp session and request budget for one configured source."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        bucket: TokenBucket,
        max_concurrency: int,
        *,
        source: str,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **headers}
        self.bucket = bucket
        self.max_concurrency = max_concurrency
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self.source = source
        self.max_body = max_body
        self.requests: Counter[tuple[str, str]] = Counter()
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=max(self.max_concurrency, 1) * 2)
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=connector,
                # The per-request deadline governs; no separate aiohttp total timeout.
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    @property
    def workers(self) -> int:
        """How many requests one read may keep in flight: all slots, or half in background."""
        if BACKGROUND.get():
            return max(1, self.max_concurrency // 2)
        return self.max_concurrency

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def get_json(self, endpoint: str, path: str, params: Params, deadline: float) -> Any:
        """GET base_url+path and decode its JSON body, retrying what is worth retrying.

        `deadline` is an event-loop time; nothing here waits past it.
        """
        loop = asyncio.get_running_loop()
        url = self.base_url + path
        attempt = 0
        while True:
            attempt += 1
            status, body, retry_after = await self._attempt(endpoint, url, params, deadline)
            if status == 200:
                return decode_json(endpoint, body)
            retryable = status is None or status == 429 or status >= 500
            reason = (
                "connection failed"
                if status is None
                else f"HTTP {status}: {_snippet(body)}"
                if body
                else f"HTTP {status}"
            )
            if status == 404:
                raise NotFound(endpoint, reason, status)
            if not retryable or attempt >= _MAX_ATTEMPTS:
                raise UpstreamError(endpoint, reason, status)
            backoff = random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1)))
            delay = max(backoff, retry_after or 0.0)
            if loop.time() + delay >= deadline:
                raise UpstreamError(
                    endpoint, f"{reason} (no time left to retry before the deadline)", status
                )
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

    async def _attempt(
        self, endpoint: str, url: str, params: Params, deadline: float
    ) -> tuple[int | None, bytes, float | None]:
        """One request. Returns (status, body, Retry-After); status None = connection failed."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                await self._semaphore.acquire()
        except TimeoutError:
            raise UpstreamError(endpoint, "deadline reached waiting for a request slot") from None
        try:
            try:
                await self.bucket.acquire(deadline, background=BACKGROUND.get())
            except RateLimitWait as exc:
                raise UpstreamError(endpoint, str(exc)) from None
            started = False
            try:
                async with asyncio.timeout_at(deadline):
                    started = True
                    # No redirects: one could carry the key's headers to another host.
                    async with self._client().get(
                        url, params=params, allow_redirects=False
                    ) as response:
                        body = await self._read_body(endpoint, response)
                        code = response.status
                        retry_after = _retry_after(response.headers.get("Retry-After"))
            except TimeoutError:
                if started:
                    self.requests[(endpoint, "timeout")] += 1
                raise UpstreamError(endpoint, "no answer before the deadline") from None
            except UpstreamError:
                raise
            except (aiohttp.ClientError, OSError) as exc:
                self.requests[(endpoint, "error")] += 1
                log(
                    logger,
                    logging.DEBUG,
                    "upstream connection failed",
                    source=self.source,
                    endpoint=endpoint,
                    err=f"{type(exc).__name__}: {exc}",
                )
                if loop.time() >= deadline:
                    raise UpstreamError(endpoint, f"connection failed: {exc}") from None
                return None, b"", None
            self.requests[(endpoint, str(code))] += 1
            return code, body, retry_after
        finally:
            self._semaphore.release()

    async def _read_body(self, endpoint: str, response: aiohttp.ClientResponse) -> bytes:
        length = response.content_length
        if length is not None and length > self.max_body:
            self.requests[(endpoint, str(response.status))] += 1
            raise UpstreamError(
                endpoint, f"response of {length} bytes is over the {self.max_body}-byte limit"
            )
        chunks = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            chunks += chunk
            if len(chunks) > self.max_body:
                self.requests[(endpoint, str(response.status))] += 1
                raise UpstreamError(
                    endpoint, f"response is over the {self.max_body}-byte limit; stopped reading"
                )
        return bytes(chunks)
