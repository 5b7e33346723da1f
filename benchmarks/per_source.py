"""The cost of a source at two sizes, measured side by side so that the machine's speed cancels.

Prints figures; asserts nothing.
`.venv/bin/python -m benchmarks.per_source [--pairs 100,500] [--rounds 20]`.

`benchmarks.sources` measures one size after the other; on a shared machine whose speed wanders
by a third within minutes, its per-source CPU at two sizes cannot tell a few percent apart. Here
two exporters, one per size, run at once against one simulator (the accounts of
`benchmarks.sources`) and are scraped in turn, round after round, only one of them working at a
time. Each scrape's CPU is the exporter's time on a CPU (every thread's, from
/proc/PID/task/*/schedstat, in nanoseconds), from just before it to the end of its answer and a
short settling pause. Per round it takes the larger size's CPU per source over the smaller's:
the two scrapes of a round are seconds apart, so a slow minute slows both. It prints the median
of those ratios with their spread, each size's median CPU per source, its minor page faults per
source and scrape, and its resident memory per source.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from benchmarks.processes import free_port, start_exporter, until_ready
from benchmarks.sources import config_text, p90, proc_figures, simulator

SETTLE = 0.3  # seconds after an answer for what the exporter does once it is sent


def cpu_ns(pid: int) -> int:
    """Every live thread's time on a CPU, in nanoseconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


@dataclass
class Size:
    pairs: int
    proc: subprocess.Popen[str]
    url: str
    cpu: list[float] = field(default_factory=list)  # seconds a source, one per round
    faults: list[float] = field(default_factory=list)  # a source, one per round

    @property
    def sources(self) -> int:
        return 2 * self.pairs


async def scrape(http: aiohttp.ClientSession, size: Size) -> None:
    async with http.get(f"{size.url}/metrics") as response:
        assert response.status == 200, response.status
        await response.read()


async def measured(http: aiohttp.ClientSession, size: Size) -> None:
    pid = size.proc.pid
    faults_before = proc_figures(pid)[3]
    before = cpu_ns(pid)
    await scrape(http, size)
    await asyncio.sleep(SETTLE)
    size.cpu.append((cpu_ns(pid) - before) / 1e9 / size.sources)
    size.faults.append((proc_figures(pid)[3] - faults_before) / size.sources)


async def run(small: int, large: int, rounds: int) -> None:
    print(
        f"{small} and {large} pairs of sources side by side, 60 jobs each, 50 ms a request, "
        f"rate_limit 6000/m, {rounds} rounds"
    )
    with simulator() as sim_port, tempfile.TemporaryDirectory() as tmp:
        sizes: list[Size] = []
        try:
            for pairs in (small, large):
                config = Path(tmp) / f"config-{pairs}.yaml"
                config.write_text(config_text(pairs, sim_port))
                port = free_port()
                proc = start_exporter(config, port, "--log.level", "error")
                sizes.append(Size(pairs, proc, f"http://127.0.0.1:{port}"))
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                for size in sizes:
                    if not await until_ready(http, size.proc, size.url):
                        raise SystemExit(f"the exporter of {size.pairs} pairs exited")
                    # Cold, then one that may still settle (a background full read).
                    await scrape(http, size)
                    await scrape(http, size)
                began = time.perf_counter()
                for _ in range(rounds):
                    for size in sizes:
                        await measured(http, size)
                took = time.perf_counter() - began
            resident = [proc_figures(size.proc.pid)[0] for size in sizes]
        finally:
            for size in sizes:
                size.proc.terminate()
                size.proc.wait()
    lower, upper = sizes
    ratios = [b / a for a, b in zip(lower.cpu, upper.cpu, strict=True)]
    for size, rss in zip(sizes, resident, strict=True):
        print(
            f"  {size.pairs:>4} pairs ({size.sources} sources): CPU a source "
            f"{statistics.median(size.cpu) * 1000:.3f} ms median, "
            f"{min(size.cpu) * 1000:.3f} least; "
            f"minor page faults a source {statistics.median(size.faults):.1f}; "
            f"resident {rss:.0f} MiB, {rss / size.sources:.2f} MiB a source"
        )
    ordered = sorted(ratios)
    print(
        f"  CPU a source, {upper.sources} against {lower.sources} sources, round by round: "
        f"median {statistics.median(ratios):.3f}, least {ordered[0]:.3f}, "
        f"p90 {p90(ratios):.3f}, most {ordered[-1]:.3f} ({took:.0f} s of rounds)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", default="100,500", help="the two sizes, in pairs of sources")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    small, large = sorted(int(n) for n in args.pairs.split(","))
    asyncio.run(run(small, large, args.rounds))


if __name__ == "__main__":
    main()
