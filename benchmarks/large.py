"""A large Kizen account: cold start, the state store, restore and memory. Prints figures;
asserts nothing.

Run on demand: `.venv/bin/python -m benchmarks.large [--skip-capped]`. The simulator runs in
its own process (`python -m exporter.simulator`) with 100,000 finished and 20 running jobs; the
exporter runs in this process with the default settings (timeout 10 s, rate limit 100/m,
page_size 1000, max_concurrency 4) and is scraped every `SCRAPE_INTERVAL` seconds, the way
Prometheus would. Parts:

1. cold start, server allowing 1000 rows a page, 300 ms a request: time to the first `bulk_up
   1`, time until `bulk_history_loaded` is 1, and the requests made until then;
2. the same behind a 100-row cap (`--kizen-max-page-size 100`), for comparison; ~10 minutes,
   as 1,001 requests at 100 a minute take that long (`--skip-capped` leaves it out);
3. the state store with 100,000 tracked jobs: the first save, then steady refreshes in which
   nothing changes (time and bytes written per refresh), restore time and resident memory of
   a restarted exporter (in a fresh process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.scrape import kizen_source, rss_mib
from benchmarks.scrape import simulator as scrape_simulator
from exporter.config import parse_config
from exporter.runtime import Runtime
from exporter.source import SourceRunner
from exporter.state import StateStore

FINISHED = 100_000
RUNNING = 20
LATENCY = 0.3
SCRAPE_INTERVAL = 5.0


def simulator(latency: float, *extra: str) -> contextlib.AbstractContextManager[str]:
    return scrape_simulator(FINISHED, RUNNING, latency, *extra)


def runtime_for(url: str, store: StateStore | None = None, rate: str = "100/m") -> Runtime:
    return Runtime(parse_config(kizen_source(url, rate), filename="<bench>"), store=store)


def requests(runner: SourceRunner) -> int:
    return sum(runner.upstream.requests.values())


def written_bytes() -> int:
    """Bytes this process has passed to write() so far (/proc/self/io `wchar`)."""
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


async def cold_start(label: str, *simulator_args: str) -> None:
    with simulator(LATENCY, *simulator_args) as url:
        runtime = runtime_for(url)
        runner = runtime.sources["kz"]
        refresher = runner.refresher
        read_done: list[float] = []

        async def watch() -> None:
            # When the full read itself ends (internal; scrapes see it at the next scrape).
            sync = refresher._sync
            if sync is not None:
                await asyncio.wait({sync})
            read_done.append(time.perf_counter())

        try:
            started = time.perf_counter()
            first_up: float | None = None
            scrapes: list[tuple[float, bool, int, int]] = []  # duration, up, jobs, requests
            watcher: asyncio.Task[None] | None = None
            while True:
                before = time.perf_counter()
                (snap,) = await runtime.scrape()
                took = time.perf_counter() - before
                scrapes.append((took, snap.up, len(snap.jobs), requests(runner)))
                if watcher is None:
                    watcher = asyncio.create_task(watch())
                if snap.up and first_up is None:
                    first_up = time.perf_counter() - started
                if snap.up and snap.history_loaded:
                    break
                await asyncio.sleep(max(0.0, SCRAPE_INTERVAL - took))
            loaded = time.perf_counter() - started
            await watcher
            print(f"{label}:")
            took, was_up, jobs, _ = scrapes[0]
            print(
                f"  first scrape: {took:.2f} s, bulk_up {int(was_up)}, {jobs} jobs "
                f"(first bulk_up 1 after {first_up:.2f} s)"
            )
            during = [d for d, _, _, _ in scrapes[1:-1]]
            print(
                f"  the full read ended after {read_done[0] - started:.1f} s; "
                f"bulk_history_loaded 1 at the next scrape, {loaded:.1f} s after the start "
                f"(one scrape every {SCRAPE_INTERVAL:.0f} s); scrapes meanwhile "
                f"{max(during, default=0.0):.2f} s at most"
            )
            # Each scrape after the first reads the active and the recently finished jobs.
            ours = 1 + 2 * (len(scrapes) - 1)
            print(
                f"  requests: {requests(runner)} in all, of which {requests(runner) - ours} the "
                f"full read's ({dict(runner.upstream.requests)}); tracked jobs "
                f"{len(runner.tracker.jobs)}"
            )
        finally:
            await runtime.close()


async def store_part() -> None:
    with simulator(0.0) as url, tempfile.TemporaryDirectory() as directory:
        base_rss = rss_mib()
        store = StateStore(directory)
        saves: list[float] = []
        save = store.save

        written: list[int] = []

        def timed_save(runner: SourceRunner) -> None:
            # A save is synchronous and sends nothing over the network: the bytes this process
            # hands to write() meanwhile are the store's.
            wrote = written_bytes()
            began = time.perf_counter()
            save(runner)
            saves.append(time.perf_counter() - began)
            written.append(written_bytes() - wrote)

        runtime = runtime_for(url, store, rate="100000/m")
        runner = runtime.sources["kz"]
        runner.on_refreshed = timed_save
        wal = Path(directory) / "kz.sqlite-wal"
        db = Path(directory) / "kz.sqlite"
        try:
            for _ in range(60):
                (snap,) = await runtime.scrape()
                if snap.up and snap.history_loaded:
                    break
                await asyncio.sleep(0.5)
            tracked = len(runner.tracker.jobs)
            gc.collect()
            print(f"State store, {tracked} tracked jobs:")
            print(
                f"  first save (every job): {saves[-1] * 1000:.0f} ms, "
                f"{written[-1] / 2**20:.1f} MiB written; file "
                f"{db.stat().st_size / 2**20:.1f} MiB, WAL {wal.stat().st_size / 2**20:.1f} MiB"
                f" after it; exporter resident {rss_mib():.0f} MiB "
                f"({rss_mib() - base_rss:.0f} MiB more than before the first read)"
            )
            # The first steady save checkpoints the large first write into the file (and
            # truncates the WAL); the ones after it are what a steady refresh costs.
            (snap,) = await runtime.scrape()
            print(
                f"  the save after it (checkpoints that write): {saves[-1] * 1000:.0f} ms, "
                f"{written[-1] / 2**20:.1f} MiB written"
            )
            saves.clear()
            written.clear()
            for _ in range(20):
                (snap,) = await runtime.scrape()
                assert snap.up, snap.error
            ordered = sorted(saves)
            print(
                f"  steady refresh, nothing changing: save {ordered[len(saves) // 2] * 1000:.1f}"
                f" ms median, {ordered[-1] * 1000:.1f} ms max of {len(saves)}; "
                f"{max(written) / 1024:.1f} KiB written at most "
                f"({sum(written) / len(written) / 1024:.1f} KiB on average)"
            )
        finally:
            await runtime.close()
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.large",
            "--restore",
            directory,
            url,
            stdout=subprocess.PIPE,
        )
        out, _ = await child.communicate()
        assert child.returncode == 0
        figures = json.loads(out)
        print(
            f"  restart: restore {figures['restore']:.2f} s ({figures['jobs']} jobs); resident "
            f"{figures['rss_restored']:.0f} MiB after the restore, "
            f"{figures['rss_scraped']:.0f} MiB after its first scrape "
            f"(interpreter and modules alone: {figures['rss_base']:.0f} MiB)"
        )


async def restore_child(directory: str, url: str) -> None:
    base = rss_mib()
    started = time.perf_counter()
    runtime = runtime_for(url, StateStore(directory), rate="100000/m")
    restore = time.perf_counter() - started
    gc.collect()
    restored = rss_mib()
    try:
        (snap,) = await runtime.scrape()
        assert snap.up, snap.error
        gc.collect()
        figures = {
            "restore": restore,
            "jobs": len(runtime.sources["kz"].tracker.jobs),
            "rss_base": base,
            "rss_restored": restored,
            "rss_scraped": rss_mib(),
        }
    finally:
        await runtime.close()
    print(json.dumps(figures))


async def main_async(args: argparse.Namespace) -> None:
    if args.restore:
        await restore_child(*args.restore)
        return
    print(
        f"Kizen: {FINISHED:,} finished + {RUNNING} running jobs, {LATENCY * 1000:.0f} ms a "
        "request, default settings (timeout 10 s, rate limit 100/m, page_size 1000, "
        "max_concurrency 4)"
    )
    if not args.skip_store:
        await store_part()
    await cold_start("server allowing 1000 rows a page")
    if not args.skip_capped:
        await cold_start("server capping pages at 100 rows", "--kizen-max-page-size", "100")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-capped", action="store_true", help="leave out part 2")
    parser.add_argument("--skip-store", action="store_true", help="leave out part 3")
    parser.add_argument("--restore", nargs=2, help=argparse.SUPPRESS)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
