"""The Grafana dashboard and provisioning examples follow the project's conventions.

Conventions: plain JSON importable as is (no `__inputs`), a `datasource` variable every panel
uses, `instance` and `domain` variables every query filters on, metrics only from the design's
table, and every query valid PromQL (parsed by promtool as a recording rule).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboard_queries import (
    DASHBOARD,
    NEEDS_STATE,
    concrete_expr,
    dashboard_queries,
    panels,
)
from snapshots import exported_metric_names

GRAFANA = DASHBOARD.parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
INSTANCE_FILTER = 'instance=~"$instance"'
DOMAIN_FILTER = 'domain=~"$domain"'

# Series that exist per disk: a query of them filters by the $domain variable too.
PER_DISK = {
    "blockpull_jobs_started_total",
    "blockpull_jobs_completed_total",
    "blockpull_jobs_failed_total",
    "blockpull_jobs_aborted_total",
    "blockpull_copied_bytes_total",
    "blockpull_job_cursor_bytes",
    "blockpull_job_end_bytes",
    "blockpull_job_bandwidth_limit_bytes_per_second",
    "blockpull_disk_backing_depth",
    "blockpull_disk_consecutive_failures",
}
SELECTOR = re.compile(r"\b(blockpull_\w+)\s*(\{[^}]*\})?")


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in load_dashboard()["templating"]["list"]}


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matchers) for each metric selector; matchers is "" when there are none."""
    return [(m.group(1), m.group(2) or "") for m in SELECTOR.finditer(expr)]


