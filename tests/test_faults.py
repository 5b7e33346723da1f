"""The fault-injection suite: every way an upstream can misbehave, on one platform at a time.

Each case: the exporter stays up, /metrics answers 200 and passes `promtool check metrics`, the
failing source shows `bulk_up 0` with no stale gauges, the other source is untouched, and the
failing one recovers when the fault clears.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from exporter import exposition
from exporter.ratelimit import TokenBucket
from exporter.settings import RateLimit
from exporter.simulator import Credentials, Fault
from tests.conftest import Client, ExporterFactory, SimHandle, last_error
from tests.helpers import (
    Samples,
    capture_logs,
    one,
    parse_samples,
    promtool_check_metrics,
    scrape_with_text,
    seed,
    select,
    source_yaml,
)

TIMEOUT_HEADERS = {"X-Prometheus-Scrape-Timeout-Seconds": "3"}  # a 2.5s deadline
GAUGES = (
    "bulk_jobs",
    "bulk_pending_items",
    "bulk_job_info",
    "bulk_job_items",
    "bulk_job_progress_ratio",
    "bulk_job_start_timestamp_seconds",
    "bulk_job_last_change_timestamp_seconds",
)


@dataclass
class Case:
    fault: Fault | None = None
    code: str | None = None  # a bulk_api_requests_total code the failure must show
    # Instead of a simulator fault: how to break the source's configuration.
    base_url: Callable[[SimHandle, str], str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def closed_port_url(sim: SimHandle, platform: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing-listens-here"


class FailingResolver(AbstractResolver):
    """Every lookup fails, as when DNS is down; no packet leaves the machine."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[ResolveResult]:
        raise OSError(f"simulated DNS failure for {host}")

    async def close(self) -> None:
        return None


BIG = b'{"count": 1, "next": null, "results": [' + b" " * (50 * 1024 * 1024) + b"]}"
NESTED = b"[" * 100_000 + b"]" * 100_000
CREDS = Credentials()
# Upstreams that echo the key back in their error pages.
ECHO = f"<html>invalid key {CREDS.kizen_api_key} / Bearer {CREDS.fp_api_key}</html>".encode()
CASES = {
    "echoes-the-key": Case(Fault(status=400, body=ECHO, content_type="text/html"), "400"),
    "latency-beyond-deadline": Case(Fault(status=200, delay=4.0), "timeout"),
    "500": Case(Fault(status=500), "500"),
    "502": Case(
        Fault(status=502, body=b"<html>Bad Gateway</html>", content_type="text/html"), "502"
    ),
    "503": Case(Fault(status=503), "503"),
    "429-retry-after": Case(Fault(status=429, headers={"Retry-After": "1"}), "429"),
    "429-no-retry-after": Case(Fault(status=429), "429"),
    "401": Case(Fault(status=401), "401"),
    "403": Case(Fault(status=403), "403"),
    "html-200": Case(
        Fault(
            status=200, body=b"<!DOCTYPE html><p>Down for maintenance</p>", content_type="text/html"
        ),
        "200",
    ),
    "truncated-json": Case(Fault(status=200, body=b'{"count": 5, "results": [{"id": "a'), "200"),
    "wrong-json-types": Case(Fault(status=200, body=b'{"count": "many", "results": {}}'), "200"),
    "50mb-body": Case(Fault(status=200, body=BIG), "200"),
    "deeply-nested-json": Case(Fault(status=200, body=NESTED), "200"),
    "slow-drip": Case(
        Fault(status=200, body=b'{"count": 0, "results": []}' * 3, drip=0.2), "timeout"
    ),
    "connection-dropped": Case(Fault(close=True), "error"),
    "connection-refused": Case(base_url=closed_port_url, code="error"),
    "dns-failure": Case(base_url=lambda sim, p: "http://upstream.invalid/api", code="error"),
}


SEEN: list[str] = []  # every body the suite received, grepped for secrets


async def scrape_and_keep(client: Client) -> tuple[str, Samples]:
    """A scrape, keeping what it and the landing page showed for the secrets check."""
    text, samples = await scrape_with_text(client, headers=TIMEOUT_HEADERS)
    SEEN.append(text)
    SEEN.append(await (await client.get("/")).text())
    return text, samples


