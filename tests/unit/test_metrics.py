"""The /metrics content: names, types, labels, pre-initialised series, and promtool's verdict."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import snapshots as s
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.core.decisions import AbortReason, DiskState
from exporter.core.model import DiskKey, JobType
from exporter.daemon.snapshot import Counters, Snapshot
from exporter.metrics.renderer import MetricsRenderer, SnapshotCollector, render

VERSION = "1.2.3"


def families(snapshot: Snapshot | None) -> dict[str, tuple[str, list]]:
    """Family name -> (type, samples), parsed back from the exposition text."""
    text = render(snapshot, VERSION).decode()
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def values(snapshot: Snapshot | None, sample_name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Sample labels (sorted pairs) -> value for one sample name."""
    text = render(snapshot, VERSION).decode()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name
    }


def disk(domain: str, name: str = "vda") -> tuple[tuple[str, str], ...]:
    return (("disk", name), ("domain", domain))


@pytest.mark.parametrize(
    "snapshot", [s.realistic_snapshot(), s.large_snapshot(100)], ids=["realistic", "large"]
)
def test_render_matches_prometheus_client_byte_for_byte(snapshot: Snapshot) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot, VERSION))
    assert render(snapshot, VERSION) == generate_latest(registry)


def test_render_matches_prometheus_client_without_snapshot() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: None, VERSION))
    assert render(None, VERSION) == generate_latest(registry)


def test_metric_types_follow_the_design_table() -> None:
    found = {name: kind for name, (kind, _) in families(s.realistic_snapshot()).items()}
    expected = {
        "blockpull_job_cursor_bytes": "gauge",
        "blockpull_job_end_bytes": "gauge",
        "blockpull_job_bandwidth_limit_bytes_per_second": "gauge",
        "blockpull_job_info": "gauge",
        "blockpull_jobs_started": "counter",
        "blockpull_jobs_completed": "counter",
        "blockpull_jobs_failed": "counter",
        "blockpull_jobs_aborted": "counter",
        "blockpull_copied_bytes": "counter",
        "blockpull_disks": "gauge",
        "blockpull_disk_backing_depth": "gauge",
        "blockpull_disk_consecutive_failures": "gauge",
        "blockpull_backing_image_dependents": "gauge",
        "blockpull_window_active": "gauge",
        "blockpull_budget_bandwidth_bytes_per_second": "gauge",
        "blockpull_budget_max_concurrent": "gauge",
        "blockpull_libvirt_up": "gauge",
        "blockpull_policy_last_reload_successful": "gauge",
        "blockpull_policy_last_reload_success_timestamp_seconds": "gauge",
        "blockpull_state_last_save_successful": "gauge",
        "blockpull_state_save_failures": "counter",
        "blockpull_reconcile_duration_seconds": "histogram",
        "blockpull_last_reconcile_success_timestamp_seconds": "gauge",
        "blockpull_build_info": "gauge",
        "blockpull_hold_expiry_timestamp_seconds": "gauge",
        "blockpull_filesystem_free_bytes": "gauge",
        "blockpull_filesystem_size_bytes": "gauge",
        "blockpull_filesystem_min_free_bytes": "gauge",
        "blockpull_filesystem_reserved_bytes": "gauge",
    }
    assert found == expected


def test_only_counters_end_in_total() -> None:
    text = render(s.realistic_snapshot(), VERSION).decode()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name.endswith("_total") == (kind == "counter"), line


def test_build_info_carries_the_version() -> None:
    assert values(s.realistic_snapshot(), "blockpull_build_info") == {(("version", VERSION),): 1}


def test_running_jobs_export_cursor_end_and_limit() -> None:
    snapshot = s.snapshot(s.plan(), jobs=[s.job("web-1", cur=10, end=30, bandwidth=5 * s.MiB)])
    assert values(snapshot, "blockpull_job_cursor_bytes") == {disk("web-1"): 10}
    assert values(snapshot, "blockpull_job_end_bytes") == {disk("web-1"): 30}
    assert values(snapshot, "blockpull_job_bandwidth_limit_bytes_per_second") == {
        disk("web-1"): 5 * s.MiB
    }


def test_unlimited_job_bandwidth_is_plus_inf() -> None:
    snapshot = s.snapshot(s.plan(), jobs=[s.job("web-1", bandwidth=None)])
    limits = values(snapshot, "blockpull_job_bandwidth_limit_bytes_per_second")
    assert limits == {disk("web-1"): math.inf}


def test_job_info_tells_managed_from_foreign_jobs() -> None:
    snapshot = s.snapshot(
        s.plan(),
        jobs=[s.job("web-1"), s.job("other", "vdc", managed=False, type=JobType.COPY)],
    )
    assert values(snapshot, "blockpull_job_info") == {
        (*disk("other", "vdc"), ("managed", "false"), ("type", "copy")): 1,
        (*disk("web-1"), ("managed", "true"), ("type", "pull")): 1,
    }


