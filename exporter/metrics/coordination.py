"""Metrics of the fleet coordination: whether the service answers, and per shared group what
this host holds and what it sees cluster-wide. Rendered only by a daemon with a coordinator.

`held_*` series are this host's own: summed over hosts they give the group's real load.
`cluster_*` series are this host's view of the whole group (every host reports about the same
value, so take `max`, not `sum`, across hosts).
"""

from __future__ import annotations

from exporter.core.coordinator import GroupStatus
from exporter.core.shared import GroupUse
from exporter.daemon.snapshot import Snapshot
from exporter.metrics.catalogue import _bandwidth, _gauge, _single
from exporter.metrics.exposition import Family, Labels


def coordination_families(snapshot: Snapshot) -> list[Family]:
    status = snapshot.coordination
    if status is None:
        return []
    uses = {use.group: use for use in (snapshot.plan.groups if snapshot.plan else ())}
    groups = sorted(status.groups, key=lambda g: g.group.name)
    labels = [Labels.of(group=g.group.name) for g in groups]

    def per_group(name: str, help_text: str, values: list[float]) -> Family:
        return _gauge(name, help_text, labels, values)

    def use_of(name: str) -> GroupUse:
        return uses.get(name, GroupUse(name, 0, 0, 0))

    return [
        _single(
            "blockpull_coordination_up",
            "1 if the coordination service answered the last round, 0 if not; group pulls "
            "stop within the lease TTL of the last heartbeat it answered.",
            1.0 if status.up else 0.0,
        ),
        Family(
            "blockpull_coordination_requests",
            "counter",
            "Requests sent to the coordination service.",
            [Labels.of()],
            [float(status.requests)],
        ),
        per_group(
            "blockpull_shared_group_bandwidth_bytes_per_second",
            "The group's bandwidth for all hosts together (+Inf: unlimited).",
            [_bandwidth(g.group.bandwidth) for g in groups],
        ),
        per_group(
            "blockpull_shared_group_max_concurrent",
            "The group's pulls at once for all hosts together.",
            [float(g.group.max_concurrent) for g in groups],
        ),
        per_group(
            "blockpull_shared_group_held_slots",
            "Slots of the group this host holds.",
            [float(g.slots) for g in groups],
        ),
        per_group(
            "blockpull_shared_group_held_pulls",
            "Group pulls running on this host.",
            [float(use_of(g.group.name).pulls) for g in groups],
        ),
        per_group(
            "blockpull_shared_group_held_bandwidth_bytes_per_second",
            "Sum of the speed limits of this host's group pulls (+Inf: one is unlimited).",
            [_held_bandwidth(use_of(g.group.name)) for g in groups],
        ),
        per_group(
            "blockpull_shared_group_share_bytes_per_second",
            "Speed limit each group pull gets from the group now (+Inf: unlimited).",
            [_bandwidth(g.share) for g in groups],
        ),
        per_group(
            "blockpull_shared_group_cluster_slots",
            "Slots of the group held by all hosts, as this host last saw them.",
            [float(g.cluster_slots) for g in groups],
        ),
        per_group(
            "blockpull_shared_group_cluster_bandwidth_bytes_per_second",
            "Bandwidth granted to the group's pulls on all hosts (slots held x share), as this "
            "host last saw it (+Inf: unlimited).",
            [_granted(g) for g in groups],
        ),
        per_group(
            "blockpull_shared_group_cluster_demand",
            "Group pulls all hosts would run now if the group allowed, as this host last saw it.",
            [float(g.cluster_demand) for g in groups],
        ),
        per_group(
            "blockpull_shared_group_members",
            "Hosts taking part in the group, as this host last saw them.",
            [float(g.members) for g in groups],
        ),
    ]


def _granted(group: GroupStatus) -> float:
    if group.share is None:
        return _bandwidth(None) if group.cluster_slots else 0.0
    return float(group.share * group.cluster_slots)


def _held_bandwidth(use: GroupUse) -> float:
    if use.bandwidth is None:
        return _bandwidth(None)
    return float(use.bandwidth)
