"""Scrape cost against the simulator with injected latency. Prints figures; asserts nothing.

Run with `make bench` (or `.venv/bin/python -m benchmarks.scrape [--quick]`). The simulator
runs in its own process so the exporter's latency and memory are its own. Figures depend on the
machine; docs/benchmarks.md records them. `--quick` skips the 100,000-job part (several
minutes); `--labels` prints only the encoding of 200 sources' families against the same with
every label dict in reverse order (the sorted label dicts' gain).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import math
import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import aiohttp
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from benchmarks.processes import simulator_process
from exporter.collector import ExporterStatus, exporter_families
from exporter.config import parse_config
from exporter.exposition import Renderer, _merged, _registry
from exporter.jobs import Job, Phase
from exporter.runtime import Runtime
from exporter.settings import Settings
from exporter.simulator import Credentials
from exporter.simulator.app import KIZEN_PREFIX
from exporter.source import SourceSnapshot
from exporter.tracker import TrackedJob

T = TypeVar("T")
CREDS = Credentials()
PAGE_SIZE = 100
CONCURRENCY = 4


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def simulator(finished: int, running: int, latency: float, *extra: str) -> Iterator[str]:
    """The simulator in its own process, still (no ticks), with that many Kizen jobs and that
    latency a request; yields its Kizen base URL."""
    args = ["--tick", "0", "--kizen-finished", str(finished), "--kizen-running", str(running)]
    with simulator_process(*args, "--latency", str(latency), *extra) as port:
        yield f"http://127.0.0.1:{port}{KIZEN_PREFIX}"


def kizen_source(url: str, rate: str, *extra: str) -> str:
    """The benchmarks' one Kizen source `kz` against the simulator, with `extra` keys."""
    keys = [
        "name: kz",
        "platform: kizen",
        f"base_url: {url}",
        f"business_id: {CREDS.kizen_business_id}",
        f"user_id: {CREDS.kizen_user_id}",
        f"api_key: {CREDS.kizen_api_key}",
        f"rate_limit: {rate}",
        *extra,
    ]
    return "sources:\n  - " + "\n    ".join(keys) + "\n"


def runtime_for(url: str, *, incremental: bool, rate: str, full_sync: str = "1h") -> Runtime:
    defaults = (
        f"defaults: {{timeout: 10s, max_concurrency: {CONCURRENCY}, "
        f"full_sync_interval: {full_sync}}}\n"
    )
    text = defaults + kizen_source(
        url, rate, f"page_size: {PAGE_SIZE}", f"incremental: {str(incremental).lower()}"
    )
    return Runtime(parse_config(text, filename="<bench>"))


def requests(runtime: Runtime) -> int:
    return sum(runtime.sources["kz"].upstream.requests.values())


