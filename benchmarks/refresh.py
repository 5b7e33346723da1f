"""The refresh alone: N Kizen + N FirstPromoter sources brought up to date, scrape after scrape,
in this process, with no answer encoded.

Prints figures; asserts nothing.
`.venv/bin/python -m benchmarks.refresh [--pairs 100] [--scrapes 30]`.

The accounts of `benchmarks.sources` (the simulator in a process of its own, 60 jobs per
platform, 50 ms a request), read by a `Runtime` the way a scrape reads them, after three
scrapes to warm up. It prints the CPU time of the event loop's thread per steady refresh
(median and least) and the wall time. That CPU time moves with the machine's speed, by a third
from minute to minute on a shared one. The count of instructions does not: to compare two
versions of the code, count those of the whole process for 1 and for 21 scrapes and divide the
difference by 20, e.g. with valgrind (not a dependency of the project):
`valgrind --tool=cachegrind --cache-sim=no .venv/bin/python -m benchmarks.refresh --pairs 25
--scrapes 21` (and `--scrapes 1`; `PYTHONHASHSEED=0` for the same hashing in both).
Run to run, that figure moved by 1-2 % here, where the CPU time moved by 30 %.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.sources import config_text, simulator
from exporter.config import load_config
from exporter.runtime import Runtime

WARM_UP = 3


async def run(pairs: int, scrapes: int) -> None:
    with simulator() as sim_port, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config_text(pairs, sim_port))
        runtime = Runtime(load_config(path), path)
        try:
            for _ in range(WARM_UP):
                await runtime.scrape()
            cpu: list[float] = []
            wall: list[float] = []
            down = 0
            for _ in range(scrapes):
                began_cpu, began = time.thread_time(), time.perf_counter()
                snapshots = await runtime.scrape()
                cpu.append(time.thread_time() - began_cpu)
                wall.append(time.perf_counter() - began)
                down = sum(not s.up for s in snapshots)
        finally:
            await runtime.close()
    print(
        f"{pairs} pairs ({2 * pairs} sources), {scrapes} steady refreshes: "
        f"CPU of the loop's thread median {statistics.median(cpu) * 1000:.1f} ms, "
        f"least {min(cpu) * 1000:.1f} ms; wall median {statistics.median(wall) * 1000:.1f} ms, "
        f"least {min(wall) * 1000:.1f} ms; {down} sources down in the last"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=100, help="pairs of sources")
    parser.add_argument("--scrapes", type=int, default=30, help="steady refreshes (at least 1)")
    args = parser.parse_args()
    if args.scrapes < 1:
        parser.error("--scrapes must be at least 1")
    asyncio.run(run(args.pairs, args.scrapes))


if __name__ == "__main__":
    main()
