"""`--storage.path`: state across restarts (SIGTERM, kill -9), store faults, write volume, and
the cold start of a large history.

Restarts use the real command against a simulator in its own process (`python -m
exporter.simulator --control`), whose world the test shapes over HTTP while the exporter is
down; everything else runs in-process over real HTTP.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exporter import state
from exporter.runtime import Runtime
from exporter.server import make_app
from exporter.simulator import Credentials, Fault
from exporter.simulator.world import SIGNED_URL_HOST
from exporter.state import SCHEMA_VERSION, StateStore
from tests.conftest import Client, ExporterFactory, SimHandle
from tests.helpers import (
    Samples,
    capture_logs,
    config_from,
    free_port,
    one,
    parse_samples,
    require_tool,
    select,
    source_yaml,
)

CREDS = Credentials()
UPLOAD = "custom_object_upload"
COUNTERS = ("bulk_jobs_finished_total", "bulk_items_processed_total")


# --- the simulator and the exporter as processes ------------------------------------------


class SimProcess:
    """`python -m exporter.simulator --control` with an empty world the test fills."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter.simulator",
                "--port",
                str(self.port),
                "--tick",
                "0",
                "--control",
                *args,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # printed once it listens
        self.base = f"http://127.0.0.1:{self.port}"
        self.kizen_url = f"{self.base}/kizen"
        self.fp_url = f"{self.base}/firstpromoter/api/v2/company"

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{self.base}/_control/{path}", json=body or {}) as r,
        ):
            assert r.status == 200, await r.text()
            return await r.json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=10)


class ExporterProcess:
    """The real command with `--storage.path`; its log goes to a file."""

    def __init__(
        self, config: Path, storage: Path, log: Path, prefix: list[str] | None = None
    ) -> None:
        self.config, self.storage, self.log = config, storage, log
        self.prefix = prefix or []
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    "exporter",
                    "--web.listen-address",
                    f"127.0.0.1:{self.port}",
                    "--config.file",
                    str(self.config),
                    "--storage.path",
                    str(self.storage),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    async def wait_ready(self, seconds: float = 20) -> None:
        end = time.monotonic() + seconds
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < end:
                assert self.proc is not None
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/-/ready") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("the exporter did not become ready")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=15)
        if sig is signal.SIGTERM:
            assert self.proc.returncode == 0, self.log.read_text()

    async def scrape(self) -> Samples:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.port}/metrics") as r,
        ):
            assert r.status == 200
            return parse_samples(await r.text())


@pytest.fixture
def sim_process() -> Iterator[SimProcess]:
    sim = SimProcess("--kizen-finished", "0")
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def exporters() -> Iterator[list[ExporterProcess]]:
    started: list[ExporterProcess] = []
    yield started
    for e in started:
        if e.proc is not None and e.proc.poll() is None:
            e.proc.kill()
            e.proc.wait()


def write_config(path: Path, sim: SimProcess, extra: str = "") -> Path:
    path.write_text(
        source_yaml(
            sim.kizen_url,
            sim.fp_url,
            defaults="  max_job_series: 0\n" + extra,
            kizen_extra="    rate_limit: 100/s\n",
            fp_extra="    rate_limit: 100/s\n",
        )
    )
    return path


