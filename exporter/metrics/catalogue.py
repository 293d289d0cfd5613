"""The metric catalogue: every `blockpull_*` family computed from a `Snapshot`.

Names, help texts, label sets and the series pre-initialised at zero live here, and nothing
else: how families become text is `exposition`, and serving them is `renderer`. Everything is
linear in the disks, jobs, rules and images of the snapshot (pre-initialised
`blockpull_disks{rule,state}` series are rules x states).
"""

from __future__ import annotations

from prometheus_client.utils import floatToGoString

from exporter.core.decisions import AbortReason, DiskState, Plan
from exporter.core.model import DiskKey
from exporter.daemon.snapshot import Counters, Histogram, Snapshot
from exporter.metrics.exposition import NO_LABELS, Family, Labels

INF = float("inf")

# Module constants, not `DiskState.X` in loops: enum attribute access is slow at 4,000 disks.
_IGNORED = DiskState.IGNORED
_INDEPENDENT = DiskState.INDEPENDENT


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
    """None (unlimited) is +Inf, so `>` comparisons hold."""
    return INF if value is None else float(value)


def families(snapshot: Snapshot | None, version: str) -> list[Family]:
    """Every family for the snapshot, in exposition order; None: before the first reconcile."""
    result = [
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
        return result
    disks = _Disks(snapshot)
    result += _status_families(snapshot)
    result += _job_families(snapshot, disks)
    result += _counter_families(snapshot, disks)
    if snapshot.plan is not None:
        result += _plan_families(snapshot, disks)
    result += _hold_families(snapshot)
    if snapshot.coordination is not None:
        from exporter.metrics.coordination import coordination_families  # it imports this one

        result += coordination_families(snapshot)
    images = sorted(snapshot.backing_dependents.items())
    result.append(
        _gauge(
            "blockpull_backing_image_dependents",
            "Disks on this host whose backing chain includes the image.",
            [Labels.of(image=image) for image, _ in images],
            [float(count) for _, count in images],
        )
    )
    return result


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
            counters.completed, counters.failed, counters.copied, (k for k, _ in counters.aborted)
        )
        keys: list[DiskKey] = []
        labels: list[Labels] = []
        for d, lab in zip(self.decisions, self.labels, strict=True):
            if d.state is not _INDEPENDENT or d.key in nonzero:
                keys.append(d.key)
                labels.append(lab)
        # Disks now ignored or unselected keep their counts visible, after the rest (those of
        # domains that no longer exist are dropped by the controller).
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
    families += [
        _single(
            "blockpull_state_last_save_successful",
            "1 if the last save of the state file succeeded; while it fails no new pull starts "
            "(a restart could not adopt it) and running pulls go on.",
            1.0 if snapshot.state_saved else 0.0,
        ),
        Family(
            "blockpull_state_save_failures",
            "counter",
            "Failed saves of the state file (full or read-only state directory, ...).",
            [NO_LABELS],
            [float(snapshot.state_save_failures)],
        ),
    ]
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
            "blockpull_copied_bytes",
            "Bytes the exporter's block pulls on the disk advanced (libvirt's cursor), counted "
            "between reads; rate() of it is the disk's pull throughput.",
            labels,
            per_disk(counters.copied),
        ),
        counter(
            "blockpull_jobs_aborted",
            "Block pulls on the disk stopped before the end, by reason; a pull aborted "
            "because its window closed resumes without losing copied data.",
            aborted_labels,
            aborted_values,
        ),
    ]


def _hold_families(snapshot: Snapshot) -> list[Family]:
    holds = sorted(snapshot.holds.in_force(snapshot.taken_at), key=lambda h: h.domains)
    return [
        _gauge(
            "blockpull_hold_expiry_timestamp_seconds",
            "When each hold in force (`blockpull-exporter hold`) ends, in seconds since the "
            'epoch, by its domain glob; +Inf for domains="*" when the holds file is unreadable.',
            [Labels.of(domains=h.domains) for h in holds],
            [h.until for h in holds],
        )
    ]


def _space_families(plan: Plan) -> list[Family]:
    checks = plan.space
    labels = [Labels.of(mountpoint=c.mountpoint) for c in checks]
    return [
        _gauge(
            "blockpull_filesystem_free_bytes",
            "Free space QEMU may still use on a file system holding images being pulled.",
            labels,
            [float(c.free) for c in checks],
        ),
        _gauge(
            "blockpull_filesystem_size_bytes",
            "Size of a file system holding images being pulled.",
            labels,
            [float(c.size) for c in checks],
        ),
        _gauge(
            "blockpull_filesystem_min_free_bytes",
            "Free space the policy's min_free keeps on the file system: no pull starts that "
            "could take it below, and running pulls are aborted when it falls below.",
            labels,
            [float(c.floor) for c in checks],
        ),
        _gauge(
            "blockpull_filesystem_reserved_bytes",
            "The most the pulls running on the file system may still write.",
            labels,
            [float(c.reserved) for c in checks],
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
        *_space_families(plan),
    ]
