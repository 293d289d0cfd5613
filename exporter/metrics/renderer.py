"""Prometheus metrics from the latest published `Snapshot`; a scrape never calls libvirt.

One function, `_families()`, turns a snapshot into metric families. Two writers read them:

- `SnapshotCollector.collect()` yields prometheus_client families, for anyone who wants to
  register the collector in a `CollectorRegistry`;
- `render()` writes the text exposition format directly. prometheus_client needs about 95 ms
  of CPU for the ~20,000 samples of a 4,000-disk host, over the 50 ms a scrape may take; the
  direct writer produces byte-identical output (a unit test compares them) in about 11 ms.

`MetricsRenderer` is what the HTTP endpoint calls: it renders each snapshot once, however often
it is scraped, and appends the process_* metrics, which change between scrapes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from exporter.core.decisions import AbortReason, DiskState
from exporter.core.model import DiskKey
from exporter.daemon.snapshot import Counters, Histogram, Snapshot
from exporter.web.server import render_landing_page

INF = float("inf")

# Module constants, not `DiskState.X` in loops: enum attribute access is slow at 4,000 disks.
_IGNORED = DiskState.IGNORED
_INDEPENDENT = DiskState.INDEPENDENT


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


_DISK = ("disk", "domain")
_DISK_REASON = ("disk", "domain", "reason")


class Labels:
    """Label names (sorted) and values, with their exposition text rendered once and shared.

    Two objects per label set (this and its values tuple): at 4,000 disks every allocation
    shows up in render time, mostly as garbage-collector passes.
    """

    __slots__ = ("names", "text", "values")

    def __init__(self, names: tuple[str, ...], values: tuple[str, ...], text: str) -> None:
        self.names = names
        self.values = values
        self.text = text

    @classmethod
    def of(cls, **labels: str) -> Labels:
        names = tuple(sorted(labels))
        values = tuple(labels[n] for n in names)
        inner = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
        return cls(names, values, f"{{{inner}}}" if inner else "")

    @classmethod
    def disk(cls, key: DiskKey) -> Labels:
        disk, domain = key.disk, key.domain
        return cls(_DISK, (disk, domain), f'{{disk="{_escape(disk)}",domain="{_escape(domain)}"}}')

    def with_reason(self, reason: str) -> Labels:
        """Disk labels plus `reason`, which sorts after `disk` and `domain`."""
        return Labels(
            _DISK_REASON, (*self.values, reason), f'{self.text[:-1]},reason="{_escape(reason)}"}}'
        )

    @property
    def pairs(self) -> dict[str, str]:
        return dict(zip(self.names, self.values, strict=True))

    def __repr__(self) -> str:
        return f"Labels({self.text})"


NO_LABELS = Labels((), (), "")


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: parallel lists of labels and values (no per-sample tuples).

    A counter's `name` excludes `_total`; its samples add it. Only histograms need a suffix
    per sample (`_bucket`, `_count`, `_sum`).
    """

    name: str
    type: str  # gauge | counter | histogram
    help: str
    labels: list[Labels]
    values: list[float]
    suffixes: list[str] | None = None

    @property
    def exposed_name(self) -> str:
        return f"{self.name}_total" if self.type == "counter" else self.name

    def samples(self) -> Iterator[tuple[str, Labels, float]]:
        """(sample name, labels, value) in exposition order."""
        if self.suffixes is None:
            name = self.exposed_name
            for labels, value in zip(self.labels, self.values, strict=True):
                yield name, labels, value
        else:
            for suffix, labels, value in zip(self.suffixes, self.labels, self.values, strict=True):
                yield self.name + suffix, labels, value


def _gauge(name: str, help_text: str, labels: list[Labels], values: list[float]) -> Family:
    return Family(name, "gauge", help_text, labels, values)


def _single(name: str, help_text: str, value: float) -> Family:
    return Family(name, "gauge", help_text, [NO_LABELS], [value])