def counters(s: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {k: v for k, v in s.items() if k[0] in COUNTERS}


def never_lower(before: Samples, after: Samples) -> None:
    for key, value in counters(before).items():
        assert after.get(key, 0.0) >= value, (key, value, after.get(key))


def up(s: Samples) -> None:
    assert set(select(s, "bulk_up").values()) == {1.0}, select(s, "bulk_up")


# --- restarts ---------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_a_job_that_fails_while_the_exporter_is_down_counts_once(
    sig: signal.Signals,
    sim_process: SimProcess,
    exporters: list[ExporterProcess],
    tmp_path: Path,
) -> None:
    sim = sim_process
    hour_ago = time.time() - 3600
    for i in range(5):  # history: never counted
        await sim.call(
            "POST",
            "kizen",
            {
                "status": "completed",
                "pending": 0,
                "success": 9,
                "started_at": hour_ago - 100 - i,
                "completed_at": hour_ago - i,
            },
        )
    # Started long ago: when it ends, only a read by id learns how.
    old = await sim.call(
        "POST",
        "kizen",
        {"status": "in_progress", "pending": 100, "success": 10, "started_at": hour_ago},
    )
    # Started just now: when it ends, the "started since the last read" query finds it.
    new = await sim.call(
        "POST", "kizen", {"status": "in_progress", "pending": 50, "started_at": "now"}
    )
    batch = await sim.call(
        "POST", "firstpromoter", {"status": "in_progress", "selected_total": 100, "processed": 10}
    )
    exporter = ExporterProcess(
        write_config(tmp_path / "c.yaml", sim), tmp_path / "state", tmp_path / "log"
    )
    exporters.append(exporter)
    exporter.start()
    await exporter.wait_ready()
    s = await exporter.scrape()  # the baseline
    up(s)
    assert sum(counters(s).values()) == 0
    await sim.call("PATCH", f"kizen/{old['id']}", {"pending": 90, "success": 20})
    await sim.call("PATCH", f"firstpromoter/{batch['id']}", {"processed": 30})
    before = await exporter.scrape()
    up(before)
    assert one(before, "bulk_items_processed_total", source="kz", result="succeeded") == 10
    assert one(before, "bulk_items_processed_total", source="fp", result="succeeded") == 20

    exporter.stop(sig)
    # While it is down: all three fail, with more items done.
    await sim.call(
        "PATCH",
        f"kizen/{old['id']}",
        {"status": "failed", "pending": 60, "success": 25, "failed": 5, "completed_at": "now"},
    )
    await sim.call(
        "PATCH",
        f"kizen/{new['id']}",
        {"status": "failed", "pending": 40, "success": 7, "failed": 3, "completed_at": "now"},
    )
    await sim.call(
        "PATCH",
        f"firstpromoter/{batch['id']}",
        {"status": "failed", "processed": 35, "failed": 4, "updated_at": "now"},
    )

    exporter.start()
    await exporter.wait_ready()
    for round_number in range(3):
        s = await exporter.scrape()
        up(s)
        never_lower(before, s)
        kz = {"source": "kz", "action": UPLOAD}
        assert one(s, "bulk_jobs_finished_total", **kz, phase="failed") == 2, round_number
        assert sum(select(s, "bulk_jobs_finished_total", source="kz").values()) == 2
        assert one(s, "bulk_job_duration_seconds_count", **kz, phase="failed") == 2
        assert one(s, "bulk_items_processed_total", **kz, result="succeeded") == 15 + 7
        assert one(s, "bulk_items_processed_total", **kz, result="failed") == 5 + 3
        fp = {"source": "fp", "action": "promoters/accept"}
        assert one(s, "bulk_jobs_finished_total", **fp, phase="failed") == 1
        assert one(s, "bulk_job_duration_seconds_count", **fp, phase="failed") == 1
        assert one(s, "bulk_items_processed_total", **fp, result="succeeded") == 25
        assert one(s, "bulk_items_processed_total", **fp, result="failed") == 4
        if round_number == 1:  # and once more across a clean restart
            exporter.stop(signal.SIGTERM)
            exporter.start()
            await exporter.wait_ready()
    exporter.stop(signal.SIGTERM)
    assert "state restored" in exporter.log.read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_the_eta_and_failure_details_survive_a_restart(
    sig: signal.Signals,
    sim_process: SimProcess,
    exporters: list[ExporterProcess],
    tmp_path: Path,
) -> None:
    """A running job's pace and the failure details of finished jobs are in the state: right
    after a restart, with the job unchanged (one observation, for a fresh exporter: no ETA),
    the estimate is served, later than before (the job sat still meanwhile), and the page
    lists the failures with their details."""
    sim = sim_process
    job = await sim.call(
        "POST", "kizen", {"status": "in_progress", "pending": 1000, "started_at": "now"}
    )
    await sim.call(
        "POST",
        "firstpromoter",
        {
            "status": "failed",
            "selected_total": 10,
            "processed": 4,
            "failed": 6,
            "updated_at": "now",
            "processing_errors": ["row 3: <b>bad</b> email", "row 9: missing id"],
        },
    )
    failed = await sim.call(
        "POST",
        "kizen",
        {"status": "failed", "pending": 0, "success": 1, "failed": 2, "started_at": "now"},
    )
    assert failed["failure_report"]["url"]  # the simulator gives its signed link
    config = tmp_path / "c.yaml"
    config.write_text(
        source_yaml(
            sim.kizen_url,
            sim.fp_url,
            kizen_extra="    rate_limit: 100/s\n",
            fp_extra="    rate_limit: 100/s\n",
        )
    )
    exporter = ExporterProcess(config, tmp_path / "state", tmp_path / "log")
    exporters.append(exporter)
    exporter.start()
    await exporter.wait_ready()
    up(await exporter.scrape())
    await sim.call("PATCH", f"kizen/{job['id']}", {"pending": 900, "success": 100})
    before = await exporter.scrape()
    up(before)
    kz_job = {"source": "kz", "job_id": job["id"]}
    eta_before = one(before, "bulk_job_estimated_completion_timestamp_seconds", **kz_job)

    exporter.stop(sig)
    exporter.start()
    await exporter.wait_ready()
    after = await exporter.scrape()
    up(after)
    eta_after = one(after, "bulk_job_estimated_completion_timestamp_seconds", **kz_job)
    assert eta_after > eta_before
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{exporter.port}/") as r,
    ):
        page = await r.text()
    assert "row 3: &lt;b&gt;bad&lt;/b&gt; email" in page
    assert "row 9: missing id" in page
    assert f'data-job-id="{failed["id"]}" data-phase="failed"' in page
    assert "failures.csv" in page
    assert SIGNED_URL_HOST not in page
    exporter.stop(signal.SIGTERM)
    assert "state restored" in exporter.log.read_text()


