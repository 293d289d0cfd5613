"""What libvirt itself says, read on the test's own connection: block jobs and live chains.

Never the daemon's own view (its snapshot, or the adapter's XML parser): these are what the
daemon's results are checked against. A domain that stopped or vanished has no job.
"""

from __future__ import annotations

import itertools
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass

import libvirt

from exporter.core.model import DiskKey
from harness.libvirtd import URI
from harness.waiting import wait_for

SAMPLE_INTERVAL = 0.1


@dataclass(frozen=True)
class LibvirtJob:
    """`blockJobInfo` with the *_BANDWIDTH_BYTES flag, as libvirt returns it."""

    cur: int
    end: int
    bandwidth: int  # bytes/s; 0 = unlimited


def block_job(conn: libvirt.virConnect, key: DiskKey) -> LibvirtJob | None:
    """The disk's block job; None when none runs or the domain is stopped or gone."""
    flags = libvirt.VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES
    try:
        info = conn.lookupByName(key.domain).blockJobInfo(key.disk, flags)
    except libvirt.libvirtError:
        return None
    if not info:
        return None
    return LibvirtJob(
        int(info.get("cur", 0)), int(info.get("end", 0)), int(info.get("bandwidth", 0))
    )


def cursor(conn: libvirt.virConnect, key: DiskKey) -> int:
    """The job's `cur`; 0 when no job runs."""
    job = block_job(conn, key)
    return job.cur if job is not None else 0


def wait_cursor_above(
    conn: libvirt.virConnect, key: DiskKey, floor: int, timeout: float = 30.0
) -> int:
    wait_for(lambda: cursor(conn, key) > floor, timeout, 0.1)
    value = cursor(conn, key)
    assert value > floor, f"{key}: pull cursor {value} not above {floor}"
    return value


def wait_no_job(conn: libvirt.virConnect, key: DiskKey, timeout: float = 60.0) -> None:
    assert wait_for(lambda: block_job(conn, key) is None, timeout, 0.2), (
        f"{key}: block job still running after {timeout} s"
    )


def live_chain(conn: libvirt.virConnect, key: DiskKey) -> tuple[str, ...]:
    """The disk's backing images in the live (or, shut off, the inactive) XML, nearest first:
    file paths, or the export name of a network image."""
    root = ET.fromstring(conn.lookupByName(key.domain).XMLDesc(0))
    for disk in root.findall("./devices/disk"):
        target = disk.find("target")
        if target is None or target.get("dev") != key.disk:
            continue
        chain = []
        store = disk.find("backingStore")
        while store is not None and (source := store.find("source")) is not None:
            chain.append(source.get("file") or source.get("dev") or source.get("name") or "")
            store = store.find("backingStore")
        return tuple(chain)
    raise KeyError(key)


# -- sampled over time ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    round: int  # every key is read once per round, rounds strictly one after the other
    key: DiskKey
    at: float  # time.monotonic() right after the read
    job: LibvirtJob | None


class JobSampler:
    """Reads the block job of each key every `interval` on its own libvirt connection."""

    def __init__(self, keys: Iterable[DiskKey], interval: float = SAMPLE_INTERVAL) -> None:
        self.keys = tuple(keys)
        self.interval = interval
        self.samples: list[Sample] = []  # appended by the sampler thread: read a copy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> JobSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        conn = libvirt.open(URI)
        try:
            rounds = 0
            while not self._stop.is_set():
                for key in self.keys:
                    job = block_job(conn, key)
                    self.samples.append(Sample(rounds, key, time.monotonic(), job))
                rounds += 1
                self._stop.wait(self.interval)
        finally:
            conn.close()

    def of(self, key: DiskKey) -> list[Sample]:
        return [s for s in list(self.samples) if s.key == key]

    def running(self, key: DiskKey) -> list[Sample]:
        return [s for s in self.of(key) if s.job is not None]

    def ever_ran(self, key: DiskKey) -> bool:
        return bool(self.running(key))

    def rounds(self) -> list[dict[DiskKey, LibvirtJob | None]]:
        by_round: dict[int, dict[DiskKey, LibvirtJob | None]] = {}
        for s in list(self.samples):
            by_round.setdefault(s.round, {})[s.key] = s.job
        return [by_round[r] for r in sorted(by_round) if len(by_round[r]) == len(self.keys)]

    def max_concurrent(self) -> tuple[int, int]:
        """(proven, naive): the most jobs proven to run at one instant, and the most seen in
        one round. A job seen in two consecutive rounds ran between the rounds' reads, so jobs
        seen in both rounds ran together then; one round alone may catch one job just before it
        ended and the next just after it started."""
        rounds = self.rounds()
        naive = max((sum(j is not None for j in r.values()) for r in rounds), default=0)
        proven = max(
            (
                sum(a[k] is not None and b[k] is not None for k in self.keys)
                for a, b in itertools.pairwise(rounds)
            ),
            default=0,
        )
        return proven, naive

    def rate(self, key: DiskKey, skip: float, below: int) -> tuple[float, float]:
        """(bytes/s, seconds measured) of `key`'s cursor: from `skip` s after the first sighting
        to the last sample whose cursor is still under `below` (where copying, not skipping)."""
        running = [s for s in self.running(key) if s.job is not None and s.job.cur < below]
        if not running:
            return 0.0, 0.0
        start = next((s for s in running if s.at >= running[0].at + skip), None)
        end = running[-1]
        if start is None or start.job is None or end.job is None or end.at <= start.at:
            return 0.0, 0.0
        return (end.job.cur - start.job.cur) / (end.at - start.at), end.at - start.at
