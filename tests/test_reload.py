"""Reloads under load: a scrape in flight still answers, and a source whose account did not
change keeps its jobs, counters and histograms whatever tunables changed, with or without
`--storage.path`. In-process over real HTTP against the simulator."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter.config import load_config
from exporter.platforms.base import Known, ReadResult
from exporter.runtime import Runtime
from exporter.server import make_app
from exporter.simulator.world import KizenJob
from exporter.source import SourceRunner
from exporter.state import StateStore
from exporter.upstream import Budget
from tests.conftest import SimHandle
from tests.helpers import Client, Samples, eventually, one, scrape, select, source_yaml

UPLOAD = "custom_object_upload"
Start = Callable[..., Awaitable[tuple[Client, Runtime]]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """An exporter over real HTTP on a config file at tmp_path/config.yaml (written from
    `text`), with a state store in `storage` if given."""
    clients: list[Client] = []

    async def run(text: str, storage: Path | None = None) -> tuple[Client, Runtime]:
        path = tmp_path / "config.yaml"
        path.write_text(text)
        store = StateStore(storage) if storage is not None else None
        runtime = Runtime(load_config(path), path, store=store)
        client: Client = TestClient(TestServer(make_app(runtime)))
        await client.start_server()
        clients.append(client)
        return client, runtime

    try:
        yield run
    finally:
        for client in clients:
            await client.close()


async def reload(client: Client, path: Path, text: str) -> None:
    await asyncio.to_thread(path.write_text, text)
    response = await client.post("/-/reload")
    assert response.status == 200, await response.text()


def kizen_only(sim: SimHandle, extra: str = "") -> str:
    return source_yaml(sim.kizen_url, None, kizen_extra=extra)


class Gate:
    """Holds a runner's incremental reads until opened: a refresh stays in flight for as
    long as the test needs, whatever the machine's speed (the reads themselves are real)."""

    def __init__(self, runner: SourceRunner) -> None:
        self.waiting = asyncio.Event()
        self.open = asyncio.Event()
        client: Any = runner.refresher.client
        read = client.read_changes

        async def held(budget: Budget, known: Known) -> ReadResult:
            self.waiting.set()
            await self.open.wait()
            result: ReadResult = await read(budget, known)
            return result

        client.read_changes = held


def closed(runner: SourceRunner) -> bool:
    session = runner.upstream._session
    return session is None or session.closed


def two_running(sim: SimHandle) -> tuple[KizenJob, KizenJob]:
    now = time.time()
    return (
        sim.world.add_kizen_job(status="in_progress", pending=10, started_at=now - 60),
        sim.world.add_kizen_job(status="in_progress", pending=10, started_at=now - 30),
    )


def finish(job: KizenJob, success: int) -> None:
    job.status, job.pending, job.success, job.completed_at = "completed", 0, success, time.time()


def finished(s: Samples) -> float:
    return one(s, "bulk_jobs_finished_total", source="kz", action=UPLOAD, phase="completed")


def durations(s: Samples) -> float:
    return one(s, "bulk_job_duration_seconds_count", source="kz", action=UPLOAD, phase="completed")


def items(s: Samples) -> float:
    return one(s, "bulk_items_processed_total", source="kz", action=UPLOAD, result="succeeded")


@pytest.mark.parametrize("change", ["tunable", "account", "removed"])
async def test_a_scrape_in_flight_during_a_reload_still_answers(
    sim: SimHandle, start: Start, tmp_path: Path, change: str
) -> None:
    sim.world.add_kizen_job(status="in_progress", pending=10, started_at=time.time() - 60)
    client, runtime = await start(kizen_only(sim))
    assert one(await scrape(client), "bulk_up", source="kz") == 1  # the baseline
    old = runtime.sources["kz"]
    gate = Gate(old)
    in_flight = asyncio.create_task(scrape(client))
    await gate.waiting.wait()
    text = {
        "tunable": kizen_only(sim, "    page_size: 50\n"),
        "account": source_yaml(sim.kizen_url.replace("127.0.0.1", "localhost"), None),
        "removed": source_yaml(None, sim.fp_url),
    }[change]
    # The reload answers at once: it does not wait for the refresh it retired.
    await reload(client, tmp_path / "config.yaml", text)
    assert runtime.sources.get("kz") is not old
    assert not in_flight.done()
    assert not closed(old)
    gate.open.set()
    s = await in_flight
    assert one(s, "bulk_up", source="kz") == 1
    # Then the old runner is let go: by its successor's first refresh when the account is
    # the same, else in the background.
    after = await scrape(client)
    assert set(select(after, "bulk_up").values()) == {1.0}
    await eventually(lambda: closed(old), "the retired runner closed")
    assert not runtime._retiring