async def test_twenty_kill_9s_during_churn_lose_and_double_nothing(
    exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    """An exporter killed at random moments while jobs churn ends with the same counters as
    one that never stopped scraping the same simulator history."""
    sim = SimProcess()  # the demo's lived-in world; the test drives its ticks
    try:
        config = write_config(tmp_path / "c.yaml", sim)
        victim = ExporterProcess(config, tmp_path / "state", tmp_path / "victim.log")
        reference = ExporterProcess(config, tmp_path / "reference", tmp_path / "reference.log")
        exporters += [victim, reference]
        victim.start()
        reference.start()
        await asyncio.gather(victim.wait_ready(), reference.wait_ready())
        up(await victim.scrape())
        up(await reference.scrape())  # both baselines see the same world
        rng = random.Random(5)
        last: Samples = {}
        stop = asyncio.Event()

        async def churn() -> None:
            nonlocal last
            while not stop.is_set():
                await sim.call("POST", "step", {"ticks": rng.randint(1, 3)})
                await reference.scrape()
                try:
                    s = await victim.scrape()
                except aiohttp.ClientError:
                    continue  # down, or coming up
                never_lower(last, s)  # across restarts too
                last = s
                # A pause between rounds: still hundreds of them over the twenty kills, without
                # three processes kept busy the whole time (the suite shares two cores).
                await asyncio.sleep(0.1)

        churning = asyncio.create_task(churn())
        for _ in range(20):
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            victim.stop(signal.SIGKILL)
            victim.start()
            await victim.wait_ready()
        await asyncio.sleep(0.5)
        stop.set()
        await churning
        # Churn has stopped: both read the same final state, twice for good measure.
        for _ in range(2):
            final_victim, final_reference = await victim.scrape(), await reference.scrape()
        up(final_victim)
        up(final_reference)
        assert counters(final_victim) == counters(final_reference)
        assert sum(select(final_reference, "bulk_jobs_finished_total").values()) > 20
        log = victim.log.read_text()
        assert log.count("state restored") >= 2 * 19  # two sources, every restart after a save
        assert "set aside" not in log
    finally:
        sim.stop()


# --- the store's faults, in-process over real HTTP --------------------------------------


@pytest.fixture
async def stored(sim: SimHandle) -> AsyncIterator[Any]:
    """Start exporters with a state store in a given directory, against the simulator."""
    clients: list[Client] = []

    async def start(
        directory: Path, text: str | None = None, path: Path | None = None
    ) -> tuple[Client, Runtime]:
        from aiohttp.test_utils import TestClient, TestServer

        config = config_from(text or source_yaml(sim.kizen_url, sim.fp_url))
        runtime = Runtime(config, path, store=StateStore(directory))
        client: Client = TestClient(TestServer(make_app(runtime)))
        await client.start_server()
        clients.append(client)
        return client, runtime

    try:
        yield start
    finally:
        for client in clients:
            await client.close()


async def get(client: Client) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200
    return parse_samples(await response.text())


async def lived_in(sim: SimHandle, client: Client, rounds: int = 4) -> Samples:
    """Scrape while the world moves, until some finishes and items are counted."""
    sim.world.populate(finished=5, running=4)
    s = await get(client)
    for _ in range(rounds):
        for _ in range(8):
            sim.world.step()
        s = await get(client)
    now = time.time()
    sim.world.add_kizen_job(status="failed", pending=0, success=3, failed=2, started_at=now)
    s = await get(client)
    assert one(s, "bulk_jobs_finished_total", source="kz", action=UPLOAD, phase="failed") >= 1
    return s


def files_in(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_file()]


def aside(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}.sqlite.unusable-*"))


async def test_restart_in_process_continues_the_counters(
    sim: SimHandle, stored: Any, tmp_path: Path
) -> None:
    client, _ = await stored(tmp_path)
    before = await lived_in(sim, client)
    await client.close()
    client, _ = await stored(tmp_path)
    after = await get(client)
    up(after)
    assert counters(after) == counters(before)


async def test_a_corrupt_file_is_set_aside_and_the_source_starts_afresh(
    sim: SimHandle, stored: Any, tmp_path: Path
) -> None:
    client, _ = await stored(tmp_path)
    await lived_in(sim, client)
    await client.close()
    garbage = bytes(random.Random(3).getrandbits(8) for _ in range(8192))
    (tmp_path / "kz.sqlite").write_bytes(garbage)
    for extra in ("kz.sqlite-wal", "kz.sqlite-shm"):
        (tmp_path / extra).unlink(missing_ok=True)
    with capture_logs() as logs:
        client, _ = await stored(tmp_path)
    (moved,) = aside(tmp_path, "kz")
    assert moved.read_bytes() == garbage  # kept as it was, for whoever wants to look
    assert "state file set aside" in logs.getvalue()
    s = await get(client)
    up(s)
    assert sum(select(s, "bulk_jobs_finished_total", source="kz").values()) == 0  # afresh
    assert sum(select(s, "bulk_jobs_finished_total", source="fp").values()) >= 1  # restored
    # The fresh file is usable: a restart restores it.
    await client.close()
    client, _ = await stored(tmp_path)
    assert counters(await get(client)) == counters(s)
    assert len(aside(tmp_path, "kz")) == 1


async def test_a_newer_schema_is_set_aside(sim: SimHandle, stored: Any, tmp_path: Path) -> None:
    client, _ = await stored(tmp_path)
    await lived_in(sim, client)
    await client.close()
    with sqlite3.connect(tmp_path / "kz.sqlite") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    content = (tmp_path / "kz.sqlite").read_bytes()
    with capture_logs() as logs:
        client, _ = await stored(tmp_path)
    (moved,) = aside(tmp_path, "kz")
    assert moved.read_bytes() == content
    assert "newer version" in logs.getvalue()
    s = await get(client)
    up(s)
    assert sum(select(s, "bulk_jobs_finished_total", source="kz").values()) == 0


async def test_a_garbled_row_sets_the_file_aside(
    sim: SimHandle, stored: Any, tmp_path: Path
) -> None:
    client, _ = await stored(tmp_path)
    await lived_in(sim, client)
    await client.close()
    with sqlite3.connect(tmp_path / "kz.sqlite") as db:
        db.execute("UPDATE jobs SET pending = 'many' WHERE id = (SELECT min(id) FROM jobs)")
    db.close()
    client, _ = await stored(tmp_path)
    assert len(aside(tmp_path, "kz")) == 1
    s = await get(client)
    up(s)
    assert sum(select(s, "bulk_jobs_finished_total", source="kz").values()) == 0


# The columns each schema version added, by version.
ADDED_COLUMNS = {3: ("errors", "failure_file", "rate"), 4: ("peak_succeeded", "peak_failed")}


@pytest.mark.parametrize("version", [2, 3])
async def test_an_older_file_is_upgraded_in_place(
    sim: SimHandle, stored: Any, tmp_path: Path, version: int
) -> None:
    """A state file written before failure details and pace histories were kept (schema 2),
    or before the highest counts seen and what was learnt of the account (schema 3), is
    brought up to date, not set aside: its counters continue."""
    client, _ = await stored(tmp_path)
    before = await lived_in(sim, client)
    await client.close()
    with sqlite3.connect(tmp_path / "kz.sqlite") as db:
        for added in range(version + 1, SCHEMA_VERSION + 1):
            for column in ADDED_COLUMNS[added]:
                db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
        db.execute("DELETE FROM meta WHERE key = 'learnt'")
        db.execute(f"PRAGMA user_version = {version}")
    db.close()
    with capture_logs() as logs:
        client, _ = await stored(tmp_path)
        after = await get(client)
    up(after)
    assert aside(tmp_path, "kz") == []
    assert "set aside" not in logs.getvalue()
    assert counters(after) == counters(before)
    with sqlite3.connect(tmp_path / "kz.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    db.close()


async def test_an_unreadable_pace_history_restarts_cleanly(
    sim: SimHandle, stored: Any, tmp_path: Path
) -> None:
    """A pace history that does not read back costs that job its estimate until it is seen
    moving again, not the file."""
    now = time.time()
    moving = sim.world.add_kizen_job(status="in_progress", pending=500, started_at=now - 60)
    client, _ = await stored(tmp_path, source_yaml(sim.kizen_url, None))
    up(await get(client))
    moving.pending, moving.success = 450, 50
    s = await get(client)
    assert select(s, "bulk_job_estimated_completion_timestamp_seconds", job_id=moving.id)
    await client.close()
    with sqlite3.connect(tmp_path / "kz.sqlite") as db:
        db.execute("UPDATE jobs SET rate = '[[\"soon\"]]' WHERE id = ?", (moving.id,))
    db.close()
    client, _ = await stored(tmp_path, source_yaml(sim.kizen_url, None))
    s = await get(client)
    up(s)
    assert aside(tmp_path, "kz") == []
    assert one(s, "bulk_job_info", job_id=moving.id) == 1
    assert not select(s, "bulk_job_estimated_completion_timestamp_seconds", job_id=moving.id)
    moving.pending, moving.success = 400, 100
    s = await get(client)
    assert select(s, "bulk_job_estimated_completion_timestamp_seconds", job_id=moving.id)


async def test_a_missing_directory_is_created(sim: SimHandle, stored: Any, tmp_path: Path) -> None:
    directory = tmp_path / "not" / "yet"
    client, _ = await stored(directory)
    up(await get(client))
    assert (directory / "kz.sqlite").is_file()
    assert (directory / "fp.sqlite").is_file()


async def test_a_directory_that_cannot_be_created_costs_only_persistence(
    sim: SimHandle, stored: Any, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("a file where the directory should be\n")
    with capture_logs() as logs:
        client, _ = await stored(tmp_path / "file" / "state")
        for _ in range(3):
            s = await get(client)
            up(s)
    # Each failed write counted (the creation, then every save of both sources).
    assert one(s, "bulk_state_write_failures_total") >= 1 + 2 * 3
    assert logs.getvalue().count('msg="cannot write state') == 1  # once (logfmt lines)


async def test_another_base_url_is_not_restored_and_no_secret_is_stored(
    sim: SimHandle, stored: Any, tmp_path: Path
) -> None:
    client, _ = await stored(tmp_path)
    before = await lived_in(sim, client)
    assert sum(counters(before).values()) > 0
    await client.close()
    # The same simulator behind another address: another base URL, so another account.
    other = sim.kizen_url.replace("127.0.0.1", "localhost")
    with capture_logs() as logs:
        client, _ = await stored(tmp_path, source_yaml(other, sim.fp_url))
    s = await get(client)
    up(s)
    assert sum(select(s, "bulk_jobs_finished_total", source="kz").values()) == 0
    assert sum(select(s, "bulk_items_processed_total", source="kz").values()) == 0
    assert select(s, "bulk_jobs_finished_total", source="fp") == select(
        before, "bulk_jobs_finished_total", source="fp"
    )
    assert "another account" in logs.getvalue()
    assert len(aside(tmp_path, "kz")) == 1  # the other account's state is kept aside
    await client.close()
    secrets = [CREDS.kizen_api_key.encode(), CREDS.fp_api_key.encode()]
    files = files_in(tmp_path)
    assert len(files) >= 3
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, path


def unprivileged() -> list[str]:
    """A prefix that runs a command without the capability to ignore file permissions, so
    that a read-only directory is read-only even to root."""
    if os.geteuid() != 0:
        return []
    setpriv = require_tool("setpriv")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]


async def test_a_read_only_directory_costs_only_persistence(
    sim_process: SimProcess, exporters: list[ExporterProcess], tmp_path: Path
) -> None:
    sim = sim_process
    await sim.call("POST", "kizen", {"status": "in_progress", "pending": 10, "started_at": "now"})
    config = write_config(tmp_path / "c.yaml", sim)
    # A state written while the directory was writable, then the directory made read-only.
    state = tmp_path / "state"
    first = ExporterProcess(config, state, tmp_path / "first.log")
    exporters.append(first)
    first.start()
    await first.wait_ready()
    up(await first.scrape())
    first.stop()
    kept = {p.name: p.read_bytes() for p in state.iterdir()}
    state.chmod(0o555)
    try:
        exporter = ExporterProcess(config, state, tmp_path / "log", prefix=unprivileged())
        exporters.append(exporter)
        exporter.start()
        await exporter.wait_ready()
        failures = []
        for _ in range(3):
            s = await exporter.scrape()
            up(s)
            failures.append(one(s, "bulk_state_write_failures_total"))
        exporter.stop()
    finally:
        state.chmod(0o755)
    assert failures[0] >= 1
    assert failures[2] >= failures[0] + 2 * 2  # every save of both sources after the first
    log = exporter.log.read_text()
    assert log.count('msg="cannot write state') == 1, log
    assert {p.name: p.read_bytes() for p in state.iterdir()} == kept  # untouched


async def test_a_steady_refresh_writes_next_to_nothing(
    sim: SimHandle, stored: Any, tmp_path: Path
) -> None:
    now = time.time()
    for i in range(300):
        sim.world.add_kizen_job(
            status="completed", pending=0, success=i, started_at=now - 9000, completed_at=now - i
        )
    for _ in range(5):
        sim.world.add_kizen_job(status="in_progress", pending=50, success=5, started_at=now)
        sim.world.add_fp_batch(status="in_progress", selected_total=50, processed=5)
    client, runtime = await stored(tmp_path)
    up(await get(client))  # the first save writes every job
    up(await get(client))
    assert runtime.store is not None
    db = runtime.store._files["kz"].db
    wal = tmp_path / "kz.sqlite-wal"
    rows, size = db.total_changes, wal.stat().st_size
    for _ in range(5):
        up(await get(client))
    # Nothing moved: each refresh rewrites only its schedule (one row), a page or two of WAL.
    assert db.total_changes - rows <= 5
    assert wal.stat().st_size - size <= 5 * 3 * (4096 + 24)
    # One job moving costs one row more.
    sim.world.kizen[0].success += 1
    rows = db.total_changes
    up(await get(client))
    assert db.total_changes - rows == 2 + 1  # the job, the schedule, the counters


async def test_killed_before_the_first_save(sim: SimHandle, stored: Any, tmp_path: Path) -> None:
    """A file that holds nothing but its identity (the exporter stopped before its first
    successful refresh) is simply used: nothing to set aside."""
    sim.sim.set_fault("kizen", Fault(status=500))
    client, _ = await stored(tmp_path)
    s = await get(client)
    assert one(s, "bulk_up", source="kz") == 0
    await client.close()
    sim.sim.set_fault("kizen", None)
    with capture_logs() as logs:
        client, _ = await stored(tmp_path)
        s = await get(client)
    up(s)
    assert aside(tmp_path, "kz") == []
    assert "set aside" not in logs.getvalue()


async def test_reload_a_source_whose_identity_changed_starts_afresh(
    sim: SimHandle, stored: Any, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(source_yaml(sim.kizen_url, sim.fp_url))
    client, runtime = await stored(tmp_path / "state", path.read_text(), path)
    before = await lived_in(sim, client)
    # Kizen: another base URL (another account); FirstPromoter: only a setting changes.
    path.write_text(
        source_yaml(
            sim.kizen_url.replace("127.0.0.1", "localhost"),
            sim.fp_url,
            fp_extra="    timeout: 4s\n",
        )
    )
    await runtime.reload()
    s = await get(client)
    up(s)
    assert sum(select(s, "bulk_jobs_finished_total", source="kz").values()) == 0
    assert sum(select(s, "bulk_items_processed_total", source="kz").values()) == 0
    fp_counters = {k: v for k, v in counters(before).items() if ("source", "fp") in k[1]}
    assert {k: v for k, v in counters(s).items() if ("source", "fp") in k[1]} == fp_counters
    assert len(aside(tmp_path / "state", "kz")) == 1


# --- cold start with a large history ----------------------------------------------------


async def test_cold_start_serves_the_active_jobs_at_once_then_the_history(
    sim: SimHandle, exporter: ExporterFactory, stored: Any, tmp_path: Path
) -> None:
    """2,000 finished jobs behind a slow, capped server and a short timeout: the first scrape
    is up with every active job, the history follows (across a restart in the middle), and
    from then on aggregates and counters equal those of an exporter that reads everything
    every time; history never counts."""
    from aiohttp.test_utils import TestServer

    from exporter.simulator import Simulator

    now = time.time()
    world = sim.world
    for i in range(2000):
        world.add_kizen_job(
            status="completed",
            pending=0,
            success=1 + i % 7,
            started_at=now - 90_000 + i,
            completed_at=now - 86_000 + i,
            at_end=True,
        )
    world.populate(finished=10, running=6)
    active = {j.id for j in world.kizen if j.active}
    sim.sim.latency["kizen"] = 0.15
    sim.sim.kizen_max_page_size = 100  # asks 1000, gets 100: 21 pages, 2 at a time
    # The reference reads the same world through a server without latency or cap.
    fast = TestServer(Simulator(world).app())
    await fast.start_server()
    try:
        reference = await exporter(
            source_yaml(
                str(fast.make_url("/kizen")),
                None,
                defaults="  max_job_series: 20\n",
                kizen_extra="    incremental: false\n    rate_limit: 1000/s\n",
            )
        )
        ref = await get(reference)
        up(ref)
        text = source_yaml(
            sim.kizen_url,
            None,
            defaults="  max_job_series: 20\n",
            kizen_extra="    rate_limit: 1000/s\n    max_concurrency: 2\n    timeout: 1500ms\n",
        )
        cold, _ = await stored(tmp_path, text)
        started = time.monotonic()
        s = await get(cold)
        first = time.monotonic() - started
        up(s)
        assert one(s, "bulk_history_loaded", source="kz") == 0
        # Every active job, with its series, at the first scrape, well within the timeout.
        assert {dict(k)["job_id"] for k in select(s, "bulk_job_info", source="kz")} >= active
        assert sum(select(s, "bulk_jobs", source="kz", phase="completed").values()) < 2000
        assert first < 1.0
        loaded_at = None
        for round_number in range(80):
            if round_number == 3:  # a restart while the history loads
                await cold.close()
                cold, _ = await stored(tmp_path, text)
            for _ in range(2):
                world.step()
            s, ref = await get(cold), await get(reference)
            up(s)
            up(ref)
            never_lower(s, ref)  # never ahead of the reference: history is never counted
            if one(s, "bulk_history_loaded", source="kz") == 1:
                loaded_at = loaded_at if loaded_at is not None else round_number
                assert aggregates(s) == aggregates(ref), round_number
            if loaded_at is not None and round_number >= loaded_at + 5:
                break
            await asyncio.sleep(0.1)
        assert loaded_at is not None, "the history never loaded"
        assert sum(select(ref, "bulk_jobs_finished_total").values()) > 0
        assert one(s, "bulk_jobs", source="kz", action=UPLOAD, phase="completed") >= 2000
    finally:
        await fast.close()


def aggregates(s: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    names = {"bulk_jobs", "bulk_pending_items", *COUNTERS, "bulk_job_duration_seconds_count"}
    return {k: v for k, v in s.items() if k[0] in names}


def test_a_password_in_the_base_url_is_not_kept_in_the_identity() -> None:
    from exporter.redact import Redactor
    from exporter.source import SourceRunner
    from exporter.state import identity_of
    from tests.helpers import config_from

    config = config_from(
        "sources:\n  - {name: a, platform: firstpromoter, account_id: c, api_key: kkkk-1234,"
        " base_url: 'https://user:url-password-42@api.example/v2'}\n"
    )
    (source,) = config.sources
    identity = identity_of(SourceRunner(source, config.settings(source), Redactor()))
    assert "url-password-42" not in identity
    assert "https://user:<secret>@api.example/v2" in identity


# --- a file out of reach for a while, deleted or replaced under the running exporter --------


async def test_a_file_locked_at_start_up_is_restored_once_free_and_never_set_aside(
    sim: SimHandle, stored: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "BUSY_TIMEOUT", 0.05)  # a lock held longer than this
    client, _ = await stored(tmp_path)
    await lived_in(sim, client)
    running = sim.world.add_kizen_job(status="in_progress", pending=10, started_at=time.time())
    before = await get(client)  # the file knows it running
    await client.close()
    locker = sqlite3.connect(tmp_path / "kz.sqlite", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with capture_logs() as logs:
            client, runtime = await stored(tmp_path)
            up(await get(client))
            assert "kz" not in runtime.store._files  # started without it
            # Finishes while the file is out of reach: counted once, not again at the merge.
            running.status, running.pending, running.success = "completed", 0, 10
            running.completed_at = time.time()
            locked = await get(client)
            assert one(locked, "bulk_state_write_failures_total") >= 2
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    s = await get(client)
    up(s)
    assert "kz" in runtime.store._files
    assert aside(tmp_path, "kz") == []
    assert "set aside" not in logs.getvalue()

    def completed(samples: Samples) -> float:
        return one(
            samples, "bulk_jobs_finished_total", source="kz", action=UPLOAD, phase="completed"
        )

    assert completed(s) == completed(before) + 1
    never_lower(before, s)
    never_lower(locked, s)
    # What the merge wrote is the whole state: a restart restores it as it is.
    await client.close()
    client, _ = await stored(tmp_path)
    assert counters(await get(client)) == counters(s)


async def test_a_state_file_deleted_while_running_is_written_afresh(
    sim: SimHandle, stored: Any, tmp_path: Path
) -> None:
    client, _ = await stored(tmp_path)
    before = await lived_in(sim, client)
    assert one(before, "bulk_state_write_failures_total") == 0
    (tmp_path / "kz.sqlite").unlink()
    with capture_logs() as logs:
        s = await get(client)
        s = await get(client)
    up(s)
    assert one(s, "bulk_state_write_failures_total") == 1  # noticed once
    assert logs.getvalue().count('msg="state file deleted under the running exporter') == 1
    assert (tmp_path / "kz.sqlite").is_file()
    assert aside(tmp_path, "kz") == []
    await client.close()
    client, _ = await stored(tmp_path)
    after = await get(client)
    up(after)
    assert counters(after) == counters(s)
    assert sum(select(after, "bulk_jobs_finished_total", source="kz").values()) > 0


async def test_a_state_file_replaced_while_running_is_set_aside_and_written_afresh(
    sim: SimHandle, stored: Any, tmp_path: Path
) -> None:
    client, _ = await stored(tmp_path)
    await lived_in(sim, client)
    other = tmp_path / "other"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE theirs (x)")
    db.close()
    content = other.read_bytes()
    os.replace(other, tmp_path / "kz.sqlite")
    with capture_logs() as logs:
        s = await get(client)
        s = await get(client)
    up(s)
    assert one(s, "bulk_state_write_failures_total") == 1
    assert logs.getvalue().count('msg="state file replaced under the running exporter') == 1
    # Kept as it came, never deleted (beside it, this exporter's emptied journal files).
    (moved,) = [p for p in aside(tmp_path, "kz") if not p.name.endswith(("-wal", "-shm"))]
    assert moved.read_bytes() == content
    with sqlite3.connect(moved) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("theirs",)]
    db.close()
    await client.close()
    client, _ = await stored(tmp_path)
    after = await get(client)
    up(after)
    assert counters(after) == counters(s)
