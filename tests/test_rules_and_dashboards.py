"""Static checks of what users install: rule files and their unit tests, the example configs,
the dashboards' conventions and their conformance to Grafana's published dashboard schema,
docker-compose.yml."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import require_tool

ROOT = Path(__file__).parent.parent
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
SCHEMA_CHECK = ROOT / "tests" / "dashboard-schema"
RECORDED = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load((ROOT / "prometheus/alerts.yml").read_text())[
        "groups"
    ]
    return groups


def dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (f"{path.name}: {panel['title']}", target["expr"])
        for path in DASHBOARDS
        for panel in json.loads(path.read_text())["panels"]
        for target in panel.get("targets", [])
    ]


def run(*args: str, cwd: Path = ROOT) -> str:
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.mark.tools
def test_rule_files_are_valid() -> None:
    promtool = require_tool("promtool")
    out = run(promtool, "check", "rules", "prometheus/alerts.yml")
    assert "SUCCESS: 20 rules found" in out


@pytest.mark.tools
def test_alert_rule_unit_tests() -> None:
    promtool = require_tool("promtool")
    out = run(promtool, "test", "rules", "prometheus/tests/alerts_test.yml")
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_and_documented() -> None:
    alerts = [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]
    tests = (ROOT / "prometheus/tests/alerts_test.yml").read_text()
    runbook = (ROOT / "docs/runbook.md").read_text()
    assert len(alerts) >= 12
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


def test_recording_rules_precede_their_users_in_one_group() -> None:
    """A rule that uses a recorded series is in the recording rule's group, after it: Prometheus
    evaluates a group in order, so it always sees this evaluation's value."""
    recorded_where: dict[str, tuple[int, int]] = {}
    for g, group in enumerate(rule_groups()):
        for r, rule in enumerate(group["rules"]):
            if "record" in rule:
                recorded_where[rule["record"]] = (g, r)
    used = 0
    for g, group in enumerate(rule_groups()):
        for r, rule in enumerate(group["rules"]):
            for name in RECORDED.findall(rule["expr"]):
                assert name in recorded_where, name
                assert recorded_where[name][0] == g, f"{name} is recorded in another group"
                assert recorded_where[name][1] < r, f"{name} is recorded after its use"
                used += 1
    assert used >= 5


def test_dashboards_use_only_shipped_recording_rules() -> None:
    """Panels that read a recorded series need prometheus/alerts.yml loaded (docs/operations.md
    says to load the rules first): every recorded name a panel uses must be one the rules record."""
    recorded = {rule["record"] for g in rule_groups() for rule in g["rules"] if "record" in rule}
    used = {name for _, expr in dashboard_exprs() for name in RECORDED.findall(expr)}
    assert used <= recorded, used - recorded
    assert len(used) >= 4


def test_no_raw_series_is_summed_or_joined_across_targets() -> None:
    """The same source may be scraped through two targets (HA replicas, /metrics and /probe):
    a sum, count or join over raw exporter series must first take one value per source with
    `max by (platform, source, ...)`. This checks the textual form; the promtool cases with
    duplicated series and the end-to-end test with three targets check the results."""
    exprs = [
        (f"rule {rule.get('record') or rule.get('alert')}", rule["expr"])
        for g in rule_groups()
        for rule in g["rules"]
    ]
    for where, expr in [*exprs, *dashboard_exprs()]:
        flat = " ".join(expr.split())
        for match in re.finditer(r"\b(sum|count|avg)( by \([^)]*\))? ?\((?!max by)", flat):
            inner = flat[match.end() :]
            assert not inner.startswith(("bulk_", "rate(bulk_", "increase(bulk_")), (
                f"{where}: {flat}"
            )
        for match in re.finditer(r"\bon \(([^)]*)\) group_left", flat):
            labels = {label.strip() for label in match.group(1).split(",")}
            before = flat[: match.start()]
            per_target = {"job", "instance"} <= labels
            aggregated_first = "max by (" in before and bool(re.search(r"\)\s*[-+*/]\s*$", before))
            assert per_target or aggregated_first, f"{where}: {flat}"


@pytest.mark.tools
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
        assert v["query"]["query"].startswith("label_values(")
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


