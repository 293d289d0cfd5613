"""Alert rules: promtool checks and tests them; this module also makes sure every alert is tested.

promtool comes from Debian's `prometheus` package. Without it the promtool tests skip, except
under CI (env CI set), where a missing promtool is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from snapshots import exported_metric_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "alerts.yml"
RULE_TESTS = (
    ROOT / "prometheus" / "alerts_test.yml",
    ROOT / "prometheus" / "alerts_backlog_test.yml",
)
README = ROOT / "README.md"
# The one base URL of every runbook; README's "Alerts" section says how to change it.
RUNBOOK_BASE = "https://github.com/blockpull-exporter/blockpull-exporter/blob/main/README.md"
SEVERITIES = {"critical", "warning", "info"}
# Metrics with one series per disk: alerts on them must say which disk.
PER_DISK_METRICS = {
    "blockpull_job_cursor_bytes",
    "blockpull_job_end_bytes",
    "blockpull_job_bandwidth_limit_bytes_per_second",
    "blockpull_jobs_started_total",
    "blockpull_jobs_completed_total",
    "blockpull_jobs_failed_total",
    "blockpull_jobs_aborted_total",
    "blockpull_disk_backing_depth",
    "blockpull_disk_consecutive_failures",
}
METRIC_NAME = re.compile(r"\b(blockpull_[a-z_]+|up)\b(?!\s*\()")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required under CI (Debian package prometheus)")
        pytest.skip("promtool not installed (Debian package prometheus)")
    return path


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def metrics_in(expr: str) -> set[str]:
    # Strip label matchers and strings first: their values are not metric names.
    return set(METRIC_NAME.findall(re.sub(r"\{[^}]*\}|\"[^\"]*\"", "", expr)))


def series_metric(series: str) -> str:
    return series.split("{", 1)[0].strip()


def coverage_gaps(rules: dict[str, Any], test_files: list[dict[str, Any]]) -> list[str]:
    """What is missing for every alert to have a firing case and a quiet case.

    A quiet case only counts when its input has series of a metric the alert reads, so that
    "no data at all" does not pass for "the condition is false".
    """
    fires: set[str] = set()
    quiet: set[str] = set()
    reads = {rule["alert"]: metrics_in(rule["expr"]) for rule in alert_rules(rules)}
    for test_file in test_files:
        for case in test_file.get("tests", []):
            fed = {series_metric(s["series"]) for s in case.get("input_series", [])}
            for check in case.get("alert_rule_test", []):
                name = check["alertname"]
                if check.get("exp_alerts"):
                    fires.add(name)
                elif fed & reads.get(name, set()):
                    quiet.add(name)
    gaps = []
    for name in reads:
        if name not in fires:
            gaps.append(f"{name}: no case where it fires")
        if name not in quiet:
            gaps.append(f"{name}: no case where it stays quiet on its own series")
    return gaps


def test_promtool_check_rules_is_clean() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rule_tests_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    assert coverage_gaps(load(RULES), [load(p) for p in RULE_TESTS]) == []


def test_coverage_check_reports_an_untested_alert() -> None:
    rules = {"groups": [{"name": "g", "rules": [{"alert": "New", "expr": "blockpull_x > 0"}]}]}
    assert coverage_gaps(rules, []) == [
        "New: no case where it fires",
        "New: no case where it stays quiet on its own series",
    ]


def test_coverage_check_rejects_a_quiet_case_without_the_alerts_series() -> None:
    rules = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "blockpull_x > 0"}]}]}
    tests = {
        "tests": [
            {
                "input_series": [{"series": 'blockpull_y{a="b"}', "values": "1"}],
                "alert_rule_test": [
                    {"alertname": "A", "exp_alerts": [{"exp_labels": {}}]},
                    {"alertname": "A", "exp_alerts": []},
                ],
            }
        ]
    }
    assert coverage_gaps(rules, [tests]) == ["A: no case where it stays quiet on its own series"]


def test_metrics_in_ignores_functions_and_label_values() -> None:
    expr = 'increase(blockpull_jobs_failed_total{state="up"}[5m]) > 0 unless up == 0'
    assert metrics_in(expr) == {"blockpull_jobs_failed_total", "up"}


def test_every_metric_the_alerts_use_is_exported_by_the_daemon() -> None:
    used = {m for rule in alert_rules(load(RULES)) for m in metrics_in(rule["expr"])}
    assert used - {"up"} - exported_metric_names() == set()


def test_rules_live_in_the_blockpull_exporter_group() -> None:
    assert [group["name"] for group in load(RULES)["groups"]] == ["blockpull-exporter"]


def test_the_required_alerts_exist() -> None:
    names = {rule["alert"] for rule in alert_rules(load(RULES))}
    assert {
        "BlockpullJobFailed",
        "BlockpullDiskGaveUp",
        "BlockpullJobStalled",
        "BlockpullLibvirtDown",
        "BlockpullPolicyReloadFailed",
        "BlockpullReconcileStalled",
        "BlockpullExporterDown",
        "BlockpullBacklogNotShrinking",
    } <= names


@pytest.mark.parametrize("rule", alert_rules(load(RULES)), ids=lambda r: r["alert"])
def test_alert_has_severity_summary_description_and_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    assert set(rule["annotations"]) >= {"summary", "description", "runbook_url"}


@pytest.mark.parametrize("rule", alert_rules(load(RULES)), ids=lambda r: r["alert"])
def test_alert_waits_before_firing(rule: dict[str, Any]) -> None:
    assert "for" in rule, "an alert without `for:` notifies on a single evaluation's blip"


@pytest.mark.parametrize("rule", alert_rules(load(RULES)), ids=lambda r: r["alert"])
def test_no_alert_pages(rule: dict[str, Any]) -> None:
    # A disk that is not pulled keeps working on its template, and running pulls go on in
    # QEMU: nothing this daemon reports needs a human at night.
    assert rule["labels"]["severity"] != "critical"


def per_disk_alerts() -> list[dict[str, Any]]:
    return [r for r in alert_rules(load(RULES)) if metrics_in(r["expr"]) & PER_DISK_METRICS]


def test_per_disk_alerts_are_recognised() -> None:
    names = {rule["alert"] for rule in per_disk_alerts()}
    assert {"BlockpullJobFailed", "BlockpullJobStalled"} <= names


@pytest.mark.parametrize("rule", per_disk_alerts(), ids=lambda r: r["alert"])
def test_per_disk_alert_names_domain_and_disk(rule: dict[str, Any]) -> None:
    for key in ("summary", "description"):
        text = rule["annotations"][key]
        assert "{{ $labels.domain }}" in text
        assert "{{ $labels.disk }}" in text


@pytest.mark.parametrize("rule", alert_rules(load(RULES)), ids=lambda r: r["alert"])
def test_only_exporter_down_names_the_scrape_job(rule: dict[str, Any]) -> None:
    names_job = re.search(r"\bjob\s*=~?", rule["expr"]) is not None
    assert names_job == (rule["alert"] == "BlockpullExporterDown")


@pytest.mark.parametrize("rule", alert_rules(load(RULES)), ids=lambda r: r["alert"])
def test_runbook_url_points_at_a_section_of_the_readme(rule: dict[str, Any]) -> None:
    base, _, anchor = rule["annotations"]["runbook_url"].partition("#")
    assert base == RUNBOOK_BASE
    headings = re.findall(r"^#+\s+(.+?)\s*$", README.read_text(), re.MULTILINE)
    # GitHub's anchors: lower case, punctuation dropped, spaces to dashes.
    anchors = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
    assert anchor in anchors
