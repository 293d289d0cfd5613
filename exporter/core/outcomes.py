"""Proving what became of a tracked pull, from a re-read of the host.

Events are hints: a destroyed domain sends no block-job event, and a pull that finished while
libvirtd (or the daemon) was down is never announced. So an outcome is decided from the
re-read chain first, and an event only tells a failure from an external cancel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from exporter.core.decisions import AbortReason
from exporter.core.memory import TrackedJob
from exporter.core.model import Disk, DiskKey, JobOutcome, JobType, Observation

# How long a vanished job with an unchanged chain waits for its event before it is judged
# canceled by someone else: libvirt delivers the event a moment after the job disappears.
EVENT_GRACE_SECONDS = 5.0


class OutcomeKind(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


@dataclass(frozen=True)
class Outcome:
    key: DiskKey
    kind: OutcomeKind
    reason: AbortReason | None = None  # for ABORTED


@dataclass(frozen=True)
class Settlement:
    outcomes: tuple[Outcome, ...]
    still_running: frozenset[DiskKey]
    unsettled: Mapping[DiskKey, float]  # vanished, waiting for their event: key -> first seen


def reached_target(disk: Disk, job: TrackedJob) -> bool:
    """A pull only ever removes the top of the backing chain: a proper suffix proves it ran.

    This also proves pulls adopted from someone else, whose base the daemon never knew.
    """
    before, after = job.chain_before, disk.chain
    return len(after) < len(before) and before[len(before) - len(after) :] == after


def settle(
    tracked: Mapping[DiskKey, TrackedJob],
    observation: Observation,
    events: Mapping[DiskKey, JobOutcome],
    vanished_since: Mapping[DiskKey, float],
    now: float,
) -> Settlement:
    """Decide each tracked pull's outcome; pure.

    `events` holds the last block-job event seen per disk since the previous settle;
    `vanished_since` the instant each still-unsettled job was first seen missing.
    """
    disks = observation.disks()
    outcomes: list[Outcome] = []
    running: set[DiskKey] = set()
    unsettled: dict[DiskKey, float] = {}
    for key, job in sorted(tracked.items()):
        found = disks.get(key)
        if found is None:
            outcomes.append(Outcome(key, OutcomeKind.ABORTED, AbortReason.DOMAIN_STOPPED))
            continue
        domain, disk = found
        if disk.job is not None and disk.job.type is JobType.PULL:
            running.add(key)
            continue
        if not domain.state.can_run_jobs:
            # A stopped domain's (inactive) XML has no backing chain at all: an empty chain
            # proves nothing there, only a completion event does.
            if events.get(key) is JobOutcome.COMPLETED:
                outcomes.append(Outcome(key, OutcomeKind.COMPLETED))
            else:
                outcomes.append(Outcome(key, OutcomeKind.ABORTED, AbortReason.DOMAIN_STOPPED))
        elif reached_target(disk, job):
            outcomes.append(Outcome(key, OutcomeKind.COMPLETED))
        elif events.get(key) is JobOutcome.FAILED:
            outcomes.append(Outcome(key, OutcomeKind.FAILED))
        elif events.get(key) is JobOutcome.CANCELED:
            outcomes.append(Outcome(key, OutcomeKind.ABORTED, AbortReason.EXTERNAL))
        else:
            first_seen = vanished_since.get(key, now)
            if now - first_seen >= EVENT_GRACE_SECONDS:
                outcomes.append(Outcome(key, OutcomeKind.ABORTED, AbortReason.EXTERNAL))
            else:
                unsettled[key] = first_seen
    return Settlement(tuple(outcomes), frozenset(running), unsettled)
