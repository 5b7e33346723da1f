"""Scrape cost against the simulator with injected latency. Prints figures; asserts nothing.

Run with `make bench` (or `.venv/bin/python -m benchmarks.scrape`). Figures depend on the
machine; the README records one run.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import resource
import time
from collections.abc import Callable

import aiohttp

from exporter.collector import ExporterStatus
from exporter.config import parse_config
from exporter.jobs import Job, Phase
from exporter.runtime import Runtime
from exporter.server import encode
from exporter.simulator import Credentials, RunningSimulator, Simulator, World
from exporter.source import SourceSnapshot
from exporter.tracker import JobTracker

LATENCY = 0.05
PAGE_SIZE = 100
CONCURRENCY = 4


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def kizen_world(finished: int, running: int) -> World:
    world = World(seed=3)
    now = time.time()
    for i in range(finished):
        world.add_kizen_job(
            status="completed",
            pending=0,
            success=10 + i % 50,
            started_at=now - 86400 + i,
            completed_at=now - 80000 + i,
            at_end=True,
        )
    for _ in range(running):
        world.add_kizen_job(status="in_progress", pending=500, success=10, started_at=now - 60)
    return world


def config_text(url: str, creds: Credentials) -> str:
    return f"""
defaults: {{timeout: 60s, max_concurrency: {CONCURRENCY}}}
sources:
  - name: kz
    platform: kizen
    base_url: {url}
    business_id: {creds.kizen_business_id}
    user_id: {creds.kizen_user_id}
    api_key: {creds.kizen_api_key}
    page_size: {PAGE_SIZE}
    rate_limit: 100000/m
"""


async def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    result = action()
    if inspect.isawaitable(result):
        await result
    return time.perf_counter() - started


async def sequential_read(url: str, sim: Simulator) -> None:
    c = sim.credentials
    headers = {
        "X-API-KEY": c.kizen_api_key,
        "X-BUSINESS-ID": c.kizen_business_id,
        "X-USER-ID": c.kizen_user_id,
    }
    async with aiohttp.ClientSession(headers=headers) as http:
        page = 1
        while True:
            params = {"page": str(page), "page_size": str(PAGE_SIZE)}
            async with http.get(f"{url}/api/bulk-action-progress", params=params) as r:
                body = await r.json()
            if not body["next"]:
                return
            page += 1


async def scrape_benchmarks() -> None:
    world = kizen_world(10_000, 20)
    running = RunningSimulator(Simulator(world))
    await running.start()
    sim = running.simulator
    sim.latency["kizen"] = LATENCY
    runtime = Runtime(
        parse_config(config_text(running.kizen_url, sim.credentials), filename="<bench>")
    )
    pages = math.ceil(10_020 / PAGE_SIZE)
    bound = (1 + math.ceil((pages - 1) / CONCURRENCY)) * LATENCY
    try:
        cold = await timed(lambda: runtime.scrape())
        requests_cold = sum(sim.requests.values())
        sequential = await timed(lambda: sequential_read(running.kizen_url, sim))
        sim.requests.clear()
        steady = await timed(lambda: runtime.scrape())
        steady_requests = sum(sim.requests.values())
        sim.requests.clear()
        together = await timed(lambda: asyncio.gather(*(runtime.scrape() for _ in range(5))))
        concurrent_requests = sum(sim.requests.values())
    finally:
        await runtime.close()
        await running.stop()

    print(
        f"Kizen: 10,000 finished + 20 running jobs, page size {PAGE_SIZE}, "
        f"{LATENCY * 1000:.0f} ms per request, max_concurrency {CONCURRENCY} ({pages} pages)"
    )
    print(f"  bound (1 + ceil((pages-1)/{CONCURRENCY})) round trips: {bound:.2f} s")
    print(
        f"  cold scrape:            {cold:6.2f} s  ratio {cold / bound:.2f}  "
        f"({requests_cold} requests)"
    )
    print(
        f"  sequential page reads:  {sequential:6.2f} s  ratio {sequential / bound:.2f}  "
        "(what a naive exporter does)"
    )
    print(f"  steady scrape (full read every scrape): {steady:6.2f} s, {steady_requests} requests")
    print(
        f"  5 concurrent scrapes:   {together:6.2f} s, {concurrent_requests} requests "
        f"(one refresh: {steady_requests})"
    )


def snapshot_of(n: int, active: bool) -> SourceSnapshot:
    from exporter.config import Defaults, Settings, _Overrides
    from exporter.tracker import TrackedJob

    now = time.time()
    jobs = tuple(
        TrackedJob(
            Job(
                id=f"{i:08x}-0000-4000-8000-000000000000",
                action=f"action_{i % 3}",
                object="contacts",
                status="in_progress" if active else "completed",
                phase=Phase.RUNNING if active else Phase.COMPLETED,
                pending=i,
                succeeded=i,
                failed=0,
                progress=0.5,
                started_at=now - 60,
                completed_at=None if active else now - 30,
            ),
            now,
        )
        for i in range(n)
    )
    settings = Settings.resolve(Defaults(max_job_series=n), _Overrides())
    return SourceSnapshot(
        name="kz",
        platform="kizen",
        up=True,
        duration=0.1,
        refreshed_at=now,
        last_success=now,
        error=None,
        settings=settings,
        jobs=jobs,
        actions=frozenset({"action_0", "action_1", "action_2"}),
    )


def render_benchmarks() -> None:
    status = ExporterStatus(True, time.time())
    print("Render cost (build and encode the response, no upstream):")
    for n in (1_000, 10_000):
        snapshot = snapshot_of(n, active=True)
        encode([snapshot], status, "text/plain")  # warm up
        runs = 5
        started = time.perf_counter()
        for _ in range(runs):
            body, _ = encode([snapshot], status, "text/plain")
        elapsed = (time.perf_counter() - started) / runs
        print(
            f"  {n:>6} jobs ({n * 8} per-job series): {elapsed * 1000:7.1f} ms per scrape, "
            f"{elapsed / (n * 8) * 1e6:.2f} µs per series, {len(body) / 1e6:.1f} MB"
        )


def memory_benchmark() -> None:
    before = rss_mib()
    tracker = JobTracker()
    now = time.time()
    jobs = [
        Job(
            id=f"{i:08x}-1111-4111-8111-111111111111",
            action="custom_object_upload",
            object="contacts",
            status="completed",
            phase=Phase.COMPLETED,
            pending=0,
            succeeded=i % 1000,
            failed=i % 7,
            progress=1.0,
            started_at=now - 90000 + i,
            completed_at=now - 80000 + i,
        )
        for i in range(100_000)
    ]
    tracker.apply(jobs, now, complete=True)
    del jobs
    snapshot = tuple(tracker.jobs.values())
    after = rss_mib()
    print(
        f"Memory: 100,000 tracked jobs: resident {after:.0f} MiB in all, "
        f"{after - before:.0f} MiB for the jobs ({len(snapshot)} in the snapshot)"
    )


def main() -> None:
    asyncio.run(scrape_benchmarks())
    render_benchmarks()
    memory_benchmark()


if __name__ == "__main__":
    main()
