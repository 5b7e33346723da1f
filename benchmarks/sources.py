"""Many accounts on one replica: N Kizen + N FirstPromoter sources against one simulator.

Prints figures; asserts nothing.
`.venv/bin/python -m benchmarks.sources [--pairs 1,10,100] [--scrapes 15] [--record]`.
`--record`: the exporter writes every upstream exchange to a recording (`--record.path`), the
cost of recording; the recording's size is printed too.

Every source reads the same simulated account (60 jobs per platform, 7 active), 50 ms a
request, default settings but `rate_limit: 6000/m`. The simulator and the exporter each run in
a process of their own, so the exporter's memory and CPU time are its own (read from /proc).
Per size it prints: ready time (start to `/-/ready` 200), cold and steady scrape time (median
and p90 of /metrics over HTTP), upstream requests per source per steady scrape, resident memory,
answer bytes in both formats, CPU seconds and minor page faults per scrape, and, measured in
this run, one upstream round trip and prometheus_client's bare encoding of the same answer (its
families parsed back from the text answer and encoded again, once before the first steady
scrape and once after each, so that both medians see the same machine), the floor a scrape
cannot go below. The steady scrape is divided by that floor twice: median by median, and
scrape by scrape (each against the bare encodings timed on either side of it), the latter less
moved by a machine whose speed changes within seconds. Last, gzip of the answer as the server
does it.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import statistics
import subprocess
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from benchmarks.processes import free_port, simulator_process, start_exporter, until_ready
from benchmarks.scrape import CREDS, OPENMETRICS, TEXT
from exporter.platforms import firstpromoter, kizen
from exporter.server import GZIP_LEVEL
from exporter.simulator.app import FP_PREFIX, KIZEN_PREFIX

LATENCY = 0.05
STEADY_SCRAPES = 15
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def simulator() -> AbstractContextManager[int]:
    """The simulator in its own process, still (no ticks): 60 jobs per platform, the usual
    active and recently finished ones and older history (a `--max-jobs` world)."""
    return simulator_process("--tick", "0", "--max-jobs", "60", "--latency", str(LATENCY))


def config_text(pairs: int, port: int) -> str:
    base = f"http://127.0.0.1:{port}"
    lines = ["sources:"]
    for i in range(pairs):
        lines += [
            f"  - name: kz-{i}",
            "    platform: kizen",
            f"    base_url: {base}{KIZEN_PREFIX}",
            f"    business_id: {CREDS.kizen_business_id}",
            f"    user_id: {CREDS.kizen_user_id}",
            f"    api_key: {CREDS.kizen_api_key}",
            "    rate_limit: 6000/m",
            f"  - name: fp-{i}",
            "    platform: firstpromoter",
            f"    base_url: {base}{FP_PREFIX}",
            f"    account_id: {CREDS.fp_account_id}",
            f"    api_key: {CREDS.fp_api_key}",
            "    rate_limit: 6000/m",
        ]
    return "\n".join(lines) + "\n"


def metric_value_sum(text: str, name: str) -> float:
    """The sum of a metric's samples in a text answer."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in "{ ":
            total += float(line.rsplit(" ", 1)[1])
    return total


def proc_figures(pid: int) -> tuple[float, float, float, int]:
    """Resident MiB, CPU seconds (user, system) and minor page faults of a process, from
    /proc."""
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return rss, int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS, int(fields[7])


class Parsed(Collector):
    """Families parsed back from an answer, for the library to encode again."""

    def __init__(self, text: str) -> None:
        self.families = list(text_string_to_metric_families(text))

    def collect(self):  # type: ignore[no-untyped-def]
        return iter(self.families)


