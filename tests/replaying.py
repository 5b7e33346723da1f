"""Recordings as tests: the real command replaying a recording, scraped a number of times, and
what of each scrape a replay must reproduce."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.helpers import ROOT, Process, Samples, free_port, parse_samples

RECORDINGS = ROOT / "tests" / "recordings"
# What a replay reproduces scrape by scrape (docs/operations.md, "Reporting a problem"): the
# jobs by phase, the per-job series, the items and the finish counters, whether each source
# was up, and the requests made (a replay that asked what the recording never saw counts 404s).
# Times (last change, start, completion, ETA, durations) are left out: they are the
# recording's when upstream sent them, and the replay's own clock's otherwise.
REPRODUCED = (
    "bulk_up",
    "bulk_jobs",
    "bulk_pending_items",
    "bulk_jobs_finished_total",
    "bulk_items_processed_total",
    "bulk_rows_skipped_total",
    "bulk_api_requests_total",
    "bulk_job_info",
    "bulk_job_items",
    "bulk_job_progress_ratio",
)


def reproduced(samples: Samples) -> Samples:
    """The samples of `samples` a replay must serve alike."""
    return {key: value for key, value in samples.items() if key[0] in REPRODUCED}


async def scrape_process(port: int) -> Samples:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200, await response.text()
        return parse_samples(await response.text())


async def replay_scrapes(recording: Path, scrapes: int, *args: str) -> list[Samples]:
    """Run `--replay recording` as a process and scrape it `scrapes` times, one after
    another; the samples of each scrape. Fails on anything the replay server did not find
    in the recording (a replay that went another way than the recorded session)."""
    process = Process(["--replay", str(recording), *args], free_port())
    try:
        process.wait_listening()
        found = [await scrape_process(process.port) for _ in range(scrapes)]
    finally:
        code, _, err = process.stop()
    assert code == 0, err
    assert "not in the recording" not in err, err
    return found