def _histogram(name: str, help_text: str, hist: Histogram) -> Family:
    labels = [Labels.of(le=floatToGoString(bound)) for bound in hist.bounds]
    values = [float(count) for count in hist.counts]
    if not hist.bounds or hist.bounds[-1] != INF:
        labels.append(Labels.of(le="+Inf"))
        values.append(float(hist.count))
    # Same order as prometheus_client's HistogramMetricFamily: buckets, count, sum.
    suffixes = ["_bucket"] * len(labels) + ["_count", "_sum"]
    labels += [NO_LABELS, NO_LABELS]
    values += [float(hist.count), float(hist.total)]
    return Family(name, "histogram", help_text, labels, values, suffixes)


def _bandwidth(value: int | None) -> float:
    """libvirt's 0 and the policy's None both mean unlimited: +Inf, so `>` comparisons hold."""
    return INF if not value else float(value)


def _families(snapshot: Snapshot | None, version: str) -> list[Family]:
    families = [
        _gauge(
            "blockpull_build_info",
            "Version of blockpull-exporter; the value is always 1.",
            [Labels.of(version=version)],
            [1.0],
        ),
        _single(
            "blockpull_libvirt_up",
            "1 if the last reconcile reached libvirtd, 0 if not (also 0 before the first).",
            1.0 if snapshot is not None and snapshot.libvirt_up else 0.0,
        ),
    ]
    if snapshot is None:
        return families
    disks = _Disks(snapshot)
    families += _status_families(snapshot)
    families += _job_families(snapshot, disks)
    families += _counter_families(snapshot, disks)
    if snapshot.plan is not None:
        families += _plan_families(snapshot, disks)
    if snapshot.coordination is not None:
        from exporter.metrics.coordination import coordination_families  # it imports this one

        families += coordination_families(snapshot)
    images = sorted(snapshot.backing_dependents.items())
    families.append(
        _gauge(
            "blockpull_backing_image_dependents",
            "Disks on this host whose backing chain includes the image.",
            [Labels.of(image=image) for image, _ in images],
            [float(count) for _, count in images],
        )
    )
    return families


class _Disks:
    """Per render: the disks a rule selects (plan order, sorted by key), labels built once."""

    def __init__(self, snapshot: Snapshot) -> None:
        decisions = snapshot.plan.decisions if snapshot.plan is not None else ()
        # Ignored disks have a rule but are never touched: no per-disk series for them.
        self.decisions = [d for d in decisions if d.rule is not None and d.state is not _IGNORED]
        self.labels = [Labels.disk(d.key) for d in self.decisions]
        self._by_key: dict[DiskKey, Labels] | None = None

    def labels_of(self, key: DiskKey) -> Labels:
        if self._by_key is None:
            self._by_key = {d.key: lab for d, lab in zip(self.decisions, self.labels, strict=True)}
        labels = self._by_key.get(key)
        if labels is None:
            labels = self._by_key[key] = Labels.disk(key)
        return labels

    def counted(self, counters: Counters) -> tuple[list[DiskKey], list[Labels]]:
        """Disks with outcome counters: every pullable one, then any other with a count."""
        nonzero = set(counters.started).union(
            counters.completed, counters.failed, (k for k, _ in counters.aborted)
        )
        keys: list[DiskKey] = []
        labels: list[Labels] = []
        for d, lab in zip(self.decisions, self.labels, strict=True):
            if d.state is not _INDEPENDENT or d.key in nonzero:
                keys.append(d.key)
                labels.append(lab)
        # Disks now ignored, unselected or gone keep their counts visible, after the rest.
        if nonzero:
            nonzero.difference_update(keys)
            for key in sorted(nonzero, key=_sort_key):
                keys.append(key)
                labels.append(self.labels_of(key))
        return keys, labels


def _sort_key(key: DiskKey) -> tuple[str, str]:
    return (key.domain, key.disk)


