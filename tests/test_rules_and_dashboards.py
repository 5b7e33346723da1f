"""Static checks of what users install: rule files and their unit tests, the example configs,
the dashboards' conventions, docker-compose.yml."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import require_tool

ROOT = Path(__file__).parent.parent
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))


def run(*args: str, cwd: Path = ROOT) -> str:
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_rule_files_are_valid() -> None:
    promtool = require_tool("promtool")
    out = run(promtool, "check", "rules", "prometheus/alerts.yml")
    assert "SUCCESS: 13 rules found" in out


def test_alert_rule_unit_tests() -> None:
    promtool = require_tool("promtool")
    out = run(promtool, "test", "rules", "prometheus/tests/alerts_test.yml")
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_and_documented() -> None:
    alerts = [
        rule
        for group in yaml.safe_load((ROOT / "prometheus/alerts.yml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    tests = (ROOT / "prometheus/tests/alerts_test.yml").read_text()
    runbook = (ROOT / "docs/runbook.md").read_text()
    assert len(alerts) >= 8
    for rule in alerts:
        name = rule["alert"]
        assert name.startswith("BulkExporter")
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
        assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}"
        assert f"\n## {name}\n" in runbook
        # Fired at least once in the unit tests, and checked silent at least once.
        assert tests.count(f"alertname: {name}\n") >= 2, name
        assert f"alertname: {name}\n        exp_alerts: []" in tests, name


def test_example_configs_are_valid(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    run(promtool, "check", "config", "prometheus/prometheus.yml")
    amtool = require_tool("amtool")
    run(amtool, "check-config", "alertmanager/alertmanager.yml")


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_conventions(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"]
    assert dashboard["tags"]
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("platform", "source"):
        v = variables[name]
        assert v["type"] == "query"
        assert v["multi"]
        assert v["includeAll"]
        assert v["allValue"] == ".+"
        assert v["definition"].startswith("label_values(")
        assert v["datasource"]["uid"] == "${datasource}"
    assert panels(dashboard)
    for panel in panels(dashboard):
        where = f"{path.name}: {panel['title']}"
        assert panel["datasource"]["uid"] == "${datasource}", where
        assert panel["fieldConfig"]["defaults"].get("unit"), where
        assert panel.get("description"), where
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", where
            expr = target["expr"]
            for match in re.finditer(r"\b(rate|increase|irate|deriv)\((.*?)\[([^\]]+)\]", expr):
                assert match.group(3) == "$__rate_interval", f"{where}: {expr}"
            # Every query honours the source selector (the exporter-wide build info aside).
            assert 'source=~"$source"' in expr or expr.startswith("bulk_build_info"), where


def test_dashboard_uids_and_panel_ids_are_unique() -> None:
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(DASHBOARDS) >= 2
    assert len(set(uids)) == len(uids)
    for path in DASHBOARDS:
        ids = [p["id"] for p in json.loads(path.read_text())["panels"]]
        assert len(set(ids)) == len(ids)


def test_provisioning_matches_the_compose_mounts() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    provider = yaml.safe_load(
        (ROOT / "grafana/provisioning/dashboards/bulk-progress-exporter.yml").read_text()
    )
    grafana_mounts = {
        v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]
    }
    assert grafana_mounts[provider["providers"][0]["options"]["path"]] == "./grafana/dashboards"
    datasource = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


def test_docker_compose_is_valid_and_mounts_exist() -> None:
    checker = require_tool("check-jsonschema")
    run(checker, "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert {"exporter", "prometheus", "alertmanager", "grafana"} <= set(compose["services"])
    assert "--demo" in compose["services"]["exporter"]["command"]
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), source
    prometheus = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    mounted = {Path(v.split(":")[1]).name for v in compose["services"]["prometheus"]["volumes"]}
    assert set(prometheus["rule_files"]) <= mounted