def test_finished_job_disappears_from_job_gauges() -> None:
    running = s.snapshot(s.plan(), jobs=[s.job("web-1")])
    finished = replace(running, jobs=())
    assert values(running, "blockpull_job_cursor_bytes")
    for name in ("cursor_bytes", "end_bytes", "bandwidth_limit_bytes_per_second", "info"):
        assert values(finished, f"blockpull_job_{name}") == {}


def test_outcome_counters_start_at_zero_for_every_pullable_disk() -> None:
    snapshot = s.snapshot(s.plan([s.decision("web-1", state=DiskState.PENDING)]))
    for name in ("started", "completed", "failed"):
        assert values(snapshot, f"blockpull_jobs_{name}_total") == {disk("web-1"): 0}


def test_outcome_counters_skip_independent_ignored_and_unselected_disks() -> None:
    snapshot = s.snapshot(
        s.plan(
            [
                s.decision("web-1", state=DiskState.INDEPENDENT),
                s.decision("db-1", rule="databases", state=DiskState.IGNORED),
                s.decision("misc-1", rule=None, state=DiskState.PENDING),
            ]
        )
    )
    assert values(snapshot, "blockpull_jobs_started_total") == {}
    assert values(snapshot, "blockpull_jobs_aborted_total") == {}


def test_outcome_counters_keep_disks_with_counts_after_they_become_independent() -> None:
    key = DiskKey("web-1", "vda")
    snapshot = s.snapshot(
        s.plan([s.decision("web-1", state=DiskState.INDEPENDENT)]),
        counters=Counters(started={key: 2}, completed={key: 1}),
    )
    assert values(snapshot, "blockpull_jobs_started_total") == {disk("web-1"): 2}
    assert values(snapshot, "blockpull_jobs_completed_total") == {disk("web-1"): 1}
    assert values(snapshot, "blockpull_jobs_failed_total") == {disk("web-1"): 0}


def test_outcome_counters_keep_disks_that_left_the_plan() -> None:
    key = DiskKey("gone-1", "vda")
    snapshot = s.snapshot(s.plan(), counters=Counters(failed={key: 3}))
    assert values(snapshot, "blockpull_jobs_failed_total") == {disk("gone-1"): 3}
    assert values(snapshot, "blockpull_jobs_started_total") == {disk("gone-1"): 0}


def test_aborted_counter_starts_window_closed_at_zero_and_adds_counted_reasons() -> None:
    key = DiskKey("web-1", "vda")
    snapshot = s.snapshot(
        s.plan([s.decision("web-1", state=DiskState.PULLING)]),
        counters=Counters(aborted={(key, AbortReason.DOMAIN_STOPPED): 2}),
    )
    assert values(snapshot, "blockpull_jobs_aborted_total") == {
        (*disk("web-1"), ("reason", "domain_stopped")): 2,
        (*disk("web-1"), ("reason", "window_closed")): 0,
    }


def test_disks_gauge_counts_every_state_of_every_rule() -> None:
    snapshot = s.snapshot(
        s.plan(
            [
                s.decision("web-1", state=DiskState.PULLING),
                s.decision("web-2", state=DiskState.PULLING),
                s.decision("db-1", rule="databases", state=DiskState.IGNORED),
                s.decision("misc-1", rule=None, state=DiskState.PENDING),
            ]
        ),
        rule_names=("web", "databases"),
    )
    counts = values(snapshot, "blockpull_disks")
    assert len(counts) == 2 * len(DiskState)
    assert counts[(("rule", "web"), ("state", "pulling"))] == 2
    assert counts[(("rule", "databases"), ("state", "ignored"))] == 1
    assert sum(counts.values()) == 3  # misc-1 is selected by no rule


def test_depth_and_failures_cover_selected_disks_only() -> None:
    snapshot = s.snapshot(
        s.plan(
            [
                s.decision("web-1", state=DiskState.BACKOFF, depth=3, failures=2),
                s.decision("web-2", state=DiskState.INDEPENDENT, depth=0),
                s.decision("db-1", rule="databases", state=DiskState.IGNORED),
                s.decision("misc-1", rule=None),
            ]
        )
    )
    assert values(snapshot, "blockpull_disk_backing_depth") == {disk("web-1"): 3, disk("web-2"): 0}
    assert values(snapshot, "blockpull_disk_consecutive_failures") == {
        disk("web-1"): 2,
        disk("web-2"): 0,
    }


def test_backing_image_dependents_survive_odd_paths() -> None:
    odd = '/images/a "quoted"\\path\nwith newline.qcow2'
    snapshot = s.snapshot(s.plan(), backing_dependents={odd: 3, "/images/base.qcow2": 7})
    assert values(snapshot, "blockpull_backing_image_dependents") == {
        (("image", odd),): 3,
        (("image", "/images/base.qcow2"),): 7,
    }


