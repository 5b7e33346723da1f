"""`GET /probe?target=NAME&debug=true` over real HTTP against the simulator: the trace of the
refresh the answer comes from (requests, pages, rows skipped by field name, raw statuses with
their phases, row keys nobody reads), then the answer's metrics; redacted, bounded, 400 for a
source this replica does not serve, behind the same authentication as every endpoint."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from pathlib import Path

import bcrypt
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from exporter.platforms.base import Known, PlatformClient, ReadResult
from exporter.runtime import Runtime, Shard
from exporter.server import RUNTIME, make_app
from exporter.simulator.app import Fault
from exporter.source import SourceRunner
from exporter.trace import MAX_ENTRIES, MAX_REQUESTS
from exporter.upstream import Budget
from exporter.webconfig import load_web_config
from tests.conftest import Client, ExporterFactory, SimHandle
from tests.helpers import config_from, eventually, one, parse_samples, source_yaml

KIZEN_LIST = "/kizen/api/bulk-action-progress"
# One numbered request line of the trace: number, endpoint, attempt, status, bytes, ms, wait,
# path and query, then an optional note.
REQUEST_LINE = re.compile(
    r"^\s+(\d+)\s+(\w+)\s+(\d+)\s+(\S+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)s\s+(\S+)(.*)$"
)


async def debug(client: Client, name: str, param: str = "target") -> str:
    response = await client.get(f"/probe?{param}={name}&debug=true")
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    return await response.text()


def requests_of(text: str) -> list[re.Match[str]]:
    return [m for line in text.splitlines() if (m := REQUEST_LINE.match(line))]


def trace_part(text: str) -> str:
    return text.split("--- metrics of this answer", 1)[0]


def metrics_part(text: str) -> str:
    return text.split("--- metrics of this answer\n", 1)[1]


async def test_the_debug_probe_lists_each_request_with_status_bytes_and_ms_then_the_metrics(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    for _ in range(3):
        sim.world.add_kizen_job(status="in_progress", pending=50, success=10)
    client = await exporter(fp=False, kizen_extra="    page_size: 2\n")
    text = await debug(client, "kz")
    found = requests_of(trace_part(text))
    lists = [m for m in found if m.group(2) == "list"]
    # Three jobs at two a page: two list pages, each sent once and answered 200.
    pages = sorted(m.group(8) for m in lists)
    assert pages == [f"{KIZEN_LIST}?page=1&page_size=2", f"{KIZEN_LIST}?page=2&page_size=2"]
    for m in lists:
        assert (m.group(3), m.group(4)) == ("1", "200")
        assert int(m.group(5)) > 0  # bytes of the body
        assert float(m.group(6)) >= 0  # milliseconds
    assert "list: 2 -> 2: 1" in text
    assert "list: 2 -> 1: 1" in text
    assert "deadline: 5s" in text
    assert "rows read: list 3" in text
    # The metrics are those /probe answers, in the text format.
    samples = parse_samples(metrics_part(text))
    assert one(samples, "bulk_up", source="kz") == 1
    plain = await (await client.get("/probe?target=kz")).text()
    assert set(parse_samples(plain)) == set(samples)


async def test_source_works_as_the_parameter_name_too(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    client = await exporter(kizen=False)
    text = await debug(client, "fp", param="source")
    assert "debug trace of source fp (platform firstpromoter)" in text
    assert any(m.group(2) == "progress" for m in requests_of(text))


async def test_skipped_rows_name_their_reason_and_field_never_the_value(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    sim.world.add_kizen_job(status="in_progress")
    sim.world.add_kizen_job(status="in_progress", extra={"pending_count": "VALUE-NEVER-SHOWN"})
    sim.world.add_kizen_job(status="completed", extra={"started_at": "not-a-date-SECRETISH"})
    client = await exporter(fp=False, kizen_extra="    incremental: false\n")
    text = await debug(client, "kz")
    assert "list: bad_field, pending_count: 1" in text
    assert "list: bad_field, started_at: 1" in text
    assert "VALUE-NEVER-SHOWN" not in text
    assert "SECRETISH" not in text
    assert "rows read: list 3" in text


async def test_raw_statuses_are_listed_with_their_phase_and_count(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    for status in ("in_progress", "in_progress", "completed", "skipped", "paused_by_admin"):
        sim.world.add_kizen_job(status=status)
    client = await exporter(fp=False, kizen_extra="    incremental: false\n")
    text = await debug(client, "kz")
    assert "in_progress -> running: 2" in text
    assert "completed -> completed: 1" in text
    assert "skipped -> cancelled: 1" in text
    assert "paused_by_admin -> unknown: 1" in text


async def test_row_keys_the_exporter_does_not_read_are_listed_as_drift(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    sim.world.add_kizen_job(status="in_progress", extra={"send_email_notification": False})
    sim.world.add_kizen_job(status="completed")
    sim.world.add_fp_batch(status="in_progress")
    client = await exporter(
        kizen_extra="    incremental: false\n", fp_extra="    incremental: false\n"
    )
    kizen = await debug(client, "kz")
    assert "send_email_notification (NOT in the API reference): 1" in kizen
    assert "meta (in the API reference): 2" in kizen
    for read in ("pending_count", "status", "custom_object"):
        assert f"  {read} (" not in kizen
    fp = await debug(client, "fp")
    assert "meta (in the API reference): 1" in fp
    # Read now (for the landing page's failure details), so no longer drift.
    assert "  processing_errors (" not in fp
    assert "  failure_report (" not in kizen
    assert "NOT in the API reference" not in fp


async def test_a_retry_shows_its_attempt_and_reason_and_no_secret_shows(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    sim.world.add_kizen_job(status="in_progress")
    key = sim.sim.credentials.kizen_api_key
    password = "userinfo-password-never-shown"
    # The error body echoes the key; the base URL carries a password in its user information.
    sim.sim.set_fault(
        "kizen",
        Fault(status=503, body=f'{{"detail": "bad key {key}"}}'.encode(), remaining=1),
    )
    url = sim.kizen_url.replace("http://", f"http://someone:{password}@")
    client = await exporter(
        source_yaml(url, None, kizen_extra="    incremental: false\n"), kizen=False, fp=False
    )
    text = await debug(client, "kz")
    first, second = requests_of(text)[:2]
    assert (first.group(3), first.group(4)) == ("1", "503")
    assert "retried after" in first.group(9)
    assert "HTTP 503" in first.group(9)
    assert (second.group(3), second.group(4)) == ("2", "200")
    assert key not in text
    assert key[:12] not in text
    assert password not in text
    assert "<secret>" in text  # the echoed key, masked


async def test_a_wrong_shaped_answer_fails_the_source_with_the_reason_in_the_trace(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    sim.sim.set_fault("kizen", Fault(status=200, body=b'{"unexpected": []}'))
    client = await exporter(kizen_extra="    incremental: false\n")
    text = await debug(client, "kz")
    assert "up: 0" in text
    assert "result: failed: list: response is not a page object with a results array" in text
    # Only its own source: the other one is still up.
    samples = parse_samples(await (await client.get("/metrics")).text())
    assert one(samples, "bulk_up", source="fp") == 1


async def test_the_trace_is_bounded_to_the_first_requests_then_a_count(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    for _ in range(MAX_REQUESTS + 30):
        sim.world.add_kizen_job(status="completed")
    client = await exporter(
        fp=False,
        kizen_extra="    incremental: false\n    page_size: 1\n    rate_limit: 100000/s\n"
        "    timeout: 60s\n",
    )
    text = await debug(client, "kz")
    total = int(re.search(r"^requests: (\d+) \(", text, re.M).group(1))  # type: ignore[union-attr]
    assert total >= MAX_REQUESTS + 30
    numbered = requests_of(text)
    assert len(numbered) == MAX_REQUESTS
    assert f"... and {total - MAX_REQUESTS} more requests, not listed" in text


async def test_scrapes_that_share_a_refresh_share_its_trace(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    sim.world.add_kizen_job(status="in_progress")
    client = await exporter(fp=False, defaults="  min_interval: 1h\n")
    first = trace_part(await debug(client, "kz"))
    second = trace_part(await debug(client, "kz"))
    assert first == second
    assert sim.count("kizen", "list") == len(requests_of(first))


def runner_of(client: Client, name: str) -> SourceRunner:
    app = client.app
    assert app is not None
    return app[RUNTIME].sources[name]


async def test_only_a_refresh_a_debug_probe_asked_for_records_a_trace(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    sim.world.add_kizen_job(status="in_progress")
    client = await exporter(fp=False)
    runner = runner_of(client, "kz")
    assert (await client.get("/metrics")).status == 200
    assert runner.last is not None
    assert runner.last.trace is None
    assert (await client.get("/probe?target=kz")).status == 200
    assert runner.last.trace is None
    text = trace_part(await debug(client, "kz"))
    assert runner.last.trace is not None
    assert len(requests_of(text)) == 2  # a steady refresh: the active list, the finished one


async def refresh_in_flight(
    sim: SimHandle,
    exporter: ExporterFactory,
    latency: float,
    headers: dict[str, str] | None = None,
) -> tuple[Client, asyncio.Task[ClientResponse], int]:
    """An exporter of one Kizen source whose steady refresh, started by a /metrics scrape,
    is in flight, each request taking `latency`: the client, that scrape, and the requests
    the source had made before it."""
    sim.world.add_kizen_job(status="in_progress")
    client = await exporter(fp=False)
    assert (await client.get("/metrics")).status == 200  # the cold refresh
    before = sim.count("kizen")
    sim.sim.latency["kizen"] = latency
    scrape = asyncio.create_task(client.get("/metrics", headers=headers))
    await eventually(lambda: sim.count("kizen") > before, "the untraced refresh in flight")
    return client, scrape, before


async def test_a_debug_probe_during_an_untraced_refresh_gets_one_of_its_own_right_after(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    client, scrape, before = await refresh_in_flight(sim, exporter, 0.3)
    runner = runner_of(client, "kz")
    untraced = runner._inflight
    assert untraced is not None
    assert not untraced.done()  # else this would not test a probe meeting one in flight
    text = trace_part(await debug(client, "kz"))
    assert (await scrape).status == 200
    assert untraced is not None
    assert untraced.done()
    plain = untraced.result()
    assert plain.trace is None
    listed = requests_of(text)
    assert len(listed) == 2
    # Two refreshes, one after the other: the probe's trace holds only its own requests.
    assert sim.count("kizen") == before + 4
    traced = runner.last
    assert traced is not None
    assert traced.trace is not None
    assert traced.trace.started >= plain.refreshed_at


async def test_scrapes_during_an_untraced_refresh_share_it_though_a_probe_queued_one(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    # Each refresh takes about 1 s; a scrape waits at most 1.5 s: time for the refresh in
    # flight, not for it and the probe's after it.
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "2"}
    client, first, _ = await refresh_in_flight(sim, exporter, 1.0, headers)
    probe = asyncio.create_task(debug(client, "kz"))
    await eventually(lambda: runner_of(client, "kz")._queued is not None, "the probe's refresh")
    second = asyncio.create_task(client.get("/metrics", headers=headers))
    for scrape in (first, second):
        samples = parse_samples(await (await scrape).text())
        assert one(samples, "bulk_up", source="kz") == 1
    assert len(requests_of(trace_part(await probe))) == 2


async def test_a_probe_whose_wait_ends_before_its_refresh_begins_says_so(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    client, scrape, _ = await refresh_in_flight(sim, exporter, 1.0)
    # A 0.6 s scrape timeout leaves the probe the least wait, 0.1 s: the refresh in flight
    # still has most of a second to go.
    response = await client.get(
        "/probe?target=kz&debug=true", headers={"X-Prometheus-Scrape-Timeout-Seconds": "0.6"}
    )
    text = await response.text()
    assert "up: 0" in text
    assert "no trace: this scrape's wait ran out before a refresh that records one began" in text
    assert requests_of(trace_part(text)) == []
    assert (await scrape).status == 200


async def test_closing_a_source_ends_the_refresh_in_flight_and_the_one_queued(
    sim: SimHandle,
) -> None:
    sim.world.add_kizen_job(status="in_progress")
    runtime = Runtime(config_from(source_yaml(sim.kizen_url, None)))
    runner = runtime.sources["kz"]
    try:
        assert (await runner.snapshot()).up  # the cold refresh
        sim.sim.latency["kizen"] = 0.3
        before = sim.count("kizen")
        plain = asyncio.create_task(runner.snapshot())
        await eventually(lambda: sim.count("kizen") > before, "the untraced refresh in flight")
        untraced = runner._inflight
        probe = asyncio.create_task(runner.snapshot(traced=True))
        await asyncio.sleep(0)  # the probe queues its refresh, which has not begun
        queued = runner._queued
        assert untraced is not None
        assert queued is not None
        await runner.close()  # as a reload does with a source it retires
        assert untraced.cancelled()
        assert queued.cancelled()
        for waiting in (plain, probe):
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
    finally:
        await runtime.close()


async def test_within_min_interval_a_debug_probe_refreshes_unless_a_trace_is_kept(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    sim.world.add_kizen_job(status="in_progress")
    client = await exporter(fp=False, defaults="  min_interval: 1h\n")
    assert (await client.get("/metrics")).status == 200
    after_scrape = sim.count("kizen")
    text = trace_part(await debug(client, "kz"))
    assert sim.count("kizen") > after_scrape  # the kept snapshot had no trace
    after_debug = sim.count("kizen")
    assert len(requests_of(text)) == after_debug - after_scrape
    # Young and traced: scrapes and debug probes alike share it until min_interval ends.
    assert (await client.get("/metrics")).status == 200
    assert trace_part(await debug(client, "kz")) == text
    assert sim.count("kizen") == after_debug


async def test_an_unknown_or_foreign_source_answers_400(sim: SimHandle) -> None:
    config = config_from(source_yaml(sim.kizen_url, sim.fp_url))
    foreign = Shard(0, 2).of("kz")
    runtime = Runtime(config, shard=Shard(1 - foreign, 2))
    client: Client = TestClient(TestServer(make_app(runtime)))
    await client.start_server()
    try:
        unknown = await client.get("/probe?target=nope&debug=true")
        assert unknown.status == 400
        assert "unknown source 'nope'" in await unknown.text()
        other = await client.get("/probe?target=kz&debug=true")
        assert other.status == 400
        assert f"belongs to shard {foreign} of 2" in await other.text()
        assert sim.count("kizen") == 0
    finally:
        await client.close()


async def test_the_debug_probe_needs_the_same_basic_auth(sim: SimHandle, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw-for-prom", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    runtime = Runtime(config_from(source_yaml(sim.kizen_url, None)))
    app = make_app(runtime, load_web_config(web).middlewares())
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    try:
        refused = await client.get("/probe?target=kz&debug=true")
        assert refused.status == 401
        assert "debug trace" not in await refused.text()
        assert sim.count("kizen") == 0
        token = base64.b64encode(b"prom:pw-for-prom").decode()
        allowed = await client.get(
            "/probe?target=kz&debug=true", headers={"Authorization": f"Basic {token}"}
        )
        assert allowed.status == 200
        assert "debug trace of source kz" in await allowed.text()
    finally:
        await client.close()


async def test_a_request_that_waited_for_the_rate_limit_shows_the_wait(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    for _ in range(25):
        sim.world.add_kizen_job(status="completed")
    # A bucket of 20 tokens: pages 21 and on wait for theirs.
    client = await exporter(
        fp=False,
        kizen_extra="    incremental: false\n    page_size: 1\n    rate_limit: 20/s\n"
        "    max_concurrency: 1\n",
    )
    text = await debug(client, "kz")
    waits = [float(m.group(7)) for m in requests_of(text)]
    assert len(waits) >= 25
    assert waits[0] == 0
    assert any(w > 0 for w in waits[20:])
    total = float(re.search(r"rate-limit wait ([\d.]+)s in all", text).group(1))  # type: ignore[union-attr]
    assert total > 0


class Noticing:
    """A platform client with notices (what a client detected about its upstream), reading
    through the real client."""

    def __init__(self, inner: PlatformClient) -> None:
        self.inner = inner
        self.notices = {"started_after_ignored": "rows older than started_after came back"}

    async def read_all(self, budget: Budget) -> ReadResult:
        return await self.inner.read_all(budget)

    async def read_active(self, budget: Budget) -> ReadResult:
        return await self.inner.read_active(budget)

    async def read_changes(self, budget: Budget, known: Known) -> ReadResult:
        return await self.inner.read_changes(budget, known)


async def test_the_clients_notices_are_in_the_trace(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    client = await exporter(fp=False)
    assert client.app is not None
    refresher = client.app[RUNTIME].sources["kz"].refresher
    refresher.client = Noticing(refresher.client)
    text = await debug(client, "kz")
    assert "notices:\n  started_after_ignored: rows older than started_after came back" in text


async def test_statuses_and_keys_are_bounded_and_upstream_text_stays_on_its_line(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    extra = MAX_ENTRIES + 10
    for i in range(extra):
        sim.world.add_kizen_job(status=f"made_up_{i:03}", extra={f"new_key_{i:03}": 1})
    sim.world.add_kizen_job(status="odd\nstatus", extra={"evil\nkey # TYPE": 1})
    client = await exporter(fp=False, kizen_extra="    incremental: false\n")
    text = trace_part(await debug(client, "kz"))
    statuses = re.findall(r"^  made_up_\d+ -> unknown: 1$", text, re.M)
    keys = re.findall(r"^  new_key_\d+ \(NOT in the API reference\): 1$", text, re.M)
    assert len(statuses) <= MAX_ENTRIES
    assert len(keys) <= MAX_ENTRIES
    assert text.count(f"more, not listed (the first {MAX_ENTRIES} distinct are)") == 2
    # A newline from upstream is shown escaped, never as a line of its own.
    assert "odd\\nstatus -> unknown: 1" in text
    assert "evil\\nkey # TYPE (NOT in the API reference): 1" in text
    assert not any(line.startswith(("status", "key # TYPE")) for line in text.splitlines())
