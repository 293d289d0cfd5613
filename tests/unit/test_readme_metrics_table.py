"""The metrics table in the "## Metrics" section of README.md matches what the daemon exposes.

A live scrape of the real daemon (`blockpull-exporter run` as a subprocess) on the simulated
host (`sim:///...json`, the demo scenario: pulls start at once), so no libvirt is needed. The
policy has a window, a pull rule and an ignore rule, so that every family has samples and its
label names can be read. Standard `process_*` metrics are left out on purpose: they come from
the Python client, not from this table.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.daemon_process import DaemonProcess, running_daemon_process
from prometheus_client.parser import text_string_to_metric_families

from exporter.core.holds import Hold
from exporter.daemon.hold_store import HoldStore

REPO = Path(__file__).resolve().parents[2]

EXCLUDED_PREFIXES = ("process_",)  # the Python client's standard process metrics
SECTION = "## Metrics"

POLICY = """\
version: 1
defaults:
  bandwidth: 100MiB/s
  max_concurrent: 2
windows:
  always: {days: daily}
rules:
  - name: web
    domains: ["web-*"]
    windows: [always]
  - name: db
    domains: ["db-*"]
    action: ignore
"""


@dataclass(frozen=True)
class Row:
    type: str
    labels: frozenset[str]


def table_source() -> Path:
    return REPO / "README.md"


def table_rows(text: str) -> list[tuple[str, Row]]:
    """(metric, Row) per line of the first table in the "## Metrics" section.

    Columns: metric | type | labels | meaning; label names are the backticked words of the
    labels cell ("—" when there are none).
    """
    lines = text.splitlines()
    if SECTION not in lines:
        return []
    start = lines.index(SECTION) + 1
    rows: list[tuple[str, Row]] = []
    for line in lines[start:]:
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`"):
            if rows and not line.startswith("|"):
                break  # the table ended
            continue
        name = cells[0].strip("`")
        rows.append((name, Row(cells[1], frozenset(re.findall(r"`(\w+)`", cells[2])))))
    return rows


def scraped_families(body: str) -> dict[str, Row]:
    """Exposed family name (counters with `_total`) -> type and label names of its samples."""
    families: dict[str, Row] = {}
    for family in text_string_to_metric_families(body):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels}
        if family.type == "histogram":
            labels.discard("le")
        families[name] = Row(family.type, frozenset(labels))
    return families


def _complete(daemon: DaemonProcess) -> str | None:
    """A scrape once a pull runs (the job families have samples), else None."""
    body = daemon.try_scrape()
    if body is None or "\nblockpull_job_cursor_bytes{" not in body:
        return None
    return body


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("metrics-table")
    uri = f"sim://{workdir / 'host.json'}"
    # A hold on a domain the policy ignores: its series exist, the pulls go on.
    now = time.time()
    hold = Hold("db-1", now, now + 3600, "metrics table", "test")
    HoldStore(workdir / "state").update(lambda kept: (*kept, hold), now)
    # The simulated host is this test's own: its policy may select any domain.
    with running_daemon_process(POLICY, uri, workdir, own_domains_only=False) as daemon:
        deadline = time.monotonic() + 30
        body = _complete(daemon)
        while body is None and time.monotonic() < deadline:
            time.sleep(0.1)
            body = _complete(daemon)
        assert body is not None, f"no pull running in the scrape\n{daemon.describe()}"
        yield body


@pytest.fixture(scope="module")
def table() -> dict[str, Row]:
    rows = table_rows(table_source().read_text())
    assert rows, f"no metrics table in the {SECTION} section of {table_source()}"
    return dict(rows)


def _ours(families: dict[str, Row]) -> dict[str, Row]:
    return {n: r for n, r in families.items() if not n.startswith(EXCLUDED_PREFIXES)}


def test_table_names_each_metric_once() -> None:
    names = [name for name, _ in table_rows(table_source().read_text())]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_scrape_exposes_only_blockpull_and_process_families(scrape: str) -> None:
    others = [n for n in _ours(scraped_families(scrape)) if not n.startswith("blockpull_")]
    assert others == []


def test_every_exposed_family_is_in_the_table(scrape: str, table: dict[str, Row]) -> None:
    missing = sorted(set(_ours(scraped_families(scrape))) - set(table))
    assert missing == [], f"exposed but not in {table_source().name}'s table"


def test_every_table_row_is_exposed(scrape: str, table: dict[str, Row]) -> None:
    absent = sorted(set(table) - set(scraped_families(scrape)))
    assert absent == [], "in the table but not in a live scrape"


def test_table_types_and_labels_match_the_scrape(scrape: str, table: dict[str, Row]) -> None:
    exposed = _ours(scraped_families(scrape))
    differ = {
        name: {"table": table[name], "scrape": row}
        for name, row in exposed.items()
        if name in table and table[name] != row
    }
    assert differ == {}
