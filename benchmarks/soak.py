"""Soak: the real command for N minutes under steady scrapes and a hostile scraper, watching
for leaks. Prints figures every minute and a summary; asserts nothing. Not part of `make test`.

    .venv/bin/python -m benchmarks.soak [--minutes 30] [--max-jobs 200] [--warm-up 2]

- The simulator runs in its own process with a churning but bounded population
  (`--max-jobs` per platform: jobs keep arriving, running and finishing, and the oldest
  finished ones are dropped), so that the data the exporter holds stays about the same size:
  memory or latency that keeps growing is then the exporter's own, not the data's.
  `--max-jobs 0` runs the demo's world instead, which only grows (about 15 jobs a minute per
  platform), for comparison.
- The exporter is the real command (`python -m exporter`) in a process of its own, so its
  resident memory (VmRSS) is read from /proc; its log (stderr) goes to a file and its
  warning and error lines are counted.
- Five scrapers each scrape /metrics once a second with a 10 s timeout header; a hostile
  scraper loops with a 0.6 s one (it waits 0.1 s), ten times a second.
- Every minute: RSS (the exporter's and the simulator's), legitimate scrape latency p50/p99,
  the median refresh time (`bulk_scrape_duration_seconds` of the slowest source), jobs
  (`bulk_jobs`) and per-job samples (`bulk_job_*`) the exporter reports, log lines at
  warn/error, and the share of legitimate scrapes in which every source was up.
- At the end: RSS and latency from the end of the warm-up (first minutes) to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from benchmarks.processes import free_port, start_exporter
from exporter.simulator import Credentials
from exporter.simulator.app import FP_PREFIX, KIZEN_PREFIX

CREDS = Credentials()
SCRAPERS = 5
LEGIT = {"X-Prometheus-Scrape-Timeout-Seconds": "10"}
HOSTILE = {"X-Prometheus-Scrape-Timeout-Seconds": "0.6"}
_UP = re.compile(rb"^bulk_up\{[^}]*\} (\S+)$", re.MULTILINE)
_JOBS = re.compile(rb"^bulk_jobs\{[^}]*\} (\S+)$", re.MULTILINE)
_REFRESH = re.compile(rb"^bulk_scrape_duration_seconds\{[^}]*\} (\S+)$", re.MULTILINE)
_SERIES = re.compile(rb"^bulk_job_", re.MULTILINE)


def config_text(base: str) -> str:
    # The simulator is no shared account: a generous rate limit, so the soak exercises the
    # refresh machinery on every scrape rather than the token bucket. What the exporter holds
    # reaches its steady size within the warm-up: finished jobs keep their per-job series for
    # `finished_job_retention` (1 h by default: the series would grow for an hour), and a
    # finished Kizen job the simulator drops is only noticed by a full read.
    return f"""defaults:
  timeout: 5s
  finished_job_retention: 2m
  full_sync_interval: 2m
sources:
  - name: kz
    platform: kizen
    base_url: {base}{KIZEN_PREFIX}
    business_id: {CREDS.kizen_business_id}
    user_id: {CREDS.kizen_user_id}
    api_key: {CREDS.kizen_api_key}
    rate_limit: 100/s
  - name: fp
    platform: firstpromoter
    base_url: {base}{FP_PREFIX}
    account_id: {CREDS.fp_account_id}
    api_key: {CREDS.fp_api_key}
    rate_limit: 100/s
"""


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Minute:
    latencies: list[float] = field(default_factory=list)
    all_up: int = 0
    scrapes: int = 0
    failures: int = 0  # legitimate scrapes that got no 200
    hostile: int = 0
    jobs: float = 0.0
    series: int = 0  # bulk_job_* samples in the last answer
    refresh: list[float] = field(default_factory=list)  # slowest source's refresh, per scrape


@dataclass
class Row:
    minute: int
    rss: float
    sim_rss: float
    p50: float
    p99: float
    refresh: float
    jobs: float
    series: int
    warn: int
    error: int
    up_share: float
    scrapes: int
    hostile: int


def log_levels(path: Path) -> tuple[int, int, int]:
    """Lines at warn and error level in the exporter's log, and tracebacks."""
    text = path.read_text(errors="replace")
    return text.count("level=warn"), text.count("level=error"), text.count("Traceback")


@dataclass
class Processes:
    port: int
    exporter: subprocess.Popen[str]
    simulator: subprocess.Popen[str]
    log: Path


