"""The /metrics body for the latest published `Snapshot`; a scrape never calls libvirt.

`render()` writes the catalogue's families with the direct text writer; `SnapshotCollector`
offers the same families to prometheus_client, for anyone who wants them in a
`CollectorRegistry` (and as the reference the direct writer is tested against).
`MetricsRenderer` is what the HTTP endpoint calls: it renders each snapshot once, however often
it is scraped, and appends the process_* metrics, which change between scrapes. Render times at
scale are measured by bench/scale.py and recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric

from exporter.daemon.snapshot import Snapshot
from exporter.metrics.catalogue import families
from exporter.metrics.exposition import client_metrics, write_text


def render(snapshot: Snapshot | None, version: str) -> bytes:
    """The snapshot's metrics in the Prometheus text format 0.0.4 (no process_* metrics)."""
    return write_text(families(snapshot, version))


class SnapshotCollector:
    """A prometheus_client collector over whatever snapshot is current when it is collected."""

    def __init__(self, get_snapshot: Callable[[], Snapshot | None], version: str) -> None:
        self._get_snapshot = get_snapshot
        self._version = version

    def collect(self) -> Iterator[Metric]:
        return client_metrics(families(self._get_snapshot(), self._version))


class MetricsRenderer:
    """What the HTTP endpoint serves for the current snapshot.

    `render(snapshot)`: the /metrics body; each snapshot object is rendered once however often
    it is scraped (the cache lives here, not in the module), and the process_* metrics, which
    change between scrapes, are appended fresh.
    Thread-safe: concurrent scrapes of a new snapshot render it once; the others wait.
    """

    def __init__(self, version: str, *, process_metrics: bool = True) -> None:
        self._version = version
        self._lock = threading.Lock()
        self._cached: tuple[Snapshot | None, bytes] | None = None
        self._process_registry: CollectorRegistry | None = None
        if process_metrics:
            self._process_registry = CollectorRegistry(auto_describe=False)
            ProcessCollector(registry=self._process_registry)

    def snapshot_metrics(self, snapshot: Snapshot | None) -> bytes:
        """The snapshot's part of the body, cached by snapshot identity."""
        with self._lock:
            cached = self._cached
            if cached is not None and cached[0] is snapshot:
                return cached[1]
            body = render(snapshot, self._version)
            self._cached = (snapshot, body)
            return body

    def render(self, snapshot: Snapshot | None) -> bytes:
        body = self.snapshot_metrics(snapshot)
        if self._process_registry is None:
            return body
        return body + generate_latest(self._process_registry)
