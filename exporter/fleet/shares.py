"""How a shared group's slots and bandwidth are divided between hosts: pure arithmetic.

- Slots: max-min fair by demand (water filling). The level is the largest L with
  sum(min(demand, L)) <= max_concurrent; each host may hold min(demand, L), and min(demand,
  L + 1) while slots are left over at that level (who gets those is first come, first served,
  decided by the service's locks). A host never holds more slots than its demand.
- Bandwidth: every group pull gets bandwidth // min(max_concurrent, cluster demand). At most
  that many slots can be held, since nobody holds more than its demand, so the limits add up
  to at most the group's bandwidth, and the group is fully used as soon as demand fills it.
"""

from __future__ import annotations

from collections.abc import Sequence


def water_level(demands: Sequence[int], slots: int) -> tuple[int, int]:
    """(level, slots left over at that level) for hosts' `demands` sharing `slots`."""
    wanted = [d for d in demands if d > 0]
    if sum(wanted) <= slots:
        return (max(wanted) if wanted else 0), slots - sum(wanted)
    low, high = 0, max(wanted)  # sum(min(d, low)) <= slots < sum(min(d, high))
    while high - low > 1:
        middle = (low + high) // 2
        if sum(min(d, middle) for d in wanted) <= slots:
            low = middle
        else:
            high = middle
    return low, slots - sum(min(d, low) for d in wanted)


def slot_cap(demand: int, level: int, leftover: int) -> int:
    """The slots a host with `demand` may hold at this water level."""
    return max(0, min(demand, level + 1 if leftover > 0 else level))


def pull_share(bandwidth: int | None, max_concurrent: int, cluster_demand: int) -> int | None:
    """Bytes/s for each group pull (None = unlimited); at least 1, libvirt reads 0 as unlimited."""
    if bandwidth is None:
        return None
    return max(1, bandwidth // max(1, min(max_concurrent, cluster_demand)))