@contextlib.contextmanager
def processes(args: argparse.Namespace) -> Iterator[Processes]:
    """The simulator and the exporter, each in a process of its own, stopped on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="bulk-soak-"))
    sim_port, port = free_port(), free_port()
    simulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter.simulator",
            "--port",
            str(sim_port),
            "--tick",
            "1",
            *(["--max-jobs", str(args.max_jobs)] if args.max_jobs > 0 else []),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert simulator.stdout is not None
    simulator.stdout.readline()  # printed once it listens
    config = workdir / "config.yaml"
    config.write_text(config_text(f"http://127.0.0.1:{sim_port}"))
    log = workdir / "exporter.log"
    with log.open("w") as log_file:
        exporter = start_exporter(config, port, stderr=log_file)
    try:
        yield Processes(port, exporter, simulator, log)
    finally:
        exporter.terminate()
        simulator.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            exporter.wait(15)
        simulator.wait()


async def drive(
    args: argparse.Namespace, port: int, pids: tuple[int, int], log: Path, rows: list[Row]
) -> None:
    """Scrape, attack and report until the time is up; appends a row per minute to `rows`."""
    pid, sim_pid = pids
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    end = started + args.minutes * 60
    minutes: dict[int, Minute] = {}

    def current() -> Minute:
        return minutes.setdefault(int((time.monotonic() - started) // 60), Minute())

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for _ in range(100):  # wait until it listens
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{base}/-/healthy") as r:
                    if r.status == 200:
                        break
            await asyncio.sleep(0.1)

        async def scraper(offset: float) -> None:
            await asyncio.sleep(offset)
            next_at = time.monotonic()
            while time.monotonic() < end:
                t0 = time.monotonic()
                minute = current()
                try:
                    async with http.get(f"{base}/metrics", headers=LEGIT) as r:
                        body = await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok, body = False, b""
                minute.latencies.append(time.monotonic() - t0)
                minute.scrapes += 1
                if not ok:
                    minute.failures += 1
                else:
                    ups = _UP.findall(body)
                    minute.all_up += bool(ups) and all(float(v) == 1 for v in ups)
                    minute.jobs = sum(float(v) for v in _JOBS.findall(body))
                    minute.series = len(_SERIES.findall(body))
                    minute.refresh.append(max(map(float, _REFRESH.findall(body)), default=0))
                next_at += 1.0
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        async def hostile() -> None:
            while time.monotonic() < end:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/metrics", headers=HOSTILE) as r:
                        await r.read()
                current().hostile += 1
                await asyncio.sleep(0.1)

        async def reporter() -> None:
            print(
                "minute   RSS MiB  sim MiB   p50 ms   p99 ms  refresh ms    jobs  series"
                "  warn  error  all up  scrapes  hostile",
                flush=True,
            )
            minute = 0
            while True:
                await asyncio.sleep(max(0.0, started + (minute + 1) * 60 - time.monotonic()))
                m = minutes.get(minute, Minute())
                warn, error, _ = log_levels(log)
                row = Row(
                    minute + 1,
                    rss_mib(pid),
                    rss_mib(sim_pid),
                    percentile(m.latencies, 0.5) * 1000,
                    percentile(m.latencies, 0.99) * 1000,
                    percentile(m.refresh, 0.5) * 1000,
                    m.jobs,
                    m.series,
                    warn,
                    error,
                    m.all_up / m.scrapes if m.scrapes else float("nan"),
                    m.scrapes,
                    m.hostile,
                )
                rows.append(row)
                print(
                    f"{row.minute:6d} {row.rss:9.1f} {row.sim_rss:8.1f} {row.p50:8.1f} "
                    f"{row.p99:8.1f} {row.refresh:11.1f} {row.jobs:7.0f} {row.series:7d} "
                    f"{row.warn:5d} {row.error:6d} "
                    f"{row.up_share:7.1%} {row.scrapes:8d} {row.hostile:8d}",
                    flush=True,
                )
                minute += 1
                if time.monotonic() >= end:
                    return

        await asyncio.gather(
            *(scraper(i / SCRAPERS) for i in range(SCRAPERS)), hostile(), reporter()
        )


def summarise(args: argparse.Namespace, rows: list[Row], code: int | None, log: Path) -> None:
    warn, error, tracebacks = log_levels(log)
    print()
    print(f"exporter exit status {code}; {warn} warn, {error} error, {tracebacks} tracebacks")
    print(f"log: {log}")
    if not rows:
        return
    warm = rows[min(len(rows), max(1, int(args.warm_up))) - 1]
    last = rows[-1]
    scrapes = sum(r.scrapes for r in rows)
    up = sum(r.up_share * r.scrapes for r in rows if r.scrapes)
    print(
        f"RSS after warm-up (minute {warm.minute}) to end (minute {last.minute}): "
        f"{warm.rss:.1f} -> {last.rss:.1f} MiB ({last.rss - warm.rss:+.1f}); "
        f"peak {max(r.rss for r in rows):.1f} MiB"
    )
    print(
        f"latency p50 {warm.p50:.1f} -> {last.p50:.1f} ms, p99 {warm.p99:.1f} -> {last.p99:.1f} ms"
    )
    print(
        f"median refresh {warm.refresh:.1f} -> {last.refresh:.1f} ms; "
        f"per-job samples {warm.series} -> {last.series}"
    )
    print(
        f"jobs reported {warm.jobs:.0f} -> {last.jobs:.0f}; "
        f"simulator RSS {warm.sim_rss:.1f} -> {last.sim_rss:.1f} MiB"
    )
    print(f"legitimate scrapes with every source up: {up / scrapes:.2%} of {scrapes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long (default 30)")
    parser.add_argument(
        "--max-jobs",
        type=int,
        default=200,
        help="simulated jobs per platform (default 200); 0: the demo's world, growing",
    )
    parser.add_argument(
        "--warm-up", type=float, default=2.0, help="minutes left out of the drift (default 2)"
    )
    args = parser.parse_args()
    rows: list[Row] = []
    with processes(args) as procs, contextlib.suppress(KeyboardInterrupt):
        pids = (procs.exporter.pid, procs.simulator.pid)
        asyncio.run(drive(args, procs.port, pids, procs.log, rows))
    summarise(args, rows, procs.exporter.returncode, procs.log)


if __name__ == "__main__":
    main()