async def timed(make: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    started = time.perf_counter()
    result = await make()
    return time.perf_counter() - started, result


async def five_at_once(runtime: Runtime) -> list[list[SourceSnapshot]]:
    return list(await asyncio.gather(*(runtime.scrape() for _ in range(5))))


async def sequential_read(url: str) -> None:
    headers = {
        "X-API-KEY": CREDS.kizen_api_key,
        "X-BUSINESS-ID": CREDS.kizen_business_id,
        "X-USER-ID": CREDS.kizen_user_id,
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


async def bare_read(url: str, pages: int) -> None:
    """Page 1, then the rest `CONCURRENCY` at a time, bytes only: what the simulator, HTTP and
    the machine cost beyond the round trips, without the exporter."""
    headers = {
        "X-API-KEY": CREDS.kizen_api_key,
        "X-BUSINESS-ID": CREDS.kizen_business_id,
        "X-USER-ID": CREDS.kizen_user_id,
    }
    async with aiohttp.ClientSession(headers=headers) as http:

        async def get(page: int) -> None:
            params = {"page": str(page), "page_size": str(PAGE_SIZE)}
            async with http.get(f"{url}/api/bulk-action-progress", params=params) as r:
                await r.read()

        await get(1)
        queue = iter(range(2, pages + 1))

        async def worker() -> None:
            for page in queue:
                await get(page)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def ten_thousand() -> None:
    latency = 0.05
    with simulator(10_000, 20, latency) as url:
        pages = math.ceil(10_020 / PAGE_SIZE)
        bound = (1 + math.ceil((pages - 1) / CONCURRENCY)) * latency
        print(
            f"Kizen: 10,000 finished + 20 running jobs, page size {PAGE_SIZE}, "
            f"{latency * 1000:.0f} ms per request, max_concurrency {CONCURRENCY} ({pages} pages)"
        )
        print(f"  bound: (1 + ceil((pages-1)/{CONCURRENCY})) round trips = {bound:.2f} s")
        for incremental in (True, False):
            runtime = runtime_for(url, incremental=incremental, rate="100000/m")
            try:
                started = time.perf_counter()
                cold, snaps = await timed(runtime.scrape)
                assert snaps[0].up, snaps[0].error
                cold_requests = requests(runtime)
                first_loaded = snaps[0].history_loaded
                # A full read that will not be quick goes on in the background after the first
                # answer (the active jobs): scrape on until it is in.
                while not snaps[0].history_loaded:
                    await asyncio.sleep(0.05)
                    snaps = await runtime.scrape()
                    assert snaps[0].up, snaps[0].error
                loaded = time.perf_counter() - started
                steady_times, steady_requests = [], []
                for _ in range(5):
                    before = requests(runtime)
                    took, snaps = await timed(runtime.scrape)
                    assert snaps[0].up, snaps[0].error
                    steady_times.append(took)
                    steady_requests.append(requests(runtime) - before)
                before = requests(runtime)
                together, _ = await timed(lambda: five_at_once(runtime))  # noqa: B023
                concurrent_requests = requests(runtime) - before
            finally:
                await runtime.close()
            mode = "incremental" if incremental else "full read  "
            if incremental:
                print(
                    f"  cold scrape, incremental:  {cold:6.2f} s  ({cold_requests} requests; "
                    f"{'the whole list' if first_loaded else 'the active jobs first'}), "
                    f"history loaded after {loaded:.2f} s"
                )
            else:
                print(
                    f"  cold scrape, full read:    {cold:6.2f} s  ratio {cold / bound:.2f}  "
                    f"({cold_requests} requests)"
                )
            steady = sorted(steady_times)[len(steady_times) // 2]
            print(
                f"  steady scrape, {mode}: {steady * 1000:7.0f} ms (median of 5), "
                f"{max(steady_requests)} requests per scrape; 5 concurrent scrapes "
                f"{together * 1000:.0f} ms, {concurrent_requests} requests"
            )
        seq, _ = await timed(lambda: sequential_read(url))
        print(f"  the cold read page after page (naive): {seq:6.2f} s  ratio {seq / bound:.2f}")
        floors = [(await timed(lambda: bare_read(url, pages)))[0] for _ in range(3)]
        floor = sorted(floors)[1]
        print(
            f"  the floor: the same pages, {CONCURRENCY} at a time, by a bare aiohttp client "
            f"that only reads the bytes: {floor:6.2f} s  ratio {floor / bound:.2f} (median of 3)"
        )


async def memory_only() -> None:
    """100,000 tracked jobs, read as fast as the simulator answers: resident memory only."""
    with simulator(100_000, 20, 0.0) as url:
        base = rss_mib()
        runtime = runtime_for(url, incremental=True, rate="100000/m")
        try:
            for _ in range(60):
                snaps = await runtime.scrape()
                if snaps[0].up and snaps[0].history_loaded:
                    break
                await asyncio.sleep(0.5)  # the full read goes on in the background
            await runtime.scrape()
            gc.collect()
            tracked = len(runtime.sources["kz"].tracker.jobs)
            print(
                f"Memory: {tracked} tracked jobs: exporter resident {rss_mib():.0f} MiB "
                f"({rss_mib() - base:.0f} MiB more than before), peak {peak_mib():.0f} MiB"
            )
        finally:
            await runtime.close()


async def hundred_thousand() -> None:
    latency = 0.3
    with simulator(100_000, 20, latency) as url:
        print(
            f"Kizen: 100,000 finished jobs, {latency * 1000:.0f} ms per request, "
            "default rate limit 300/m, scrape timeout 10 s"
        )
        base_rss = rss_mib()
        runtime = runtime_for(url, incremental=True, rate="300/m", full_sync="1h")
        runner = runtime.sources["kz"]
        started = time.perf_counter()
        during = []
        try:
            # The first scrape answers with the active jobs while the full read goes on in the
            # background; scraped every 5 s until the history is in.
            while True:
                took, snaps = await timed(runtime.scrape)
                during.append((took, snaps[0].up))
                if snaps[0].up and snaps[0].history_loaded:
                    break
                await asyncio.sleep(max(0.0, 5 - took))
            baseline = time.perf_counter() - started
            after = []
            for _ in range(5):
                took, snaps = await timed(runtime.scrape)
                assert snaps[0].up, snaps[0].error
                after.append(took)
            tracked = len(runner.tracker.jobs)
            gc.collect()
            rss = rss_mib()
            # A periodic full read, forced now: it runs in the background at reduced speed.
            runner.refresher._last_full = time.monotonic() - 7200
            background = []
            for _ in range(5):
                took, snaps = await timed(runtime.scrape)
                assert snaps[0].up, snaps[0].error
                background.append(took)
                await asyncio.sleep(2)
        finally:
            await runtime.close()
        median = sorted(after)[len(after) // 2]
        first, first_up = during[0]
        print(
            f"  first scrape {first:.2f} s, bulk_up {int(first_up)} (the active jobs); the "
            f"history loaded after {baseline:.0f} s ({requests(runtime)} requests so far); "
            f"the {len(during) - 1} scrapes meanwhile took {max(t for t, _ in during[1:]):.2f} s"
            " at most"
        )
        print(f"  steady scrape after it: {median * 1000:.0f} ms (median of 5)")
        print(
            f"  steady scrape during a background full read: "
            f"{max(background) * 1000:.0f} ms at most of 5"
        )
        print(
            f"  memory: {tracked} tracked jobs, exporter resident {rss:.0f} MiB "
            f"({rss - base_rss:.0f} MiB more than before the first read)"
        )


def snapshot_of(n: int) -> SourceSnapshot:
    now = time.time()
    jobs = tuple(
        TrackedJob(
            Job(
                id=f"{i:08x}-0000-4000-8000-000000000000",
                action=f"action_{i % 3}",
                object="contacts",
                status="in_progress",
                phase=Phase.RUNNING,
                pending=i,
                succeeded=i,
                failed=0,
                progress=0.5,
                started_at=now - 60,
                completed_at=None,
            ),
            now,
        )
        for i in range(n)
    )
    settings = Settings.model_construct(
        timeout=10.0,
        min_interval=0.0,
        finished_job_retention=3600.0,
        max_job_series=n,
        full_sync_interval=3600.0,
        max_concurrency=4,
    )
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


TEXT = "text/plain"
# What Prometheus asks for: OpenMetrics first.
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def _time_render(
    snapshots: list[SourceSnapshot], status: ExporterStatus, accept: str
) -> tuple[float, float, float, int]:
    """Median and best time to build and encode an answer from fresh snapshots (nothing
    kept from an earlier answer), the median of the library's bare encoding of the same
    families, measured interleaved in the same run, and the answer's size."""
    encoder, _ = choose_encoder(accept)
    Renderer().render(snapshots, status, accept)  # warm up
    built = Renderer()
    registry = _registry(
        [*_merged([built.families(s) for s in snapshots], time.time()), *exporter_families(status)]
    )
    times, bare = [], []
    for _ in range(7):
        started = time.perf_counter()
        body, _ = Renderer().render(snapshots, status, accept)
        times.append(time.perf_counter() - started)
        started = time.perf_counter()
        encoder(registry)
        bare.append(time.perf_counter() - started)
    return statistics.median(times), min(times), statistics.median(bare), len(body)


def render() -> None:
    status = ExporterStatus(True, time.time())
    print(
        "Render cost: build and encode an answer from nothing, against prometheus_client's "
        "bare encoding of the same families (no upstream):"
    )
    two = [snapshot_of(500), snapshot_of(500)]
    two[1] = dataclasses.replace(two[1], name="kz2")
    for name, accept in (("OpenMetrics", OPENMETRICS), ("text 0.0.4", TEXT)):
        median, best, bare, size = _time_render(two, status, accept)
        print(
            f"  two sources at the default max_job_series (500 jobs, 3,500 per-job series "
            f"each), {name}: median {median * 1000:.0f} ms, best {best * 1000:.0f} ms; bare "
            f"encoding {bare * 1000:.0f} ms; ratio {median / bare:.2f}; {size / 1e6:.2f} MB"
        )
    for n in (1_000, 10_000):
        median, _, bare, size = _time_render([snapshot_of(n)], status, TEXT)
        series = n * 7  # info, 3 items, progress, start, last change
        print(
            f"  {n:>6} running jobs ({series} per-job series), text: {median * 1000:6.0f} ms, "
            f"bare encoding {bare * 1000:.0f} ms, ratio {median / bare:.2f}; "
            f"{median / series * 1e6:.1f} µs per series, {size / 1e6:.1f} MB"
        )


def _relabelled(families: list[Metric], *, reverse: bool) -> list[Metric]:
    """Copies of `families` whose every sample's label dict holds its names sorted, or sorted
    in reverse: the same answer either way, encoded from dicts the encoder's own sort of each
    sample's labels passes over at once, or must reorder."""
    copies = []
    for family in families:
        copy = Metric(family.name, family.documentation, family.type, family.unit)
        copy.samples = [
            s._replace(labels=dict(sorted(s.labels.items(), reverse=reverse)))
            for s in family.samples
        ]
        copies.append(copy)
    return copies


def labels(sources: int = 200, jobs: int = 60, rounds: int = 15) -> None:
    """The encoding of `sources` sources' families with every label dict in sorted order
    against the same with every one in reverse order, interleaved, in this process."""
    snapshots = [dataclasses.replace(snapshot_of(jobs), name=f"kz-{i}") for i in range(sources)]
    now = time.time()
    built = Renderer()
    families = list(_merged([built.families(s, now) for s in snapshots], now))
    encoder, _ = choose_encoder(TEXT)
    in_order = _registry(_relabelled(families, reverse=False))
    reversed_ = _registry(_relabelled(families, reverse=True))
    assert encoder(in_order) == encoder(reversed_)  # the same answer
    as_sorted: list[float] = []
    as_reversed: list[float] = []
    for _ in range(rounds):
        for registry, times in ((in_order, as_sorted), (reversed_, as_reversed)):
            started = time.process_time()
            encoder(registry)
            times.append(time.process_time() - started)
    ratios = sorted(r / b for b, r in zip(as_sorted, as_reversed, strict=True))
    samples = sum(len(f.samples) for f in families)
    print(
        f"Label order: {sources} sources of {jobs} running jobs ({samples} samples), text, "
        f"{rounds} rounds: label dicts in sorted order {statistics.median(as_sorted) * 1000:.0f}"
        f" ms CPU, in reverse order {statistics.median(as_reversed) * 1000:.0f} ms; reverse / "
        f"sorted, round by round: median {statistics.median(ratios):.3f}, "
        f"least {ratios[0]:.3f}, most {ratios[-1]:.3f}"
    )


async def main_async(args: argparse.Namespace) -> None:
    if args.memory:
        await memory_only()
        return
    await ten_thousand()
    if not args.quick:
        await hundred_thousand()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="skip the 100,000-job part")
    parser.add_argument("--memory", action="store_true", help="only the memory figure, quickly")
    parser.add_argument("--render", action="store_true", help="only the render cost, quickly")
    parser.add_argument(
        "--labels", action="store_true", help="only the encoding against label order"
    )
    args = parser.parse_args()
    if args.labels:
        labels()
        return
    if not args.render:
        asyncio.run(main_async(args))
    if not args.memory:
        render()


if __name__ == "__main__":
    main()
