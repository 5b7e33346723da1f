"""The HTTP endpoints, deadlines, single flight and refresh reuse."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from exporter.config import load_config
from exporter.runtime import Runtime
from exporter.server import make_app
from exporter.simulator import Credentials, Fault
from tests.conftest import ExporterFactory, SimHandle
from tests.helpers import (
    config_from,
    one,
    parse_samples,
    seed,
    select,
    source_yaml,
)


async def test_probe_serves_one_source(sim: SimHandle, exporter: ExporterFactory) -> None:
    seed(sim.world)
    client = await exporter()
    response = await client.get("/probe", params={"source": "fp"})
    assert response.status == 200
    s = parse_samples(await response.text())
    assert set(dict(k)["source"] for k in select(s, "bulk_up")) == {"fp"}
    assert sim.count("kizen") == 0
    assert select(s, "bulk_build_info") == {}

    missing = await client.get("/probe")
    assert missing.status == 400
    assert "source" in await missing.text()
    unknown = await client.get("/probe", params={"source": "nope"})
    assert unknown.status == 400
    assert "unknown source 'nope'" in await unknown.text()


async def test_health_never_touches_upstream(sim: SimHandle, exporter: ExporterFactory) -> None:
    client = await exporter()
    for path in ("/-/healthy", "/-/ready", "/"):
        response = await client.get(path)
        assert response.status == 200, path
    assert await (await client.get("/-/healthy")).text() == "OK\n"
    assert sum(sim.sim.requests.values()) == 0


async def test_ready_follows_the_runtime() -> None:
    runtime = Runtime(config_from("sources: []\n"))
    assert runtime.ready is False  # not until the server has started
    client = TestClient(TestServer(make_app(runtime)))
    await client.start_server()
    try:
        assert (await client.get("/-/ready")).status == 200
        runtime.ready = False
        response = await client.get("/-/ready")
        assert response.status == 503
        runtime.ready = True
    finally:
        await client.close()
    assert runtime.ready is False  # shut down: no longer ready


async def test_landing_page_lists_sources(sim: SimHandle, exporter: ExporterFactory) -> None:
    seed(sim.world)
    sim.sim.set_fault("firstpromoter", Fault(status=403))
    client = await exporter()
    await client.get("/metrics")
    response = await client.get("/")
    assert response.headers["Content-Type"].startswith("text/html")
    page = await response.text()
    assert '<a href="/metrics">' in page
    assert "kz" in page
    assert "kizen" in page
    assert "firstpromoter" in page
    assert "1 (up)" in page
    assert "0 (down)" in page
    assert "running: 1" in page
    assert "HTTP 403" in page


async def test_scrape_timeout_header_bounds_that_scrape_only(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    seed(sim.world)
    sim.sim.latency["kizen"] = 2.0
    # A full read on every scrape, 2s a request, within the source's 5s timeout.
    client = await exporter(kizen_extra="    incremental: false\n")
    started = time.monotonic()
    response = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "1.5"})
    elapsed = time.monotonic() - started
    s = parse_samples(await response.text())
    assert response.status == 200
    # 1.5s - 0.5s margin: this scrape waits 1s and reports the source down...
    assert one(s, "bulk_up", source="kz") == 0
    assert one(s, "bulk_up", source="fp") == 1
    assert elapsed >= 0.9  # lower bound only: a loaded machine can be slower
    assert one(s, "bulk_scrape_duration_seconds", source="kz") >= 0.9
    # ...while the refresh it started keeps the source's own timeout and succeeds for a
    # scrape that can wait: it joins the refresh in flight rather than starting another.
    response = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"})
    s = parse_samples(await response.text())
    assert one(s, "bulk_up", source="kz") == 1
    assert one(s, "bulk_api_requests_total", source="kz", endpoint="list", code="200") >= 1
    assert select(s, "bulk_api_requests_total", source="kz", code="timeout") == {}


async def test_a_scraper_with_a_tiny_timeout_cannot_fail_other_scrapes(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    seed(sim.world)
    sim.sim.latency["kizen"] = 0.3
    sim.sim.latency["firstpromoter"] = 0.3
    client = await exporter(
        kizen_extra="    incremental: false\n", fp_extra="    incremental: false\n"
    )
    hostile = {"X-Prometheus-Scrape-Timeout-Seconds": "0.6"}
    legit = {"X-Prometheus-Scrape-Timeout-Seconds": "10"}
    stop = asyncio.Event()

    async def attacker() -> None:
        while not stop.is_set():
            await (await client.get("/metrics", headers=hostile)).read()

    attackers = [asyncio.create_task(attacker()) for _ in range(2)]
    try:
        for _ in range(5):
            s = parse_samples(await (await client.get("/metrics", headers=legit)).text())
            assert one(s, "bulk_up", source="kz") == 1
            assert one(s, "bulk_up", source="fp") == 1
    finally:
        stop.set()
        await asyncio.gather(*attackers)


async def test_concurrent_scrapes_share_one_refresh(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    seed(sim.world)
    for _ in range(25):
        sim.world.add_kizen_job(status="completed", pending=0, success=1)
    sim.sim.latency["kizen"] = 0.2
    sim.sim.latency["firstpromoter"] = 0.2
    client = await exporter(kizen_extra="    page_size: 10\n")
    responses = await asyncio.gather(*(client.get("/metrics") for _ in range(8)))
    assert [r.status for r in responses] == [200] * 8
    bodies = [parse_samples(await r.text()) for r in responses]
    # One refresh's worth: 3 Kizen pages, 1 FirstPromoter list and 1 progress request.
    assert sim.count("kizen") == 3
    assert sim.count("firstpromoter") == 2
    assert all(one(b, "bulk_up", source="kz") == 1 for b in bodies)


async def test_min_interval_reuses_a_young_refresh(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    seed(sim.world)
    client = await exporter(defaults="  min_interval: 1h\n")
    for _ in range(3):
        assert (await client.get("/metrics")).status == 200
    assert sim.count("kizen") == 1
    assert sim.count("firstpromoter") == 2


async def test_reload_endpoint(sim: SimHandle, tmp_path: Path) -> None:
    seed(sim.world)
    path = tmp_path / "config.yaml"
    path.write_text(source_yaml(sim.kizen_url, None))
    runtime = Runtime(load_config(path), path)
    client = TestClient(TestServer(make_app(runtime)))
    await client.start_server()
    try:
        await client.get("/metrics")
        kept = runtime.sources["kz"]
        path.write_text(source_yaml(sim.kizen_url, sim.fp_url))
        response = await client.post("/-/reload")
        assert response.status == 200
        assert runtime.sources["kz"] is kept  # unchanged source keeps its state
        s = parse_samples(await (await client.get("/metrics")).text())
        assert one(s, "bulk_up", source="fp") == 1
        assert one(s, "bulk_config_last_reload_successful") == 1

        path.write_text(source_yaml(sim.kizen_url, sim.fp_url) + "\nbogus: 1\n")
        response = await client.post("/-/reload")
        assert response.status == 500
        assert "bogus: unknown key" in await response.text()
        s = parse_samples(await (await client.get("/metrics")).text())
        assert one(s, "bulk_config_last_reload_successful") == 0
        assert one(s, "bulk_up", source="fp") == 1  # the old configuration keeps serving
        assert one(s, "bulk_config_last_reload_success_timestamp_seconds") > 0
        assert (await client.get("/-/reload")).status == 405
    finally:
        await client.close()


def many_sources(sim: SimHandle, first: int, count: int, changed: str | None = None) -> str:
    """A source file of `count` sources (Kizen and FirstPromoter by turns) on the simulator;
    the source named `changed` gets a lower rate limit."""
    c = Credentials()
    lines = []
    for n in range(first, first + count):
        rate = "50/m" if f"src-{n}" == changed else "100/m"
        if n % 2:
            lines.append(
                f"- {{name: src-{n}, platform: firstpromoter, base_url: '{sim.fp_url}',"
                f" account_id: {c.fp_account_id}, api_key: {c.fp_api_key}, rate_limit: {rate}}}"
            )
        else:
            lines.append(
                f"- {{name: src-{n}, platform: kizen, base_url: '{sim.kizen_url}',"
                f" business_id: {c.kizen_business_id}, user_id: {c.kizen_user_id},"
                f" api_key: {c.kizen_api_key}, rate_limit: {rate}}}"
            )
    return "\n".join(lines) + "\n"


async def test_a_reload_changing_one_source_of_200_keeps_the_others(
    sim: SimHandle, tmp_path: Path
) -> None:
    seed(sim.world)
    folder = tmp_path / "sources.d"
    folder.mkdir()
    for part in range(10):
        (folder / f"part-{part}.yaml").write_text(many_sources(sim, part * 20, 20))
    path = tmp_path / "config.yaml"
    path.write_text("defaults: {timeout: 30s}\nsource_files: [sources.d/*.yaml]\n")
    runtime = Runtime(load_config(path), path)
    client = TestClient(TestServer(make_app(runtime)))
    await client.start_server()
    try:
        s = parse_samples(await (await client.get("/metrics")).text())
        assert len(select(s, "bulk_up")) == 200
        assert set(select(s, "bulk_up").values()) == {1}
        before = dict(runtime.sources)
        sessions = {name: r.upstream._client() for name, r in before.items()}
        requests = {name: dict(r.upstream.requests) for name, r in before.items()}
        jobs = {name: dict(r.tracker.jobs) for name, r in before.items()}
        assert all(requests.values())
        assert all(jobs.values())

        (folder / "part-3.yaml").write_text(many_sources(sim, 60, 20, changed="src-67"))
        response = await client.post("/-/reload")
        assert response.status == 200, await response.text()

        assert set(runtime.sources) == set(before)
        changed = runtime.sources["src-67"]
        assert changed is not before["src-67"]
        assert changed.config.rate.text == "50/m"
        # Only a tunable changed: the new runner shares the old one's memory, and takes the
        # rest over (and closes it) at its first refresh.
        assert changed.tracker is before["src-67"].tracker
        assert changed.predecessor is before["src-67"]
        assert sum(changed.upstream.requests.values()) == 0  # nothing sent by it yet
        for name, runner in runtime.sources.items():
            if name == "src-67":
                continue
            assert runner is before[name], name
            assert runner.tracker.jobs == jobs[name], name  # job state, counters, connections
            assert runner.upstream.requests == requests[name], name
            assert runner.upstream._client() is sessions[name], name
            assert not sessions[name].closed, name
        assert not sessions["src-67"].closed  # not before its successor's first refresh

        s = parse_samples(await (await client.get("/metrics")).text())
        assert sessions["src-67"].closed  # the replaced runner's connections are let go
        assert changed.predecessor is None
        made: dict[str, float] = {}
        for labels, value in select(s, "bulk_api_requests_total").items():
            source = dict(labels)["source"]
            made[source] = made.get(source, 0) + value
        # A kept source counts on from where it was, and so does the changed one (the same
        # account): what its old runner asked, and what the new one did since.
        assert made["src-65"] > sum(requests["src-65"].values())
        assert sum(requests["src-67"].values()) < made["src-67"]
        assert made["src-67"] <= sum(changed.upstream.requests.values())
        assert one(s, "bulk_up", source="src-67") == 1
    finally:
        await client.close()