@pytest.fixture(autouse=True)
def no_secret_leaves(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """All log output of each case (both formats, debug level) and every page it fetched must
    be free of the configured keys, whatever the upstream did."""
    SEEN.clear()
    with capture_logs() as stream:
        yield
    everything = stream.getvalue() + "\n".join(SEEN)
    for secret in (CREDS.kizen_api_key, CREDS.fp_api_key):
        assert secret not in everything


@pytest.mark.parametrize("platform", ["kizen", "firstpromoter"])
@pytest.mark.parametrize("name", list(CASES))
async def test_fault(
    sim: SimHandle,
    exporter: ExporterFactory,
    monkeypatch: pytest.MonkeyPatch,
    platform: str,
    name: str,
) -> None:
    case = CASES[name]
    seed(sim.world)
    bad, good = ("kz", "fp") if platform == "kizen" else ("fp", "kz")
    urls = {"kizen": sim.kizen_url, "firstpromoter": sim.fp_url}
    if name == "dns-failure":
        real = aiohttp.TCPConnector

        def connector(*args: Any, **kwargs: Any) -> aiohttp.TCPConnector:
            host_ok = kwargs.pop("resolver", None)
            del host_ok
            return real(*args, resolver=RoutingResolver(), **kwargs)

        monkeypatch.setattr("exporter.upstream.aiohttp.TCPConnector", connector)
    if case.base_url is not None:
        urls[platform] = case.base_url(sim, platform)
    # Incremental off: each scrape reads everything, so the fault hits every scrape.
    off = "    incremental: false\n"
    # The source's own timeout (2s) is what bounds its refresh; the scrape waits 2.5s.
    client = await exporter(
        source_yaml(
            urls["kizen"],
            urls["firstpromoter"],
            defaults="  timeout: 2s\n",
            kizen_extra=off,
            fp_extra=off,
        )
    )
    if case.fault is not None:
        _, s = await scrape_and_keep(client)  # a healthy baseline first
        assert one(s, "bulk_up", source=bad) == 1
        sim.sim.set_fault(platform, case.fault)

    text, s = await scrape_and_keep(client)
    await promtool_check_metrics(text)
    assert one(s, "bulk_up", source=bad) == 0
    assert one(s, "bulk_up", source=good) == 1
    for gauge in GAUGES:
        assert select(s, gauge, source=bad) == {}, gauge
    assert select(s, "bulk_jobs", source=good)
    assert select(s, "bulk_job_info", source=good)
    if case.code is not None:
        assert sum(select(s, "bulk_api_requests_total", source=bad, code=case.code).values()) >= 1

    if case.fault is not None:  # the fault clears: the source recovers
        sim.sim.set_fault(platform, None)
        text, s = await scrape_and_keep(client)
        assert one(s, "bulk_up", source=bad) == 1
        assert select(s, "bulk_job_info", source=bad)
        await promtool_check_metrics(text)


class RoutingResolver(AbstractResolver):
    """Loopback resolves; anything else fails like a DNS outage, without sending a packet."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[ResolveResult]:
        if host in ("127.0.0.1", "localhost"):
            return [
                ResolveResult(
                    hostname=host,
                    host="127.0.0.1",
                    port=port,
                    family=socket.AF_INET,
                    proto=0,
                    flags=0,
                )
            ]
        raise OSError(f"simulated DNS failure for {host}")

    async def close(self) -> None:
        return None


async def test_retry_after_is_honoured(sim: SimHandle, exporter: ExporterFactory) -> None:
    seed(sim.world)
    sim.sim.set_fault("kizen", Fault(status=429, headers={"Retry-After": "1"}, remaining=1))
    client = await exporter(fp=False)
    started = time.monotonic()
    _, s = await scrape_and_keep(client)
    assert one(s, "bulk_up", source="kz") == 1
    assert one(s, "bulk_api_requests_total", source="kz", endpoint="list", code="429") == 1
    kizen = [t for p, _, t in sim.sim.arrivals if p == "kizen"]
    assert kizen[1] - kizen[0] >= 0.95
    assert time.monotonic() - started >= 0.95


async def test_retry_after_beyond_the_deadline_gives_up_early(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    seed(sim.world)
    sim.sim.set_fault("kizen", Fault(status=429, headers={"Retry-After": "30"}))
    # A full read on each scrape (an incremental source's first read runs in the background,
    # with a deadline of its own).
    client = await exporter(fp=False, kizen_extra="    incremental: false\n")
    _, s = await scrape_and_keep(client)
    assert one(s, "bulk_up", source="kz") == 0
    # One attempt, no retry: waiting 30s would go past the deadline, so it gave up at once.
    assert one(s, "bulk_api_requests_total", source="kz", endpoint="list", code="429") == 1
    assert "no time left to retry before the deadline" in last_error(client, "kz")


async def test_rate_limit_spaces_requests(sim: SimHandle, exporter: ExporterFactory) -> None:
    now = time.time()
    for _ in range(40):
        sim.world.add_kizen_job(
            status="completed", pending=0, started_at=now - 99, completed_at=now - 90
        )
    # 5 tokens, 5 a second: 8 pages take at least (8 - 5) / 5 = 0.6s.
    client = await exporter(fp=False, kizen_extra="    page_size: 5\n    rate_limit: 5/s\n")
    _, s = await scrape_and_keep(client)
    assert one(s, "bulk_up", source="kz") == 1
    times = sorted(t for p, _, t in sim.sim.arrivals if p == "kizen")
    assert len(times) == 8
    assert times[-1] - times[0] >= 0.55
    # Any window of one second holds at most 5 + 5 requests.
    assert all(sum(1 for u in times if t <= u < t + 1) <= 10 for t in times)

    # Two scrapes back to back share the same bucket: the second one has to wait for tokens,
    # and with a short deadline it gives up instead of answering late.
    sim.sim.arrivals.clear()
    response = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "0.9"})
    s = parse_samples(await response.text())
    assert one(s, "bulk_up", source="kz") == 0


async def test_slow_scrape_render_does_not_block_health(
    sim: SimHandle, exporter: ExporterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encoding 6,000 jobs' series takes a while; it runs off the event loop, so /-/healthy
    keeps answering while it runs. (Were it on the loop, which the test client shares, no
    request could begin and end within it.)"""
    now = time.time()
    for _ in range(6000):
        sim.world.add_kizen_job(status="in_progress", pending=3, started_at=now, at_end=True)
    client = await exporter(
        fp=False,
        defaults="  max_job_series: 6000\n",
        kizen_extra="    page_size: 1000\n    incremental: false\n",
    )
    await scrape_and_keep(client)
    # The real encoder, observed: when it starts and when it ends.
    rendering, rendered = threading.Event(), threading.Event()
    encode = exposition.Renderer.render

    def observed(self: exposition.Renderer, *args: Any, **kwargs: Any) -> Any:
        rendering.set()
        try:
            return encode(self, *args, **kwargs)
        finally:
            rendered.set()

    monkeypatch.setattr(exposition.Renderer, "render", observed)
    scrape_task = asyncio.create_task(client.get("/metrics"))
    answered_while_rendering = 0
    async with asyncio.timeout(120):
        while not rendered.is_set():
            began_during_render = rendering.is_set()
            response = await client.get("/-/healthy")
            assert response.status == 200
            assert await response.text() == "OK\n"
            if began_during_render and not rendered.is_set():
                answered_while_rendering += 1
        response = await scrape_task
    assert response.status == 200
    assert len(await response.read()) > 6000 * 7 * 50  # every job's series was rendered
    assert answered_while_rendering >= 3, answered_while_rendering


def test_fault_bodies_are_what_they_claim() -> None:
    assert len(BIG) > 50 * 1024 * 1024
    with pytest.raises(RecursionError):
        json.loads(NESTED)


async def test_acquire_returns_the_seconds_it_waited() -> None:
    bucket = TokenBucket(RateLimit.parse("10/s"))
    deadline = asyncio.get_running_loop().time() + 30
    # Ten tokens in the bucket: no wait (and no await in between, so no refill to speak of).
    assert [await bucket.acquire(deadline) for _ in range(10)] == [0.0] * 10
    # The eleventh waits for one token at 10 a second: at most 0.1 s, less by the refill.
    waited = await bucket.acquire(deadline)
    assert 0 < waited <= 0.1
    # Background work waits until the headroom is back, and says how long it slept.
    waited = await bucket.acquire(deadline, background=True)
    assert isinstance(waited, float)
    assert 0 <= waited <= (1 + bucket.headroom) / bucket.limit.per_second