def promql_errors(exprs: list[str], directory: Path) -> str:
    """promtool's complaints about exprs (after variable substitution); "" when all parse.

    promtool 2.42 has no PromQL checker, but `check rules` parses every recording rule.
    """
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required under CI (Debian package prometheus)")
        pytest.skip("promtool not installed (Debian package prometheus)")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": concrete_expr(expr)}
        for i, expr in enumerate(exprs)
    ]
    path = directory / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [tool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    return "" if result.returncode == 0 else result.stdout + result.stderr


def test_dashboard_is_valid_json_with_a_stable_uid() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "blockpull-exporter"
    assert dashboard["title"] == "blockpull-exporter"
    assert dashboard["schemaVersion"] == 39
    assert dashboard["id"] is None


def test_dashboard_has_no_import_inputs() -> None:
    dashboard = load_dashboard()
    assert "__inputs" not in dashboard
    assert "__requires" not in dashboard
    assert "${DS_" not in DASHBOARD.read_text()


def test_variables_are_datasource_then_instance_then_domain() -> None:
    assert list(variables()) == ["datasource", "instance", "domain"]


def test_datasource_variable_selects_prometheus_data_sources() -> None:
    datasource = variables()["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")


def test_instance_variable_lists_exporter_instances() -> None:
    instance = variables()["instance"]
    assert instance["datasource"] == DATASOURCE
    assert instance["definition"] == "label_values(blockpull_build_info, instance)"
    assert instance["query"]["query"] == instance["definition"]


def test_domain_variable_lists_domains_of_the_chosen_instances() -> None:
    domain = variables()["domain"]
    expected = 'label_values(blockpull_disk_backing_depth{instance=~"$instance"}, domain)'
    assert domain["datasource"] == DATASOURCE
    assert domain["definition"] == expected
    assert domain["query"]["query"] == expected


@pytest.mark.parametrize("name", ["instance", "domain"])
def test_filter_variables_allow_all_and_many(name: str) -> None:
    variable = variables()[name]
    assert variable["includeAll"] and variable["multi"]
    assert variable["allValue"] == ".*"  # a regex of 1,000 domain names is no use


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    for panel in panels(load_dashboard()):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_every_panel_has_a_query_and_a_description() -> None:
    for panel in panels(load_dashboard()):
        assert panel["targets"], panel["title"]
        assert panel.get("description"), panel["title"]


def test_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in load_dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_the_required_panels_exist() -> None:
    titles = {p["title"] for p in panels(load_dashboard())}
    assert {
        "Disks by state",
        "Backlog",
        "Backlog trend",
        "Pulls running",
        "Running pulls",
        "Throughput against budget",
        "Completions and failures",
        "Dependents per backing image",
        "Windows",
        "libvirt",
        "Policy reload",
        "Last reconcile age",
        "Reconcile duration p95",
    } <= titles


def test_progress_table_has_percent_rate_and_eta() -> None:
    (table,) = [p for p in panels(load_dashboard()) if p["title"] == "Running pulls"]
    by_ref = {t["refId"]: t["expr"] for t in table["targets"]}
    assert "blockpull_job_cursor_bytes" in by_ref["PROGRESS"]
    assert "blockpull_job_end_bytes" in by_ref["PROGRESS"]
    assert "rate(blockpull_copied_bytes_total" in by_ref["RATE"]
    assert "/ (rate(blockpull_copied_bytes_total" in by_ref["ETA"]


@pytest.mark.parametrize(("title", "expr"), dashboard_queries(DASHBOARD))
def test_query_uses_only_metrics_the_daemon_exports(title: str, expr: str) -> None:
    metrics = {metric for metric, _ in selectors(expr)}
    assert metrics, f"{title}: no blockpull metric in {expr}"
    assert metrics - exported_metric_names() == set(), f"{title}: unknown metrics"


@pytest.mark.parametrize(("title", "expr"), dashboard_queries(DASHBOARD))
def test_query_filters_by_instance_and_per_disk_metrics_by_domain(title: str, expr: str) -> None:
    for metric, matchers in selectors(expr):
        assert INSTANCE_FILTER in matchers, f"{title}: {metric} not filtered by instance"
        if metric in PER_DISK:
            assert DOMAIN_FILTER in matchers, f"{title}: {metric} not filtered by domain"


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    exprs = [expr for _, expr in dashboard_queries(DASHBOARD)]
    assert promql_errors(exprs, tmp_path) == ""


def test_promql_check_reports_a_broken_query(tmp_path: Path) -> None:
    assert promql_errors(["sum(rate(blockpull_x[$__rate_interval])"], tmp_path) != ""


def test_dashboard_queries_lists_every_target_with_its_panel() -> None:
    queries = dashboard_queries(DASHBOARD)
    targets = sum(len(p["targets"]) for p in panels(load_dashboard()))
    assert len(queries) == targets
    assert ("Version", 'blockpull_build_info{instance=~"$instance"}') in queries


def test_dashboard_queries_reads_panels_nested_in_collapsed_rows(tmp_path: Path) -> None:
    nested = {
        "panels": [
            {"type": "row", "panels": [{"title": "Inner", "targets": [{"expr": "up"}]}]},
            {"title": "Outer", "targets": [{"expr": "time()"}, {"refId": "no expr"}]},
        ]
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(nested))
    assert dashboard_queries(path) == [("Inner", "up"), ("Outer", "time()")]


def test_needs_state_names_existing_panels() -> None:
    assert set(NEEDS_STATE) <= {title for title, _ in dashboard_queries(DASHBOARD)}


def test_concrete_expr_fills_every_variable_syntax() -> None:
    expr = 'rate(m{instance=~"$instance", domain=~"${domain:regex}"}[$__rate_interval])'
    assert concrete_expr(expr, {"instance": "hv1:9855"}) == (
        'rate(m{instance=~"hv1:9855", domain=~".*"}[5m])'
    )


def test_concrete_expr_keeps_longer_variable_names_whole() -> None:
    assert concrete_expr("[$__range] [$__rate_interval] [$__interval]") == "[1d] [5m] [5m]"


def test_concrete_expr_rejects_an_unknown_variable() -> None:
    with pytest.raises(KeyError):
        concrete_expr('m{host="$host"}')


def test_no_query_is_left_with_a_variable_after_substitution() -> None:
    for _, expr in dashboard_queries(DASHBOARD):
        assert "$" not in concrete_expr(expr)


def test_dashboard_provider_example_loads_files_from_a_path() -> None:
    config = yaml.safe_load(
        (GRAFANA / "provisioning/dashboards/blockpull-exporter.yaml").read_text()
    )
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


def test_datasource_example_is_a_prometheus_data_source() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"].startswith("http")
