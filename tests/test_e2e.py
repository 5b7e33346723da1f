"""End to end on real parts: the exporter in demo mode, Debian's Prometheus scraping it every
second with the shipped rules, and Debian's Alertmanager delivering to a webhook in the test.

Checks that every dashboard panel's query runs and returns data, that an alert the simulator
provokes (a scripted job failure) reaches the webhook with its labels and annotations, and that
no rule fails to evaluate. A second case scrapes the same sources through three targets (two
exporter replicas of one config, plus /probe) and compares every dashboard query with a
single-target scrape of the same data.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from exporter.simulator.app import FP_PREFIX, KIZEN_PREFIX
from tests.helpers import Process, free_port, parse_samples, require_tool, source_yaml

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parent.parent
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))


def start_prometheus(binary: str, tmp_path: Path, port: int) -> subprocess.Popen[str]:
    """Prometheus on loopback with `tmp_path/prometheus.yml` and temporary storage."""
    return subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def stop_all(procs: list[subprocess.Popen[str]]) -> None:
    """Terminate, newest first; kill what does not exit within 15 s."""
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def promql_regex(value: str) -> str:
    """`value` as a regex matching itself inside a PromQL string: Python's re.escape also
    escapes `-`, which PromQL's string literals refuse, and one backslash must be written
    as two."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\\\1", value)


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
        procs.append(start_prometheus(prometheus_bin, tmp_path, prom_port))
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{am_port}/-/ready")
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{prom_port}/-/ready")
        yield Stack(
            f"http://127.0.0.1:{exporter_port}",
            f"http://127.0.0.1:{prom_port}",
            f"http://127.0.0.1:{am_port}",
            received,
        )
    finally:
        stop_all(procs)
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
    expr = expr.replace("$__rate_interval", "10s").replace("$job_id", promql_regex(job_id))
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

        # Every panel query answers; the ones without data are reported at the end, after the
        # alert checks (a panel of a metric the exporter does not serve yet must not hide them).
        empty: list[tuple[str, str]] = []
        count = 0
        for where, expr in panel_queries():
            result = await query(http, stack.prometheus, expand(expr, job_id))
            count += 1
            if not result:
                empty.append((where, expr))
        assert count >= 25

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
        await assert_rules_healthy(http, stack.prometheus)
        # Asked again: rates need a few samples, and by now (after the alert's wait) they have.
        empty = [
            (where, expr)
            for where, expr in empty
            if not await query(http, stack.prometheus, expand(expr, job_id))
        ]
    assert empty == [], "panels without data:\n" + "\n".join(f"{w}: {e}" for w, e in empty)


async def assert_rules_healthy(http: aiohttp.ClientSession, prometheus: str) -> None:
    """Every shipped rule evaluated without error (no many-to-many join, no bad expression)."""
    async with http.get(f"{prometheus}/api/v1/rules") as r:
        groups = (await r.json())["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 19
    unhealthy = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    assert unhealthy == []
    async with http.get(f"{prometheus}/metrics") as r:
        own = parse_samples(await r.text())
    failures = {
        labels: value
        for (name, labels), value in own.items()
        if name == "prometheus_rule_evaluation_failures_total"
    }
    assert failures, "Prometheus does not export prometheus_rule_evaluation_failures_total"
    assert set(failures.values()) == {0.0}, failures


# --- one source through several targets ---------------------------------------------------------
# A fixed world (the simulator's jobs never move) read by two exporter processes with one config.
# Prometheus scrapes kz and fp through three targets each: /metrics of both replicas (job ha) and
# /probe?source= of replica one (job probe, relabelled as prometheus/prometheus.yml shows), and
# once more through /metrics of replica one (job single) with the source label renamed
# single-<name>: the single-target reference for the same data in the same Prometheus.
DUPLICATED = "kz|fp"
SINGLE = "single-kz|single-fp"
# Values derived from timestamps differ by the moment each replica first saw a job or last
# refreshed (seconds); request rates and refresh durations measure each replica's own activity.
TIMING = ("timestamp", "since_change", "scrape_duration")
ACTIVITY = ("bulk_api_requests_total",)


def simulator_process(port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.simulator", "--port", str(port), "--tick", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # printed once listening
    return proc


def ha_prometheus_config(rules: Path, one: str, two: str) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "ha", "static_configs": [{"targets": [one, two]}]},
            {
                "job_name": "probe",
                "metrics_path": "/probe",
                "static_configs": [{"targets": ["kz", "fp"]}],
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_source"},
                    {"source_labels": ["__param_source"], "target_label": "instance"},
                    {"target_label": "__address__", "replacement": one},
                ],
            },
            {
                "job_name": "single",
                "static_configs": [{"targets": [one]}],
                "metric_relabel_configs": [
                    {
                        "source_labels": ["source"],
                        "regex": "(.+)",
                        "target_label": "source",
                        "replacement": "single-$1",
                    }
                ],
            },
        ],
    }


