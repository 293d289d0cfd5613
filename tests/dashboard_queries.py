"""The PromQL queries of a Grafana dashboard, and the same queries with Grafana's variables filled.

Used by tests/unit/test_dashboard.py (static checks, promtool parse) and by integration tests
that run every query against a real Prometheus:

    for title, expr in dashboard_queries(DASHBOARD):
        result = prometheus_query(concrete_expr(expr))  # expect data

Plain functions of their arguments; importable as `tests.dashboard_queries` or, with tests/ on
sys.path, as `dashboard_queries`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "grafana" / "blockpull-exporter.json"

# What Grafana would substitute on a default view: every host and domain, short intervals.
DEFAULT_VARIABLES: Mapping[str, str] = {
    "__rate_interval": "5m",
    "__interval": "5m",  # the panels' minimum interval; 1m would be empty at a 1m scrape
    "__range": "1d",
    "instance": ".*",
    "domain": ".*",
}

# Panels whose queries legitimately return nothing in some states of a host, and the state that
# makes them return data. An integration test should arrange that state, not skip the panel.
NEEDS_STATE: Mapping[str, str] = {
    "Throughput": "a job running",
    "Running pulls": "a job running (for ETA: running long enough to have a rate)",
    "Throughput against budget": "a job running and a finite bandwidth budget",
    "Throughput per disk": "a job running",
    "Disks with failures": "a disk whose last pull failed",
    "Last reconcile age": "one successful reconcile",
    "Free space per file system": "a disk on a local overlay that may pull",
    "Holds in force": "a hold placed with `blockpull-exporter hold`",
}

# $name, ${name} and ${name:format}; [[name]] is deprecated and not used here.
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel, including those nested in collapsed rows, rows themselves excluded."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, expr) for every query target of every panel, in dashboard order."""
    dashboard = json.loads(Path(path).read_text())
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def concrete_expr(expr: str, variables: Mapping[str, str] | None = None) -> str:
    """The expr with Grafana variables replaced; a variable without a value raises KeyError."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}

    def substitute(match: re.Match[str]) -> str:
        return values[match.group(1) or match.group(2)]

    return _VARIABLE.sub(substitute, expr)
