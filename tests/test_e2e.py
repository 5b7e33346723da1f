"""End to end on real parts: the exporter in demo mode, Debian's Prometheus scraping it every
second with the shipped rules, and Debian's Alertmanager delivering to a webhook in the test.

Checks that every dashboard panel's query runs and returns data, and that an alert the
simulator provokes (a scripted job failure) reaches the webhook with its labels and annotations.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.helpers import require_tool
from tests.test_process import Process, free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parent.parent
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))


@dataclass
class Stack:
    exporter: str
    prometheus: str
    alertmanager: str
    alerts: list[dict[str, Any]]


def wait_http(url: str, timeout: float = 30) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not come up")


@pytest.fixture(scope="module")
def tools() -> tuple[str, str]:
    return require_tool("prometheus"), require_tool("prometheus-alertmanager")


@pytest.fixture
async def stack(tools: tuple[str, str], tmp_path: Path) -> AsyncIterator[Stack]:
    prometheus_bin, alertmanager_bin = tools
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.extend((await request.json())["alerts"])
        return web.Response(text="ok")

    hook_app = web.Application()
    hook_app.router.add_post("/alerts", hook)
    runner = web.AppRunner(hook_app)
    await runner.setup()
    hook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()

    exporter_port, prom_port, am_port = free_port(), free_port(), free_port()
    (tmp_path / "alertmanager.yml").write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "hook",
                    "group_by": ["alertname", "source"],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "hook",
                        "webhook_configs": [
                            {"url": f"http://127.0.0.1:{hook_port}/alerts", "send_resolved": False}
                        ],
                    }
                ],
            }
        )
    )
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [
                    str(ROOT / "prometheus/alerts.yml"),
                ],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                },
                "scrape_configs": [
                    {
                        "job_name": "bulk-progress-exporter",
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                    }
                ],
            }
        )
    )
    exporter = Process(["--demo"], exporter_port)
    procs: list[subprocess.Popen[str]] = [exporter.proc]
    try:
        exporter.wait_listening()
        procs.append(
            subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
                [
                    alertmanager_bin,
                    f"--config.file={tmp_path / 'alertmanager.yml'}",
                    f"--storage.path={tmp_path / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
        procs.append(
            subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
                [
                    prometheus_bin,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{am_port}/-/ready")
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{prom_port}/-/ready")
        yield Stack(
            f"http://127.0.0.1:{exporter_port}",
            f"http://127.0.0.1:{prom_port}",
            f"http://127.0.0.1:{am_port}",
            received,
        )
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        await runner.cleanup()


async def query(http: aiohttp.ClientSession, base: str, expr: str) -> list[dict[str, Any]]:
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as r:
        body = await r.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]  # type: ignore[no-any-return]


def panel_queries() -> Iterator[tuple[str, str]]:
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.stem}: {panel['title']}", target["expr"]


def expand(expr: str, job_id: str) -> str:
    # What Grafana substitutes: "All" is the allValue .+, $__rate_interval at least four scrape
    # intervals (10s here, with 1s scrapes).
    expr = expr.replace("$__rate_interval", "10s").replace("$job_id", re.escape(job_id))
    return expr.replace("$platform", ".+").replace("$source", ".+")


async def test_dashboards_and_alerts_on_real_prometheus(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        # Let Prometheus gather ~20s of samples so that rates have data.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            up = await query(http, stack.prometheus, 'up{job="bulk-progress-exporter"}')
            ready = await query(
                http,
                stack.prometheus,
                "count_over_time(bulk_up[1m]) > 15",
            )
            if up and up[0]["value"][1] == "1" and len(ready) == 2:
                break
            await asyncio.sleep(1)
        else:
            raise AssertionError("Prometheus did not gather the exporter's samples")

        # Variables resolve: label_values(bulk_up, platform/source), and a job for the drill-down.
        async with http.get(
            f"{stack.prometheus}/api/v1/label/source/values", params={"match[]": "bulk_up"}
        ) as r:
            sources = (await r.json())["data"]
        assert sorted(sources) == ["firstpromoter-demo", "kizen-demo"]
        jobs = await query(http, stack.prometheus, 'bulk_job_info{phase="running"}')
        assert jobs
        job_id = jobs[0]["metric"]["job_id"]

        empty = []
        count = 0
        for where, expr in panel_queries():
            result = await query(http, stack.prometheus, expand(expr, job_id))
            count += 1
            if not result:
                empty.append(f"{where}: {expr}")
        assert count >= 20
        assert empty == [], "panels without data:\n" + "\n".join(empty)

        # The simulator fails a job 15s into the demo; the alert must reach the webhook.
        deadline = time.monotonic() + 90
        failed: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not failed:
            failed = [
                a for a in stack.alerts if a["labels"]["alertname"] == "BulkExporterJobFailed"
            ]
            await asyncio.sleep(1)
        assert failed, f"no BulkExporterJobFailed delivered; got {stack.alerts}"
        alert = failed[0]
        assert alert["status"] == "firing"
        labels = alert["labels"]
        assert labels["severity"] == "warning"
        assert labels["platform"] in ("kizen", "firstpromoter")
        assert labels["source"] in ("kizen-demo", "firstpromoter-demo")
        assert labels["action"]
        annotations = alert["annotations"]
        assert annotations["summary"] == f"A {labels['action']} job failed on {labels['source']}"
        assert re.fullmatch(
            rf"\d+ {re.escape(labels['action'])} job\(s\) on {labels['platform']} source "
            rf"{labels['source']} ended in failure in the last 10 minutes\.",
            annotations["description"],
        ), annotations["description"]
        assert annotations["runbook_url"] == "docs/runbook.md#bulkexporterjobfailed"
        # The demo's frozen jobs last changed 40 minutes ago: the stall rule sees them too.
        stalled = await query(
            http,
            stack.prometheus,
            "platform_source_job:bulk_job_seconds_since_change:active > 1800",
        )
        assert {s["metric"]["source"] for s in stalled} == {"kizen-demo", "firstpromoter-demo"}