def test_window_active_reports_every_window() -> None:
    snapshot = s.snapshot(s.plan(open_windows={"nights"}), window_names=("nights", "weekend"))
    assert values(snapshot, "blockpull_window_active") == {
        (("window", "nights"),): 1,
        (("window", "weekend"),): 0,
    }


def test_budget_reports_limits_and_plus_inf_when_unlimited() -> None:
    limited = s.snapshot(s.plan(bandwidth=100 * s.MiB, max_concurrent=3))
    unlimited = s.snapshot(s.plan(bandwidth=None))
    assert values(limited, "blockpull_budget_bandwidth_bytes_per_second") == {(): 100 * s.MiB}
    assert values(limited, "blockpull_budget_max_concurrent") == {(): 3}
    assert values(unlimited, "blockpull_budget_bandwidth_bytes_per_second") == {(): math.inf}


def test_reconcile_histogram_has_cumulative_buckets_sum_and_count() -> None:
    snapshot = s.snapshot(s.plan(), reconcile_duration=s.histogram([0.004, 0.02, 0.3]))
    buckets = values(snapshot, "blockpull_reconcile_duration_seconds_bucket")
    assert buckets[(("le", "0.005"),)] == 1
    assert buckets[(("le", "0.025"),)] == 2
    assert buckets[(("le", "+Inf"),)] == 3
    assert values(snapshot, "blockpull_reconcile_duration_seconds_count") == {(): 3}
    assert values(snapshot, "blockpull_reconcile_duration_seconds_sum")[()] == pytest.approx(0.324)


def test_status_gauges_reflect_the_snapshot() -> None:
    snapshot = s.snapshot(
        s.plan(),
        libvirt_up=False,
        policy_reload_ok=False,
        policy_reload_success_at=1000.0,
        last_reconcile_success_at=2000.0,
    )
    assert values(snapshot, "blockpull_libvirt_up") == {(): 0}
    assert values(snapshot, "blockpull_policy_last_reload_successful") == {(): 0}
    assert values(snapshot, "blockpull_policy_last_reload_success_timestamp_seconds") == {(): 1000}
    assert values(snapshot, "blockpull_last_reconcile_success_timestamp_seconds") == {(): 2000}


def test_without_a_snapshot_only_build_info_and_libvirt_down_are_exported() -> None:
    assert set(families(None)) == {"blockpull_build_info", "blockpull_libvirt_up"}
    assert values(None, "blockpull_libvirt_up") == {(): 0}


def test_before_the_first_plan_status_is_exported_but_no_plan_metrics() -> None:
    snapshot = s.snapshot(None, last_reconcile_success_at=None)
    names = set(families(snapshot))
    assert {
        "blockpull_build_info",
        "blockpull_libvirt_up",
        "blockpull_policy_last_reload_successful",
        "blockpull_reconcile_duration_seconds",
    } <= names
    assert "blockpull_disks" not in names
    assert "blockpull_budget_max_concurrent" not in names
    assert "blockpull_last_reconcile_success_timestamp_seconds" not in names


def test_renderer_renders_each_snapshot_once() -> None:
    snapshot = s.realistic_snapshot()
    renderer = MetricsRenderer(VERSION, process_metrics=False)
    first = renderer.render(snapshot)
    assert renderer.render(snapshot) is first
    changed = renderer.render(replace(snapshot, libvirt_up=False))
    assert changed is not first
    assert b"blockpull_libvirt_up 0.0" in changed


def test_renderer_appends_process_metrics() -> None:
    renderer = MetricsRenderer(VERSION)
    text = renderer.render(s.realistic_snapshot()).decode()
    assert "\nprocess_resident_memory_bytes " in text
    assert text.startswith(render(s.realistic_snapshot(), VERSION).decode())


def promtool() -> str:
    path = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI (Debian package `prometheus`)")
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    return path


@pytest.mark.parametrize(
    "snapshot",
    [s.realistic_snapshot(), s.snapshot(None), None],
    ids=["realistic", "before-first-plan", "no-snapshot"],
)
def test_promtool_check_metrics_finds_nothing_to_complain_about(snapshot: Snapshot | None) -> None:
    body = MetricsRenderer(VERSION).render(snapshot)
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_outcome_counters_keep_ignored_disks_with_counts() -> None:
    key = DiskKey("db-1", "vda")
    snapshot = s.snapshot(
        s.plan([s.decision("db-1", rule="databases", state=DiskState.IGNORED)]),
        counters=Counters(started={key: 1}, aborted={(key, AbortReason.EXTERNAL): 1}),
    )
    assert values(snapshot, "blockpull_jobs_started_total") == {disk("db-1"): 1}
    assert values(snapshot, "blockpull_jobs_aborted_total") == {
        (*disk("db-1"), ("reason", "external")): 1,
        (*disk("db-1"), ("reason", "window_closed")): 0,
    }