async def test_a_job_finishing_across_a_tunable_reload_counts_once(
    sim: SimHandle, start: Start, tmp_path: Path
) -> None:
    first, second = two_running(sim)
    client, runtime = await start(kizen_only(sim))
    await scrape(client)  # the baseline: both running
    finish(first, 10)
    before = await scrape(client)
    assert (finished(before), durations(before), items(before)) == (1, 1, 10)
    old = runtime.sources["kz"]
    await reload(client, tmp_path / "config.yaml", kizen_only(sim, "    page_size: 50\n"))
    new = runtime.sources["kz"]
    assert new is not old
    assert new.config != old.config
    finish(second, 10)
    for _ in range(2):  # and not again on the next scrape
        s = await scrape(client)
        assert one(s, "bulk_up", source="kz") == 1
        assert (finished(s), durations(s), items(s)) == (2, 2, 20)
        assert one(s, "bulk_jobs", source="kz", action=UPLOAD, phase="completed") == 2
    assert closed(old)


async def test_two_reloads_before_a_refresh_chain_the_takeover(
    sim: SimHandle, start: Start, tmp_path: Path
) -> None:
    job = sim.world.add_kizen_job(status="in_progress", pending=10, started_at=time.time() - 60)
    client, runtime = await start(kizen_only(sim))
    before = await scrape(client)
    oldest = runtime.sources["kz"]
    await reload(client, tmp_path / "config.yaml", kizen_only(sim, "    page_size: 50\n"))
    middle = runtime.sources["kz"]
    await reload(client, tmp_path / "config.yaml", kizen_only(sim, "    timeout: 4s\n"))
    newest = runtime.sources["kz"]
    assert newest.predecessor is middle
    assert middle.predecessor is oldest
    assert newest.tracker is oldest.tracker
    requests = sum(oldest.upstream.requests.values())
    finish(job, 10)
    s = await scrape(client)
    assert (finished(s), items(s)) == (1, 10)
    assert newest.predecessor is None
    assert closed(middle)
    assert closed(oldest)
    assert sum(select(s, "bulk_api_requests_total", source="kz").values()) > requests
    assert one(s, "bulk_last_success_timestamp_seconds", source="kz") >= one(
        before, "bulk_last_success_timestamp_seconds", source="kz"
    )


async def test_closing_while_a_predecessor_is_held_closes_both(
    sim: SimHandle, start: Start, tmp_path: Path
) -> None:
    sim.world.add_kizen_job(status="in_progress", pending=10, started_at=time.time() - 60)
    client, runtime = await start(kizen_only(sim))
    await scrape(client)
    old = runtime.sources["kz"]
    await reload(client, tmp_path / "config.yaml", kizen_only(sim, "    page_size: 50\n"))
    new = runtime.sources["kz"]
    assert new.predecessor is old
    await client.close()  # closes the runtime
    assert closed(old)
    assert closed(new)


def stored_counters(path: Path) -> dict[str, Any]:
    with sqlite3.connect(path) as db:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    db.close()
    return {key: json.loads(meta[key]) for key in ("finished", "items")}


async def test_with_storage_a_tunable_reload_keeps_memory_and_saves_the_last_refresh(
    sim: SimHandle, start: Start, tmp_path: Path
) -> None:
    first, second = two_running(sim)
    storage = tmp_path / "state"
    client, runtime = await start(kizen_only(sim), storage)
    await scrape(client)
    old = runtime.sources["kz"]
    # The old runner's refresh in flight across the reload takes in a finish: it is saved.
    gate = Gate(old)
    in_flight = asyncio.create_task(scrape(client))
    await gate.waiting.wait()
    finish(first, 10)
    await reload(client, tmp_path / "config.yaml", kizen_only(sim, "    page_size: 50\n"))
    new = runtime.sources["kz"]
    assert new.predecessor is old
    assert new.tracker is old.tracker
    gate.open.set()
    assert finished(await in_flight) == 1
    assert stored_counters(storage / "kz.sqlite") == {
        "finished": [[UPLOAD, "completed", 1]],
        "items": [[UPLOAD, "succeeded", 10]],
    }
    finish(second, 10)
    s = await scrape(client)
    assert (finished(s), durations(s), items(s)) == (2, 2, 20)
    assert closed(old)
    # Not read back from the file (memory is newer), yet the file holds it all: a restart
    # restores the same counters.
    await client.close()
    client, _ = await start(kizen_only(sim, "    page_size: 50\n"), storage)
    again = await scrape(client)
    assert (finished(again), durations(again), items(again)) == (2, 2, 20)