def _status_families(snapshot: Snapshot) -> list[Family]:
    families = [
        _single(
            "blockpull_policy_last_reload_successful",
            "1 if the last load of the policy file succeeded; a failed reload keeps the "
            "previous policy in force.",
            1.0 if snapshot.policy_reload_ok else 0.0,
        )
    ]
    if snapshot.policy_reload_success_at is not None:
        families.append(
            _single(
                "blockpull_policy_last_reload_success_timestamp_seconds",
                "When the policy in force was loaded, in seconds since the epoch.",
                snapshot.policy_reload_success_at,
            )
        )
    families.append(
        _histogram(
            "blockpull_reconcile_duration_seconds",
            "Time taken by reconciles (observe, plan, act), successful or not.",
            snapshot.reconcile_duration,
        )
    )
    if snapshot.last_reconcile_success_at is not None:
        families.append(
            _single(
                "blockpull_last_reconcile_success_timestamp_seconds",
                "When the last successful reconcile finished, in seconds since the epoch.",
                snapshot.last_reconcile_success_at,
            )
        )
    return families


def _job_families(snapshot: Snapshot, disks: _Disks) -> list[Family]:
    jobs = sorted(snapshot.jobs, key=lambda j: _sort_key(j.key))
    labels = [disks.labels_of(j.key) for j in jobs]
    info = [
        Labels.of(
            disk=j.key.disk,
            domain=j.key.domain,
            managed="true" if j.managed else "false",
            type=str(j.job.type),
        )
        for j in jobs
    ]
    return [
        _gauge(
            "blockpull_job_cursor_bytes",
            "Bytes a running block job has processed (libvirt's cur); present while it runs.",
            labels,
            [float(j.job.cur) for j in jobs],
        ),
        _gauge(
            "blockpull_job_end_bytes",
            "Bytes a running block job has to process in all (libvirt's end); it may grow "
            "while the job runs, and is 0 right after a start.",
            labels,
            [float(j.job.end) for j in jobs],
        ),
        _gauge(
            "blockpull_job_bandwidth_limit_bytes_per_second",
            "Speed limit of a running block job; +Inf when unlimited.",
            labels,
            [_bandwidth(j.job.bandwidth) for j in jobs],
        ),
        _gauge(
            "blockpull_job_info",
            "A running block job's type (pull, copy, commit, ...) and whether the exporter "
            'started or adopted it (managed="true") or leaves it alone; the value is always 1.',
            info,
            [1.0] * len(info),
        ),
    ]


def _counter_families(snapshot: Snapshot, disks: _Disks) -> list[Family]:
    counters = snapshot.counters
    keys, labels = disks.counted(counters)
    position = {key: i for i, key in enumerate(keys)} if counters != Counters() else {}

    def per_disk(counts: dict[DiskKey, int]) -> list[float]:
        # Mostly zeros: fill them, then patch the few non-zero counts in.
        values = [0.0] * len(keys)
        for key, count in counts.items():
            values[position[key]] = float(count)
        return values

    # window_closed is the reason every windowed pull meets; others appear once counted.
    other_reasons: dict[int, dict[str, int]] = {}
    for (key, reason), count in counters.aborted.items():
        other_reasons.setdefault(position[key], {})[str(reason)] = count
    aborted_labels: list[Labels] = []
    aborted_values: list[float] = []
    window_closed = AbortReason.WINDOW_CLOSED.value
    for i, lab in enumerate(labels):
        reasons = other_reasons.get(i)
        if reasons is None:
            aborted_labels.append(lab.with_reason(window_closed))
            aborted_values.append(0.0)
            continue
        reasons = {window_closed: 0, **reasons}
        for reason in sorted(reasons):
            aborted_labels.append(lab.with_reason(reason))
            aborted_values.append(float(reasons[reason]))

    def counter(name: str, help_text: str, lab: list[Labels], values: list[float]) -> Family:
        return Family(name, "counter", help_text, lab, values)

    return [
        counter(
            "blockpull_jobs_started",
            "Block pulls the exporter started on the disk.",
            labels,
            per_disk(counters.started),
        ),
        counter(
            "blockpull_jobs_completed",
            "Block pulls on the disk proven complete by a re-read of its backing chain.",
            labels,
            per_disk(counters.completed),
        ),
        counter(
            "blockpull_jobs_failed",
            "Block pulls on the disk that failed (libvirt reported a failure or the chain "
            "did not change).",
            labels,
            per_disk(counters.failed),
        ),
        counter(
            "blockpull_jobs_aborted",
            "Block pulls on the disk stopped before the end, by reason; a pull aborted "
            "because its window closed resumes without losing copied data.",
            aborted_labels,
            aborted_values,
        ),
    ]


