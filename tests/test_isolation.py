"""One platform failing never fails the other, the response, or the exporter."""

from __future__ import annotations

import json
import logging
import time

import pytest

from exporter.simulator import Fault
from tests.conftest import ExporterFactory, SimHandle, last_error
from tests.helpers import (
    Samples,
    one,
    parse_samples,
    seed,
    select,
)

SOURCES = {"kizen": "kz", "firstpromoter": "fp"}
FAULTS = {
    "500": Fault(status=500),
    "401": Fault(status=401),
    "html-200": Fault(
        status=200, body=b"<html><body>Maintenance</body></html>", content_type="text/html"
    ),
    "truncated-json": Fault(status=200, body=b'{"count": 3, "next": null, "resu'),
    "wrong-shape": Fault(status=200, body=b'"just a string"'),
    "slow-drip": Fault(status=200, body=b'{"count": 0, "results": []}', drip=0.2),
    "dropped-connection": Fault(close=True),
}
EXPECTED_CODE = {"slow-drip": "timeout", "dropped-connection": "error"}


def series_of(s: Samples, source: str) -> set[str]:
    return {name for (name, labels) in s if dict(labels).get("source") == source}


@pytest.mark.parametrize("failing", ["kizen", "firstpromoter"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_failing_platform_is_isolated(
    sim: SimHandle, exporter: ExporterFactory, failing: str, fault: str
) -> None:
    seed(sim.world)
    # The sources' own 1s timeout bounds their refresh, which the slow-drip body cannot meet;
    # the scrape (2s header) waits 1.5s for it.
    client = await exporter(defaults="  timeout: 1s\n")
    await client.get("/metrics")  # the baseline, while healthy
    sim.sim.set_fault(failing, FAULTS[fault])
    response = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"})
    assert response.status == 200
    s = parse_samples(await response.text())
    bad, good = SOURCES[failing], SOURCES["kizen" if failing != "kizen" else "firstpromoter"]

    assert one(s, "bulk_up", source=bad) == 0
    assert one(s, "bulk_up", source=good) == 1
    names = series_of(s, bad)
    # No stale gauges for the failing source; its counters and health stay.
    assert not {n for n in names if n.startswith("bulk_job") and not n.endswith("_total")}
    assert "bulk_pending_items" not in names
    assert {
        "bulk_up",
        "bulk_scrape_duration_seconds",
        "bulk_last_success_timestamp_seconds",
        "bulk_api_requests_total",
        "bulk_jobs_finished_total",
        "bulk_items_processed_total",
    } <= names
    assert {"bulk_jobs", "bulk_pending_items", "bulk_job_info"} <= series_of(s, good)
    assert "internal error" not in last_error(client, bad)
    code = EXPECTED_CODE.get(fault, str(FAULTS[fault].status))
    assert sum(select(s, "bulk_api_requests_total", source=bad, code=code).values()) >= 1

    sim.sim.set_fault(failing, None)
    s = parse_samples(await (await client.get("/metrics")).text())
    assert one(s, "bulk_up", source=bad) == 1
    assert "bulk_job_info" in series_of(s, bad)


async def test_every_source_failing_still_answers_200(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    sim.sim.set_fault("kizen", Fault(status=403))
    sim.sim.set_fault("firstpromoter", Fault(status=403))
    client = await exporter()
    response = await client.get("/metrics")
    assert response.status == 200
    s = parse_samples(await response.text())
    assert set(select(s, "bulk_up").values()) == {0}
    assert one(s, "bulk_build_info") == 1
    # Never succeeded: no last-success timestamp to report.
    assert select(s, "bulk_last_success_timestamp_seconds") == {}


async def test_server_errors_are_retried_then_succeed(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    seed(sim.world)
    sim.sim.set_fault("kizen", Fault(status=503, remaining=2))
    client = await exporter(fp=False)
    s = parse_samples(await (await client.get("/metrics")).text())
    assert one(s, "bulk_up", source="kz") == 1
    assert one(s, "bulk_api_requests_total", source="kz", endpoint="list", code="503") == 2
    assert one(s, "bulk_api_requests_total", source="kz", endpoint="list", code="200") == 1


async def test_client_errors_are_not_retried(sim: SimHandle, exporter: ExporterFactory) -> None:
    sim.sim.set_fault("kizen", Fault(status=401))
    client = await exporter(fp=False)
    s = parse_samples(await (await client.get("/metrics")).text())
    assert one(s, "bulk_up", source="kz") == 0
    assert one(s, "bulk_api_requests_total", source="kz", endpoint="list", code="401") == 1


async def test_malformed_rows_are_skipped_and_logged(
    sim: SimHandle, exporter: ExporterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    good = sim.world.add_kizen_job(status="in_progress", pending=4, started_at=now)
    rows = [
        good.to_json(),
        "not an object",
        {**good.to_json(), "id": None},
        {**good.to_json(), "id": "x-1", "success_count": "12"},
        {**good.to_json(), "id": "x-2", "pending_count": True},
        {**good.to_json(), "id": "x-3", "started_at": "yesterday"},
    ]
    body = json.dumps(
        {"count": len(rows), "next": None, "previous": None, "results": rows, "errors": None}
    ).encode()
    sim.sim.set_fault("kizen", Fault(status=200, body=body, endpoints=frozenset({"list"})))
    client = await exporter(fp=False)
    with caplog.at_level(logging.WARNING):
        s = parse_samples(await (await client.get("/metrics")).text())
    assert one(s, "bulk_up", source="kz") == 1
    assert one(s, "bulk_jobs", source="kz", action="custom_object_upload", phase="running") == 1
    skipped = [r for r in caplog.records if r.getMessage() == "skipped malformed rows"]
    assert len(skipped) == 1
    assert skipped[0].fields["count"] == 5  # type: ignore[attr-defined]
