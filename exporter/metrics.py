"""Prometheus metrics from the latest published `Snapshot`; a scrape never calls libvirt.

One function, `_families()`, turns a snapshot into metric families. Two writers read them:

- `SnapshotCollector.collect()` yields prometheus_client families, for anyone who wants to
  register the collector in a `CollectorRegistry`;
- `render()` writes the text exposition format directly. prometheus_client needs about 100 ms
  for the ~20,000 samples of a 4,000-disk host, over the 50 ms a scrape may take; the direct
  writer produces byte-identical output (a unit test compares them) several times faster.

`MetricsRenderer` is what the HTTP endpoint calls: it renders each snapshot once, however often
it is scraped, and appends the process_* metrics, which change between scrapes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from exporter.decisions import AbortReason, DiskDecision, DiskState
from exporter.model import DiskKey
from exporter.snapshot import Counters, Histogram, Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

INF = float("inf")

# Module constants, not `DiskState.X` in loops: enum attribute access is slow at 4,000 disks.
_IGNORED = DiskState.IGNORED
_INDEPENDENT = DiskState.INDEPENDENT


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Labels:
    """Label pairs sorted by name, with their exposition text rendered once and shared."""

    __slots__ = ("pairs", "text")

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self.pairs = pairs
        inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
        self.text = f"{{{inner}}}" if inner else ""

    @classmethod
    def of(cls, **labels: str) -> Labels:
        return cls(tuple(sorted(labels.items())))

    @classmethod
    def disk(cls, key: DiskKey) -> Labels:
        # The hot path (thousands per render): skip the generic join.
        labels = cls.__new__(cls)
        labels.pairs = (("disk", key.disk), ("domain", key.domain))
        labels.text = f'{{disk="{_escape(key.disk)}",domain="{_escape(key.domain)}"}}'
        return labels

    def with_reason(self, reason: str) -> Labels:
        """These disk labels plus `reason`, which sorts after `disk` and `domain`."""
        labels = Labels.__new__(Labels)
        labels.pairs = (*self.pairs, ("reason", reason))
        labels.text = f'{self.text[:-1]},reason="{_escape(reason)}"}}'
        return labels

    def __repr__(self) -> str:
        return f"Labels({self.text})"


NO_LABELS = Labels(())


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family; a counter's `name` excludes `_total`, its samples' suffix adds it."""

    name: str
    type: str  # gauge | counter | histogram
    help: str
    samples: list[tuple[str, Labels, float]]  # (suffix, labels, value)

    @property
    def exposed_name(self) -> str:
        return f"{self.name}_total" if self.type == "counter" else self.name