def normalised(result: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], float]:
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for series in result:
        labels = {
            k: v.removeprefix("single-") if k == "source" else v
            for k, v in series["metric"].items()
        }
        key = tuple(sorted(labels.items()))
        assert key not in out, f"two series with labels {key}"
        out[key] = float(series["value"][1])
    return out


def same(a: float, b: float, abs_tol: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=abs_tol)


async def query_at(
    http: aiohttp.ClientSession, base: str, expr: str, at: float
) -> list[dict[str, Any]]:
    async with http.get(f"{base}/api/v1/query", params={"query": expr, "time": str(at)}) as r:
        body = await r.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]  # type: ignore[no-any-return]


async def test_one_source_through_three_targets_matches_one(
    tools: tuple[str, str], tmp_path: Path
) -> None:
    prometheus_bin, _ = tools
    sim_port, one_port, two_port, prom_port = free_port(), free_port(), free_port(), free_port()
    simulator = simulator_process(sim_port)
    base_url = f"http://127.0.0.1:{sim_port}"
    config = tmp_path / "config.yaml"
    config.write_text(source_yaml(base_url + KIZEN_PREFIX, base_url + FP_PREFIX))
    one = Process(["--config.file", str(config)], one_port)
    two = Process(["--config.file", str(config)], two_port)
    procs: list[subprocess.Popen[str]] = [simulator, one.proc, two.proc]
    prom = f"http://127.0.0.1:{prom_port}"
    try:
        one.wait_listening()
        two.wait_listening()
        (tmp_path / "prometheus.yml").write_text(
            yaml.safe_dump(
                ha_prometheus_config(
                    ROOT / "prometheus/alerts.yml", f"127.0.0.1:{one_port}", f"127.0.0.1:{two_port}"
                )
            )
        )
        procs.append(start_prometheus(prometheus_bin, tmp_path, prom_port))
        await asyncio.to_thread(wait_http, f"{prom}/-/ready")
        async with aiohttp.ClientSession() as http:
            # Every target up, with ~12 s of samples (rates over the 10 s rate interval).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                ready = await query(http, prom, "count_over_time(bulk_up[1m]) > 12")
                up = await query(http, prom, "up == 1")
                if len(up) == 5 and len(ready) == 8:  # kz, fp x (ha 2, probe 1, single 1)
                    break
                await asyncio.sleep(1)
            else:
                raise AssertionError("Prometheus did not gather every target's samples")
            at = time.time()

            # The setup really triplicates: a naive sum counts each job three times.
            def totals(source: str) -> str:
                return (
                    "sum by (phase) (max by (platform, source, action, phase) "
                    f'(bulk_jobs{{source=~"{source}"}}))'
                )

            naive = normalised(
                await query_at(http, prom, 'sum by (phase) (bulk_jobs{source=~"kz|fp"})', at)
            )
            dashboard = normalised(await query_at(http, prom, totals(DUPLICATED), at))
            reference = normalised(await query_at(http, prom, totals(SINGLE), at))
            assert dashboard == reference
            assert sum(reference.values()) > 20
            assert naive == {k: 3 * v for k, v in reference.items()}

            jobs = await query_at(
                http, prom, f'bulk_job_info{{source=~"{DUPLICATED}", phase="running"}}', at
            )
            job_id = jobs[0]["metric"]["job_id"]
            differences: list[str] = []
            compared = 0
            for where, expr in panel_queries():
                if "on (job, instance)" in expr:
                    continue  # per target by design: build info, the exporter's process
                common = expr.replace("$__rate_interval", "10s").replace("$platform", ".+")
                common = common.replace("$job_id", promql_regex(job_id))
                got = normalised(
                    await query_at(http, prom, common.replace("$source", DUPLICATED), at)
                )
                want = normalised(await query_at(http, prom, common.replace("$source", SINGLE), at))
                compared += 1
                if got.keys() != want.keys():
                    differences.append(f"{where}: series {sorted(got)} != {sorted(want)}")
                    continue
                if any(name in expr for name in ACTIVITY):
                    continue
                tolerance = 5.0 if any(word in expr for word in TIMING) else 0.0
                for key, value in got.items():
                    if not same(value, want[key], tolerance):
                        differences.append(f"{where}: {key} {value} != {want[key]}")
            assert compared >= 25
            assert differences == [], "\n".join(differences)

            # The per-job recorded series: one per active job, as many as with one target.
            active = await query_at(
                http,
                prom,
                "count by (source) (platform_source_job:bulk_job_seconds_since_change:active)",
                at,
            )
            counts = {s["metric"]["source"]: float(s["value"][1]) for s in active}
            assert counts["kz"] == counts["single-kz"] > 0
            assert counts["fp"] == counts["single-fp"] > 0
            await assert_rules_healthy(http, prom)
    finally:
        stop_all(procs)
