"""Concurrent scrapes of one replica: what several Prometheus servers (or a high-availability
pair) cost it. Prints figures; asserts nothing.

`.venv/bin/python -m benchmarks.shared [--pairs 100] [--scrapers 4] [--rounds 10]`.

The accounts of `benchmarks.sources` (the simulator in a process of its own, 60 jobs per
platform, 50 ms a request) served by the real command in a process of its own. Each round,
`--scrapers` scrapers ask for /metrics at the same moment (text format, gzip, as Prometheus
does), so that they share one refresh of every source; the round's CPU is the exporter's, from
/proc, up to the last answer. It prints the median CPU a round and a scrape, the median time
to the last answer, and the exporter's resident memory at the end: the encoded-answer cache
(`server.EncodingCache`) is what lets the scrapes of a round share one encoding.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks.processes import free_port, start_exporter, until_ready
from benchmarks.sources import config_text, proc_figures, simulator

WARM_UP = 3
HEADERS = {"Accept": "text/plain", "Accept-Encoding": "gzip"}


async def run(pairs: int, scrapers: int, rounds: int) -> None:
    with simulator() as sim_port, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(config_text(pairs, sim_port))
        port = free_port()
        proc = start_exporter(config, port, "--log.level", "error", stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                if not await until_ready(http, proc, url.removesuffix("/metrics")):
                    print("the exporter exited before it was ready")
                    return

                async def scrape() -> int:
                    async with http.get(url, headers=HEADERS) as response:
                        return len(await response.read())

                for _ in range(WARM_UP):
                    await asyncio.gather(*(scrape() for _ in range(scrapers)))
                cpus: list[float] = []
                walls: list[float] = []
                for _ in range(rounds):
                    _, user, system, _ = proc_figures(proc.pid)
                    began = time.perf_counter()
                    await asyncio.gather(*(scrape() for _ in range(scrapers)))
                    walls.append(time.perf_counter() - began)
                    _, user_after, system_after, _ = proc_figures(proc.pid)
                    cpus.append(user_after + system_after - user - system)
                rss, *_ = proc_figures(proc.pid)
        finally:
            proc.terminate()
            proc.wait()
    cpu = statistics.median(cpus)
    print(
        f"{pairs} pairs ({2 * pairs} sources), {scrapers} scrapers at once, {rounds} rounds: "
        f"CPU a round median {cpu:.3f} s (least {min(cpus):.3f}), {cpu / scrapers:.3f} s a "
        f"scrape; last answer after median {statistics.median(walls):.3f} s; "
        f"resident {rss:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=100, help="pairs of sources")
    parser.add_argument("--scrapers", type=int, default=4, help="scrapes at once")
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds")
    args = parser.parse_args()
    asyncio.run(run(args.pairs, args.scrapers, args.rounds))


if __name__ == "__main__":
    main()
