"""A bounded load test on loopback: 20 concurrent scrapers for 30 s against the real command,
while /-/healthy is probed. The simulator runs in a process of its own (as a real upstream
would), its jobs moving every second. Asserts no errors and flat memory; prints latencies
(timings are not asserted: shared machines are noisy)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from exporter.simulator.app import FP_PREFIX, KIZEN_PREFIX
from tests.helpers import Process, free_port, source_yaml

pytestmark = pytest.mark.load

SCRAPERS = 20
DURATION = 30.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_twenty_scrapers_for_thirty_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim_port = free_port()
    simulator = subprocess.Popen(  # noqa: ASYNC220 - started once, before any awaiting
        [sys.executable, "-m", "exporter.simulator", "--port", str(sim_port), "--tick", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert simulator.stdout is not None
    simulator.stdout.readline()  # printed once listening
    base_url = f"http://127.0.0.1:{sim_port}"
    config = tmp_path / "config.yaml"
    config.write_text(source_yaml(base_url + KIZEN_PREFIX, base_url + FP_PREFIX))
    process = Process(["--config.file", str(config)], free_port())
    try:
        process.wait_listening()
        base = f"http://127.0.0.1:{process.port}"
        errors: list[str] = []
        scrapes = 0
        health: list[float] = []
        memory: list[tuple[float, float]] = []
        end = time.monotonic() + DURATION

        async def scraper(http: aiohttp.ClientSession, n: int) -> None:
            nonlocal scrapes
            accept = "application/openmetrics-text" if n % 2 else "text/plain"
            while time.monotonic() < end:
                async with http.get(f"{base}/metrics", headers={"Accept": accept}) as r:
                    body = await r.read()
                    if r.status != 200 or b"bulk_up" not in body:
                        errors.append(f"{r.status}: {body[:100]!r}")
                scrapes += 1

        async def prober(http: aiohttp.ClientSession) -> None:
            while time.monotonic() < end:
                started = time.monotonic()
                async with http.get(f"{base}/-/healthy") as r:
                    await r.read()
                    if r.status != 200:
                        errors.append(f"healthy: {r.status}")
                health.append(time.monotonic() - started)
                await asyncio.sleep(0.05)

        async def sampler() -> None:
            while time.monotonic() < end:
                memory.append((time.monotonic(), rss_mib(process.proc.pid)))
                await asyncio.sleep(1)

        connector = aiohttp.TCPConnector(limit=SCRAPERS + 5)
        async with aiohttp.ClientSession(connector=connector) as http:
            await asyncio.gather(
                *(scraper(http, n) for n in range(SCRAPERS)), prober(http), sampler()
            )
        code, _, err = process.stop()
    finally:
        if process.proc.poll() is None:
            process.proc.kill()
        simulator.terminate()
        simulator.wait()
    assert errors == []
    assert code == 0, err
    assert scrapes > SCRAPERS
    # Memory flat: the last third of the run holds no more than the first third plus a margin
    # for allocator noise and the simulator's slowly growing job list.
    third = len(memory) // 3
    early = max(m for _, m in memory[:third])
    late = max(m for _, m in memory[-third:])
    # Past pytest's capture, so the figures show in `make test`'s output.
    with capsys.disabled():
        print(
            f"\n{scrapes} scrapes by {SCRAPERS} scrapers in {DURATION:.0f}s "
            f"({scrapes / DURATION:.0f}/s); "
            f"/-/healthy p50 {percentile(health, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(health, 0.99) * 1000:.1f} ms, max {max(health) * 1000:.1f} ms; "
            f"resident memory {memory[0][1]:.0f} -> {early:.0f} -> {late:.0f} MiB"
        )
    assert late < early + 25