def zero_histogram_share(text: str) -> tuple[int, int]:
    """Samples of histograms that have observed nothing (served so that rate() and the
    quantile rules see an action's first job), and all samples of the answer."""
    zero = total = 0
    for family in text_string_to_metric_families(text):
        total += len(family.samples)
        if family.type != "histogram":
            continue
        counts = [s for s in family.samples if s.name.endswith("_count")]
        # Each histogram series is its buckets, _count and _sum: 18 samples.
        zero += sum(len(family.samples) // len(counts) for s in counts if s.value == 0)
    return zero, total


def bare_registry(text: str) -> CollectorRegistry:
    """A registry of the answer's families parsed back, for the library to encode again."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Parsed(text))
    return registry


def bare_encoding(registry: CollectorRegistry) -> float:
    """prometheus_client's own encoding of those families, timed once."""
    started = time.perf_counter()
    generate_latest(registry)
    return time.perf_counter() - started


async def bare_requests(pairs: int, sim_port: int) -> float:
    """The same upstream requests as one steady refresh of every source (2 per source),
    made by aiohttp alone, concurrently, with their JSON decoded and nothing else: what any
    aiohttp exporter pays for them on this machine (median of 5 rounds after 2 to warm)."""
    base = f"http://127.0.0.1:{sim_port}"
    kizen_list = f"{base}{KIZEN_PREFIX}{kizen.LIST_PATH}"
    fp_list = f"{base}{FP_PREFIX}{firstpromoter.LIST_PATH}"
    fp_progress = f"{base}{FP_PREFIX}{firstpromoter.PROGRESS_PATH}"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    page = [("page", "1")]
    kizen_reads: list[list[tuple[str, str]]] = [
        [*page, ("page_size", "1000"), ("completed", "false")],
        [*page, ("page_size", "1000"), ("completed", "true"), ("started_after", since)],
    ]
    fp_reads: list[tuple[str, list[tuple[str, str]]]] = [
        (
            fp_list,
            [
                *[("filters[status][]", s) for s in firstpromoter.ACTIVE],
                *page,
                ("per_page", str(firstpromoter.PER_PAGE)),
            ],
        ),
        (fp_progress, [("filters[status][]", s) for s in firstpromoter.ALL_STATUSES]),
    ]
    connector = aiohttp.TCPConnector(limit=0)
    kizen_headers = {
        "X-API-KEY": CREDS.kizen_api_key,
        "X-BUSINESS-ID": CREDS.kizen_business_id,
        "X-USER-ID": CREDS.kizen_user_id,
    }
    fp_headers = {"Authorization": f"Bearer {CREDS.fp_api_key}", "Account-ID": CREDS.fp_account_id}
    sessions = [
        aiohttp.ClientSession(headers=headers, connector=connector, connector_owner=False)
        for _ in range(pairs)
        for headers in (kizen_headers, fp_headers)
    ]

    async def get(session: aiohttp.ClientSession, url: str, params: list[tuple[str, str]]) -> None:
        async with session.get(url, params=params) as response:
            assert response.status == 200, response.status
            json.loads(await response.read())

    async def source(i: int) -> None:
        session = sessions[i]
        if i % 2 == 0:
            await asyncio.gather(*(get(session, kizen_list, p) for p in kizen_reads))
        else:
            await asyncio.gather(*(get(session, url, p) for url, p in fp_reads))

    times = []
    try:
        for _ in range(7):
            began = time.perf_counter()
            await asyncio.gather(*(source(i) for i in range(len(sessions))))
            times.append(time.perf_counter() - began)
    finally:
        for session in sessions:
            await session.close()
        await connector.close()
    return statistics.median(times[2:])


async def gzip_time(body: bytes, rounds: int = 7) -> float:
    """Median seconds to gzip `body` as the server does (in one worker thread, at its level)."""
    took: list[float] = []
    for _ in range(rounds):
        began = time.perf_counter()
        await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL, mtime=0)
        took.append(time.perf_counter() - began)
    return statistics.median(took)


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