def _plan_families(snapshot: Snapshot, disks: _Disks) -> list[Family]:
    plan = snapshot.plan
    assert plan is not None
    counts: dict[tuple[str, str], int] = {
        (rule, state.value): 0 for rule in snapshot.rule_names for state in DiskState
    }
    for d in plan.decisions:
        if d.rule is not None:
            key = (d.rule, d.state.value)
            counts[key] = counts.get(key, 0) + 1
    by_rule_state = sorted(counts.items())
    windows = snapshot.window_names
    return [
        _single(
            "blockpull_budget_bandwidth_bytes_per_second",
            "Host-wide bandwidth budget shared by running pulls now; +Inf when unlimited.",
            _bandwidth(plan.budget.bandwidth),
        ),
        _single(
            "blockpull_budget_max_concurrent",
            "Pulls allowed to run at once on this host now.",
            float(plan.budget.max_concurrent),
        ),
        _gauge(
            "blockpull_window_active",
            "1 while the policy window is open, else 0.",
            [Labels.of(window=name) for name in windows],
            [1.0 if name in plan.open_windows else 0.0 for name in windows],
        ),
        _gauge(
            "blockpull_disks",
            "Disks selected by each policy rule, by state; disks no rule selects are not counted.",
            [Labels.of(rule=rule, state=state) for (rule, state), _ in by_rule_state],
            [float(count) for _, count in by_rule_state],
        ),
        _gauge(
            "blockpull_disk_backing_depth",
            "Images in the disk's backing chain below its top image; 0 when independent.",
            disks.labels,
            [float(d.depth) for d in disks.decisions],
        ),
        _gauge(
            "blockpull_disk_consecutive_failures",
            "Failed pulls of the disk since its last success; reset when the disk or the "
            "policy changes.",
            disks.labels,
            [float(d.consecutive_failures) for d in disks.decisions],
        ),
    ]


def render(snapshot: Snapshot | None, version: str) -> bytes:
    """The snapshot's metrics in the Prometheus text format 0.0.4 (no process_* metrics)."""
    out: list[str] = []
    append = out.append
    # Few distinct values (0, 1, small counts): format each once, Go style like prometheus_client.
    formatted: dict[float, str] = {}
    for family in _families(snapshot, version):
        name = family.exposed_name
        help_text = family.help.replace("\\", r"\\").replace("\n", r"\n")
        append(f"# HELP {name} {help_text}\n# TYPE {name} {family.type}\n")
        for sample, labels, value in family.samples():
            text = formatted.get(value)
            if text is None:
                text = formatted[value] = floatToGoString(value)
            append(f"{sample}{labels.text} {text}\n")
    # A domain name is not guaranteed to be valid UTF-8; a scrape must not fail on it.
    return "".join(out).encode("utf-8", errors="replace")


class SnapshotCollector:
    """A prometheus_client collector over whatever snapshot is current when it is collected."""

    def __init__(self, get_snapshot: Callable[[], Snapshot | None], version: str) -> None:
        self._get_snapshot = get_snapshot
        self._version = version

    def collect(self) -> Iterator[Metric]:
        for family in _families(self._get_snapshot(), self._version):
            metric = Metric(family.name, family.help, family.type)
            for sample, labels, value in family.samples():
                metric.add_sample(sample, labels.pairs, value)
            yield metric


class MetricsRenderer:
    """What the HTTP endpoint serves for the current snapshot.

    `render(snapshot)`: the /metrics body; each snapshot object is rendered once however often
    it is scraped (the cache lives here, not in the module), and the process_* metrics, which
    change between scrapes, are appended fresh. `landing_page(snapshot)`: the HTML at `/`.
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

    def landing_page(self, snapshot: Snapshot | None) -> str:
        return render_landing_page(self._version, snapshot)