def run_schema_check(*paths: Path) -> subprocess.CompletedProcess[str]:
    node = require_tool("node")
    if not (SCHEMA_CHECK / "node_modules" / "@grafana" / "schema").is_dir():
        message = "tests/dashboard-schema is not installed (make tools runs npm ci there)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(
        [node, str(SCHEMA_CHECK / "check.mjs"), *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.tools
def test_dashboards_conform_to_grafana_schema() -> None:
    """Type-checked against the Dashboard type of @grafana/schema (pinned in
    tests/dashboard-schema/package.json): required fields, types, enums, unknown keys."""
    result = run_schema_check(*DASHBOARDS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(DASHBOARDS)} dashboard(s) conform to @grafana/schema" in result.stdout


@pytest.mark.tools
def test_schema_check_catches_what_grafana_would_not_accept(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARDS[0].read_text())
    dashboard["templating"]["list"][1]["current"] = {}  # text and value are required
    dashboard["links"][0] = {"title": "x", "type": "dashboards"}  # icon, tooltip, ... missing
    dashboard["links"].append({**dashboard["links"][0], "type": "dashbaords"})
    dashboard["panels"][1]["gridPos"]["w"] = "12"  # a number
    dashboard["graphTooltip"] = 7  # not a DashboardCursorSync
    dashboard["panels"][2]["fieldConfig"]["defaults"]["colour"] = {}  # unknown key
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dashboard, indent=2))
    result = run_schema_check(bad)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "'VariableOption'" in out or "text, value" in out
    assert "asDropdown, icon, includeVars, keepTime" in out
    assert '"dashbaords"' in out
    assert "Type 'string' is not assignable to type 'number'" in out
    assert "'7' is not assignable to type 'DashboardCursorSync" in out
    assert "'\"colour\"' does not exist" in out
    assert f"{bad}:" in out


def test_the_docs_state_the_minimum_grafana_version() -> None:
    readme = (ROOT / "docs" / "operations.md").read_text()
    versions = {json.loads(p.read_text())["schemaVersion"] for p in DASHBOARDS}
    # schemaVersion 39 is what Grafana 10.3 writes.
    assert versions == {39}
    assert "Grafana 10.3 or newer" in readme


def test_dashboard_uids_and_panel_ids_are_unique() -> None:
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(DASHBOARDS) >= 2
    assert len(set(uids)) == len(uids)
    for path in DASHBOARDS:
        ids = [p["id"] for p in json.loads(path.read_text())["panels"]]
        assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_fit_the_grid_without_overlapping(path: Path) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in json.loads(path.read_text())["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


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


def overview() -> dict[str, Any]:
    path = ROOT / "grafana" / "dashboards" / "bulk-progress-overview.json"
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panel_titled(dashboard: dict[str, Any], title: str, kind: str = "timeseries") -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        p for p in dashboard["panels"] if p["title"] == title and p["type"] == kind
    ]
    (panel,) = found
    return panel


def test_the_active_jobs_table_has_an_eta_column() -> None:
    table = panel_titled(overview(), "Active jobs", "table")
    targets = {t["refId"]: t["expr"] for t in table["targets"]}
    assert "bulk_job_estimated_completion_timestamp_seconds{" in targets["C"]
    # Grafana's dateTimeFromNow reads milliseconds ("in 14 minutes").
    assert targets["C"].startswith("1000 * max by (platform, source, job_id, action) (")
    organize = next(t for t in table["transformations"] if t["id"] == "organize")["options"]
    assert organize["renameByName"]["Value #C"] == "ETA"
    (eta,) = [o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "ETA"]
    assert {"id": "unit", "value": "dateTimeFromNow"} in eta["properties"]
    # The joins only add the job's object, status and phase: each value stays its own (the
    # recorded series is seconds since the last change, a factor no column may carry).
    for ref in ("A", "C"):
        joined = targets[ref].split("group_left (object, status, phase) ", 1)[1]
        assert joined.startswith("(platform_source_job:bulk_job_seconds_since_change:active{")
        assert joined.endswith("} * 0 + 1)"), ref


def test_the_api_allowance_panel() -> None:
    panel = panel_titled(overview(), "API allowance used")
    assert panel["fieldConfig"]["defaults"]["unit"] == "reqpm"
    used, allowance, account = (t["expr"] for t in panel["targets"])
    assert "rate(bulk_api_requests_total{" in used
    assert used.endswith(" * 60")
    assert allowance.startswith("max by (platform, source) (bulk_rate_limit_requests_per_second{")
    assert allowance.endswith(" * 60")
    assert 'platform="firstpromoter"' in account
    assert account.endswith(" * 0 + 400")


def test_a_row_for_the_exporter_itself() -> None:
    dashboard = overview()
    panels = dashboard["panels"]
    start = next(i for i, p in enumerate(panels) if p["title"] == "The exporter")
    assert panels[start]["type"] == "row"
    below = []
    for panel in panels[start + 1 :]:
        if panel["type"] == "row":
            break
        below += [t["expr"] for t in panel["targets"]]
    for metric in (
        "process_resident_memory_bytes",
        "rate(process_cpu_seconds_total[",
        "bulk_scrape_duration_seconds{",
        "scrape_duration_seconds and on (job, instance)",
    ):
        assert any(expr.startswith(metric) or metric in expr for expr in below), metric
    # Per exporter process (no source label of their own): limited to the targets that serve
    # the selected sources.
    for expr in below:
        if "process_" in expr or expr.startswith("scrape_duration"):
            assert expr.endswith(
                ' and on (job, instance) bulk_up{platform=~"$platform", source=~"$source"}'
            ), expr