async def one_size(
    pairs: int, sim_port: int, workdir: Path, scrapes: int, record: bool = False
) -> None:
    config = workdir / f"config-{pairs}.yaml"
    config.write_text(config_text(pairs, sim_port))
    port = free_port()
    recording = workdir / f"recording-{pairs}.jsonl"
    extra = ["--record.path", str(recording)] if record else []
    started = time.perf_counter()
    # Started once, before anything is measured.
    proc = start_exporter(config, port, "--log.level", "error", *extra, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    sources = 2 * pairs
    try:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            if not await until_ready(http, proc, url):
                assert proc.stderr is not None
                print(f"  {pairs:>4} pairs: the exporter exited: {proc.stderr.read()[:300]}")
                return
            ready = time.perf_counter() - started

            async def scrape(accept: str = TEXT) -> tuple[float, str]:
                # Timed to the last byte of the (decompressed) body, as a scraper's own scrape
                # duration is; decoding it as text belongs to the reader's parsing.
                began = time.perf_counter()
                async with http.get(f"{url}/metrics", headers={"Accept": accept}) as response:
                    raw = await response.read()
                took = time.perf_counter() - began
                return took, raw.decode()

            async def round_trip() -> float:
                headers = {"Authorization": f"Bearer {CREDS.fp_api_key}"}
                headers["Account-ID"] = CREDS.fp_account_id
                began = time.perf_counter()
                async with http.get(
                    f"http://127.0.0.1:{sim_port}{FP_PREFIX}/batch_processes/progress",
                    headers=headers,
                ) as response:
                    await response.read()
                return time.perf_counter() - began

            cold, _ = await scrape()
            # The first steady one may still settle (a background full read).
            _, settled = await scrape()
            bare = bare_registry(settled)
            _, user_before, system_before, faults_before = proc_figures(proc.pid)
            steady: list[float] = []
            cpus: list[float] = []
            cpu_mark = (user_before, system_before)
            # One before the first scrape too, so that every scrape has one on either side.
            encodings: list[float] = [bare_encoding(bare)]
            requests: list[float] = []
            body = ""
            for _ in range(scrapes):
                before = metric_value_sum(body, "bulk_api_requests_total") if body else None
                took, body = await scrape()
                steady.append(took)
                # Each scrape's CPU, up to the next one's (the exporter idles meanwhile): the
                # least of them is the figure a busy neighbour inflates the least.
                _, user_then, system_then, _ = proc_figures(proc.pid)
                cpus.append(user_then + system_then - sum(cpu_mark))
                cpu_mark = (user_then, system_then)
                # Interleaved with the scrapes (the exporter idles meanwhile), so that a change
                # in the machine's speed during the run moves both figures alike.
                encodings.append(bare_encoding(bare))
                if before is not None:
                    after = metric_value_sum(body, "bulk_api_requests_total")
                    requests.append((after - before) / sources)
            rss, user_after, system_after, faults_after = proc_figures(proc.pid)
            cpu_per_scrape = (user_after + system_after - user_before - system_before) / scrapes
            system_per_scrape = (system_after - system_before) / scrapes
            faults_per_scrape = (faults_after - faults_before) / scrapes
            _, openmetrics = await scrape(OPENMETRICS)
            trip = statistics.median([await round_trip() for _ in range(5)])
    finally:
        proc.terminate()
        proc.wait()
    # With the exporter stopped, so that only these requests use the cores.
    requests_alone = await bare_requests(pairs, sim_port)
    gzipping = await gzip_time(settled.encode())
    down = sum(
        1 for line in body.splitlines() if line.startswith("bulk_up{") and line.endswith(" 0.0")
    )
    encode = statistics.median(encodings)
    zero, samples = zero_histogram_share(body)
    median = statistics.median(steady)
    floor = trip + encode
    # Each steady scrape against the mean of the bare encodings timed just before and just after
    # it: a shared machine's speed can move by half within seconds, so a scrape and the
    # encodings beside it see the same speed far more often than two medians over the run do.
    paired = sorted(
        t / (trip + (before + after) / 2)
        for t, before, after in zip(steady, encodings, encodings[1:], strict=False)
    )
    print(
        f"  {pairs:>4} pairs ({sources} sources): ready {ready:.2f} s; cold {cold:.2f} s; "
        f"steady median {median:.3f} s, p90 {p90(steady):.3f} s; "
        f"{max(requests):.2f} requests/source, {down} sources down in the last; "
        f"resident {rss:.0f} MiB; "
        f"answer {len(body.encode()) / 1e6:.2f} MB text, "
        f"{len(openmetrics.encode()) / 1e6:.2f} MB OpenMetrics; "
        f"CPU {cpu_per_scrape:.3f} s/scrape ({cpu_per_scrape / sources * 1000:.3f} ms/source; "
        f"the least of one scrape {min(cpus) / sources * 1000:.3f}; "
        f"system {system_per_scrape:.3f} s), "
        f"{faults_per_scrape:,.0f} minor page faults/scrape "
        f"({faults_per_scrape / sources:.1f}/source); round trip {trip * 1000:.0f} ms, "
        f"bare encoding {encode * 1000:.0f} ms; steady / (round trip + bare encoding) "
        f"= {median / floor:.2f} (scrape by scrape: median {statistics.median(paired):.2f}, "
        f"least {paired[0]:.2f}, most {paired[-1]:.2f}); the same requests by aiohttp alone "
        f"{requests_alone * 1000:.0f} ms, steady / (those + bare encoding) "
        f"= {median / (requests_alone + encode):.2f}; "
        f"{samples} samples, {zero} ({zero / samples:.0%}) of them "
        "in histograms that observed nothing; "
        f"gzip of the answer {gzipping * 1000:.0f} ms"
        + (f"; recording {recording.stat().st_size / 1e6:.1f} MB" if record else "")
    )


async def main_async(sizes: list[int], scrapes: int = STEADY_SCRAPES, record: bool = False) -> None:
    print(
        f"N Kizen + N FirstPromoter sources on one simulated host, 60 jobs each (7 active), "
        f"{LATENCY * 1000:.0f} ms a request, rate_limit 6000/m, {scrapes} steady scrapes"
        + (", recording every exchange (--record.path)" if record else "")
    )
    with simulator() as sim_port, tempfile.TemporaryDirectory() as tmp:
        for pairs in sizes:
            await one_size(pairs, sim_port, Path(tmp), scrapes, record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--pairs", default="1,10,100,200,500", help="comma-separated sizes (pairs of sources)"
    )
    parser.add_argument(
        "--scrapes", type=int, default=STEADY_SCRAPES, help="steady scrapes a size (at least 2)"
    )
    parser.add_argument(
        "--record", action="store_true", help="the exporter records every upstream exchange"
    )
    args = parser.parse_args()
    if args.scrapes < 2:
        parser.error("--scrapes: at least 2 (requests a source are counted between two scrapes)")
    asyncio.run(main_async([int(n) for n in args.pairs.split(",")], args.scrapes, args.record))


if __name__ == "__main__":
    main()
