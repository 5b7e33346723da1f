"""No configured secret leaves the process: logs, metrics, pages, errors."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter.config import load_config
from exporter.runtime import Runtime
from exporter.server import make_app
from exporter.simulator import Credentials, Fault
from tests.conftest import ExporterFactory, SimHandle
from tests.helpers import capture_logs, source_yaml

CREDS = Credentials()
SECRETS = (CREDS.kizen_api_key, CREDS.fp_api_key)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    with capture_logs() as stream:
        yield stream


async def test_secrets_echoed_by_upstream_are_redacted(
    sim: SimHandle, tmp_path: Path, captured_logs: io.StringIO
) -> None:
    echo_kizen = json.dumps({"detail": f"Invalid API key {CREDS.kizen_api_key}."}).encode()
    echo_fp = f"<html>bad token Bearer {CREDS.fp_api_key}</html>".encode()
    sim.sim.set_fault("kizen", Fault(status=400, body=echo_kizen))
    sim.sim.set_fault("firstpromoter", Fault(status=200, body=echo_fp, content_type="text/html"))
    path = tmp_path / "config.yaml"
    path.write_text(source_yaml(sim.kizen_url, sim.fp_url))
    runtime = Runtime(load_config(path), path)
    client = TestClient(TestServer(make_app(runtime)))
    await client.start_server()
    seen: list[str] = []
    try:
        for url in (
            "/metrics",
            "/probe?source=kz",
            "/probe?source=fp",
            "/probe?target=kz&debug=true",
            "/probe?target=fp&debug=true",
            "/",
        ):
            response = await client.get(url)
            seen.append(await response.text())
        # A refused reload whose error text would quote the key.
        path.write_text(source_yaml(sim.kizen_url, sim.fp_url) + f"\n{CREDS.fp_api_key}: 1\n")
        response = await client.post("/-/reload")
        assert response.status == 500
        seen.append(await response.text())
    finally:
        await client.close()
    seen.append(captured_logs.getvalue())
    everything = "\n".join(seen)
    assert "Invalid API key <secret>" in everything  # the echo arrived, redacted
    assert "refresh failed" in captured_logs.getvalue()
    for secret in SECRETS:
        assert secret not in everything


async def test_a_key_echoed_into_labels_never_reaches_metrics_or_pages(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    """An upstream that echoes the request's key into every row's action (the simulator's
    echo switch): the label values are masked, on /metrics and on the landing page."""
    sim.world.populate()
    sim.sim.echo_key = True
    client = await exporter()
    c = Credentials()
    metrics = await (await client.get("/metrics")).text()
    page = await (await client.get("/")).text()
    for text in (metrics, page):
        assert c.kizen_api_key not in text
        assert c.fp_api_key not in text
    assert 'action="<secret> action"' in metrics