def _gauge(name: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> Family:
    return Family(name, "gauge", help_text, [("", labels, value) for labels, value in samples])


def _counter(name: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> Family:
    return Family(
        name, "counter", help_text, [("_total", labels, value) for labels, value in samples]
    )


def _histogram(name: str, help_text: str, hist: Histogram) -> Family:
    samples: list[tuple[str, Labels, float]] = [
        ("_bucket", Labels.of(le=floatToGoString(bound)), float(count))
        for bound, count in zip(hist.bounds, hist.counts, strict=True)
    ]
    if not hist.bounds or hist.bounds[-1] != INF:
        samples.append(("_bucket", Labels.of(le="+Inf"), float(hist.count)))
    # Same order as prometheus_client's HistogramMetricFamily: buckets, count, sum.
    samples.append(("_count", NO_LABELS, float(hist.count)))
    samples.append(("_sum", NO_LABELS, float(hist.total)))
    return Family(name, "histogram", help_text, samples)


def _bandwidth(value: int | None) -> float:
    """libvirt's 0 and the policy's None both mean unlimited: +Inf, so `>` comparisons hold."""
    return INF if not value else float(value)


def _families(snapshot: Snapshot | None, version: str) -> list[Family]:
    families = [
        _gauge(
            "blockpull_build_info",
            "Version of blockpull-exporter; the value is always 1.",
            [(Labels.of(version=version), 1.0)],
        ),
        _gauge(
            "blockpull_libvirt_up",
            "1 if the last reconcile reached libvirtd, 0 if not (also 0 before the first).",
            [(NO_LABELS, 1.0 if snapshot is not None and snapshot.libvirt_up else 0.0)],
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
    families.append(
        _gauge(
            "blockpull_backing_image_dependents",
            "Disks on this host whose backing chain includes the image.",
            [
                (Labels.of(image=image), float(count))
                for image, count in sorted(snapshot.backing_dependents.items())
            ],
        )
    )
    return families


class _Disks:
    """Per render: the disks a rule selects, each with its labels built once.

    A 4,000-disk host makes every per-disk hash and allocation count, hence the care.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        decisions = snapshot.plan.decisions if snapshot.plan is not None else ()
        # In the plan's order (sorted by key); ignored disks have a rule but are never touched.
        self.selected: list[tuple[DiskDecision, Labels]] = [
            (d, Labels.disk(d.key))
            for d in decisions
            if d.rule is not None and d.state is not _IGNORED
        ]
        self._labels: dict[DiskKey, Labels] = {d.key: labels for d, labels in self.selected}

    def labels(self, key: DiskKey) -> Labels:
        labels = self._labels.get(key)
        if labels is None:
            labels = self._labels[key] = Labels.disk(key)
        return labels

    def counted(self, counters: Counters) -> list[tuple[DiskKey, Labels]]:
        """Disks with outcome counters: every pullable one, then any with a non-zero count."""
        nonzero = set(counters.started).union(
            counters.completed, counters.failed, (k for k, _ in counters.aborted)
        )
        counted = [
            (d.key, labels)
            for d, labels in self.selected
            if d.state is not _INDEPENDENT or d.key in nonzero
        ]
        # Disks no longer selected (or gone) keep their counts visible, sorted after the rest.
        nonzero.difference_update(d.key for d, _ in self.selected)
        counted += [(k, self.labels(k)) for k in sorted(nonzero, key=_sort_key)]
        return counted


def _sort_key(key: DiskKey) -> tuple[str, str]:
    return (key.domain, key.disk)


def _status_families(snapshot: Snapshot) -> list[Family]:
    families = [
        _gauge(
            "blockpull_policy_last_reload_successful",
            "1 if the last load of the policy file succeeded; a failed reload keeps the "
            "previous policy in force.",
            [(NO_LABELS, 1.0 if snapshot.policy_reload_ok else 0.0)],
        )
    ]
    if snapshot.policy_reload_success_at is not None:
        families.append(
            _gauge(
                "blockpull_policy_last_reload_success_timestamp_seconds",
                "When the policy in force was loaded, in seconds since the epoch.",
                [(NO_LABELS, snapshot.policy_reload_success_at)],
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
            _gauge(
                "blockpull_last_reconcile_success_timestamp_seconds",
                "When the last successful reconcile finished, in seconds since the epoch.",
                [(NO_LABELS, snapshot.last_reconcile_success_at)],
            )
        )
    return families


def _job_families(snapshot: Snapshot, disks: _Disks) -> list[Family]:
    jobs = sorted(snapshot.jobs, key=lambda j: _sort_key(j.key))
    labels = [disks.labels(j.key) for j in jobs]
    return [
        _gauge(
            "blockpull_job_cursor_bytes",
            "Bytes a running block job has processed (libvirt's cur); present while it runs.",
            [(lab, float(j.job.cur)) for j, lab in zip(jobs, labels, strict=True)],
        ),
        _gauge(
            "blockpull_job_end_bytes",
            "Bytes a running block job has to process in all (libvirt's end); it may grow "
            "while the job runs, and is 0 right after a start.",
            [(lab, float(j.job.end)) for j, lab in zip(jobs, labels, strict=True)],
        ),
        _gauge(
            "blockpull_job_bandwidth_limit_bytes_per_second",
            "Speed limit of a running block job; +Inf when unlimited.",
            [(lab, _bandwidth(j.job.bandwidth)) for j, lab in zip(jobs, labels, strict=True)],
        ),
        _gauge(
            "blockpull_job_info",
            "A running block job's type (pull, copy, commit, ...) and whether the exporter "
            'started or adopted it (managed="true") or leaves it alone; the value is always 1.',
            [
                (
                    Labels(
                        (
                            ("disk", j.key.disk),
                            ("domain", j.key.domain),
                            ("managed", "true" if j.managed else "false"),
                            ("type", str(j.job.type)),
                        )
                    ),
                    1.0,
                )
                for j in jobs
            ],
        ),
    ]


def _counter_families(snapshot: Snapshot, disks: _Disks) -> list[Family]:
    counters = snapshot.counters
    counted = disks.counted(counters)
    position = {key: i for i, (key, _) in enumerate(counted)}

    def per_disk(counts: dict[DiskKey, int]) -> list[tuple[Labels, float]]:
        # Mostly zeros: fill them, then patch the few non-zero counts in.
        values = [0.0] * len(counted)
        for key, count in counts.items():
            values[position[key]] = float(count)
        return [(labels, value) for (_, labels), value in zip(counted, values, strict=True)]

    # window_closed is the reason every windowed pull meets; the others appear when counted.
    aborted: dict[tuple[int, str], int] = {
        (i, AbortReason.WINDOW_CLOSED.value): 0 for i in range(len(counted))
    }
    for (key, reason), count in counters.aborted.items():
        aborted[(position[key], str(reason))] = count
    return [
        _counter(
            "blockpull_jobs_started",
            "Block pulls the exporter started on the disk.",
            per_disk(counters.started),
        ),
        _counter(
            "blockpull_jobs_completed",
            "Block pulls on the disk proven complete by a re-read of its backing chain.",
            per_disk(counters.completed),
        ),
        _counter(
            "blockpull_jobs_failed",
            "Block pulls on the disk that failed (libvirt reported a failure or the chain "
            "did not change).",
            per_disk(counters.failed),
        ),
        _counter(
            "blockpull_jobs_aborted",
            "Block pulls on the disk stopped before the end, by reason; a pull aborted "
            "because its window closed resumes without losing copied data.",
            [
                (counted[i][1].with_reason(reason), float(count))
                for (i, reason), count in sorted(aborted.items())
            ],
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
    return [
        _gauge(
            "blockpull_budget_bandwidth_bytes_per_second",
            "Host-wide bandwidth budget shared by running pulls now; +Inf when unlimited.",
            [(NO_LABELS, _bandwidth(plan.budget.bandwidth))],
        ),
        _gauge(
            "blockpull_budget_max_concurrent",
            "Pulls allowed to run at once on this host now.",
            [(NO_LABELS, float(plan.budget.max_concurrent))],
        ),
        _gauge(
            "blockpull_window_active",
            "1 while the policy window is open, else 0.",
            [
                (Labels.of(window=name), 1.0 if name in plan.open_windows else 0.0)
                for name in snapshot.window_names
            ],
        ),
        _gauge(
            "blockpull_disks",
            "Disks selected by each policy rule, by state; disks no rule selects are not counted.",
            [
                (Labels((("rule", rule), ("state", state))), float(count))
                for (rule, state), count in sorted(counts.items())
            ],
        ),
        _gauge(
            "blockpull_disk_backing_depth",
            "Images in the disk's backing chain below its top image; 0 when independent.",
            [(labels, float(d.depth)) for d, labels in disks.selected],
        ),
        _gauge(
            "blockpull_disk_consecutive_failures",
            "Failed pulls of the disk since its last success; reset when the disk or the "
            "policy changes.",
            [(labels, float(d.consecutive_failures)) for d, labels in disks.selected],
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
        base = family.name
        for suffix, labels, value in family.samples:
            text = formatted.get(value)
            if text is None:
                text = formatted[value] = floatToGoString(value)
            append(f"{base}{suffix}{labels.text} {text}\n")
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
            for suffix, labels, value in family.samples:
                metric.add_sample(family.name + suffix, dict(labels.pairs), value)
            yield metric


class MetricsRenderer:
    """`() -> bytes` for the HTTP endpoint: each snapshot rendered once, plus process_* metrics.

    Thread-safe: concurrent scrapes of a new snapshot render it once; the others wait.
    """

    def __init__(
        self,
        get_snapshot: Callable[[], Snapshot | None],
        version: str,
        *,
        process_metrics: bool = True,
    ) -> None:
        self._get_snapshot = get_snapshot
        self._version = version
        self._lock = threading.Lock()
        self._cached: tuple[Snapshot | None, bytes] | None = None
        self._process_registry: CollectorRegistry | None = None
        if process_metrics:
            self._process_registry = CollectorRegistry(auto_describe=False)
            ProcessCollector(registry=self._process_registry)

    def render_snapshot(self, snapshot: Snapshot | None) -> bytes:
        with self._lock:
            cached = self._cached
            if cached is not None and cached[0] is snapshot:
                return cached[1]
            body = render(snapshot, self._version)
            self._cached = (snapshot, body)
            return body

    def __call__(self) -> bytes:
        body = self.render_snapshot(self._get_snapshot())
        if self._process_registry is None:
            return body
        return body + generate_latest(self._process_registry)
