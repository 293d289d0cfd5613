"""Shared bits of the benchmarks: machine facts, timing, RESULTS.md sections, real-libvirt
fixtures (unique `bpx-bench-<uuid8>-` names, cleaned up in `finally`) and a recording host.

Import from a benchmark script as `import common` (the scripts put bench/ on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (ROOT, ROOT / "tests" / "integration"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from exporter.core.clock import Clock, OffsetClock  # noqa: E402, F401 (OffsetClock: for scripts)
from exporter.core.model import (  # noqa: E402
    BlockJob,
    DiskKey,
    HostEvent,
    JobEvent,
    JobOutcome,
    Observation,
)

URI = "qemu:///system"
IMAGES = Path("/var/lib/libvirt/images")
MiB = 1024 * 1024
RESULTS = BENCH / "RESULTS.md"
T = TypeVar("T")


# -- machine ---------------------------------------------------------------------------------


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def machine(with_libvirt: bool = False) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    text = (
        f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )
    if with_libvirt:
        import libvirt

        conn = libvirt.open(URI)
        try:
            lib, hv = conn.getLibVersion(), conn.getVersion()
        finally:
            conn.close()
        text += f", libvirt {_version(lib)}, QEMU {_version(hv)}"
    return text


def _version(v: int) -> str:
    return f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"


def header(title: str, command: str, with_libvirt: bool = False) -> str:
    return (
        f"## {title}\n\n"
        f"Command: `{command}`\n\n"
        f"Machine: {machine(with_libvirt)}\n\n"
        f"Recorded {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; load average (1/5/15 min) at the "
        f"start: {load_average()} (other engineers' integration tests share the 2 cores).\n"
    )


# -- numbers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """Median CPU (this thread, or the process when asked) and wall seconds of some rounds."""

    cpu: float
    wall: float
    rounds: int


def measure(
    work: Callable[[], object],
    rounds: int,
    *,
    before: Callable[[], object] | None = None,
    process: bool = False,
) -> Cost:
    """`before` runs untimed ahead of each round. Thread CPU leaves out every sleep."""
    cpu_clock = time.process_time if process else time.thread_time
    cpus, walls = [], []
    for _ in range(rounds):
        if before is not None:
            before()
        cpu, wall = cpu_clock(), time.perf_counter()
        work()
        walls.append(time.perf_counter() - wall)
        cpus.append(cpu_clock() - cpu)
    return Cost(statistics.median(cpus), statistics.median(walls), rounds)


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def ratio(ours: float, baseline: float) -> str:
    return f"{ours / baseline:.3f}" if baseline else "n/a"


def table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def record(section: str, text: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section between `<!-- section:begin/end -->` in RESULTS.md."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old)
    else:
        new = f"{old.rstrip()}\n\n{block}\n"
    path.write_text(new if new.endswith("\n") else new + "\n")


# -- clocks ----------------------------------------------------------------------------------


# -- a host that records what the controller does ----------------------------------------------


@dataclass(frozen=True)
class Call:
    at: float  # time.monotonic() when the call returned (events: when delivered)
    kind: str  # start_pull, set_speed, abort, observe, refresh_jobs, event
    key: DiskKey | None = None
    detail: Any = None


@dataclass
class RecordingHost:
    """Wraps any `exporter.core.host.Host`; timestamps every action and every delivered event."""

    inner: Any
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _note(self, kind: str, key: DiskKey | None = None, detail: Any = None) -> None:
        with self.lock:
            self.calls.append(Call(time.monotonic(), kind, key, detail))

    def observe(self) -> Observation:
        result = self.inner.observe()
        self._note("observe")
        return result

    def refresh_jobs(self, keys: Iterable[DiskKey]) -> Mapping[DiskKey, BlockJob | None]:
        result = self.inner.refresh_jobs(keys)
        self._note("refresh_jobs", detail=len(result))
        return result

    def start_pull(self, key: DiskKey, base: str | None, bandwidth: int | None) -> None:
        at = time.monotonic()  # the call's start: the reaction is the decision, not libvirt
        self.inner.start_pull(key, base, bandwidth)
        with self.lock:
            self.calls.append(Call(at, "start_pull", key, bandwidth))

    def set_speed(self, key: DiskKey, bandwidth: int | None) -> None:
        at = time.monotonic()
        self.inner.set_speed(key, bandwidth)
        with self.lock:
            self.calls.append(Call(at, "set_speed", key, bandwidth))

    def abort(self, key: DiskKey) -> None:
        at = time.monotonic()
        self.inner.abort(key)
        with self.lock:
            self.calls.append(Call(at, "abort", key))

    def subscribe(self, sink: Callable[[HostEvent], None]) -> None:
        def recorded(event: HostEvent) -> None:
            self._note("event", getattr(event, "key", None), event)
            sink(event)

        self.inner.subscribe(recorded)

    def close(self) -> None:
        self.inner.close()

    def completed(self, keys: Iterable[DiskKey]) -> list[Call]:
        """The COMPLETED events delivered for these disks."""
        wanted = set(keys)
        return [
            c
            for c in self.of("event")
            if isinstance(c.detail, JobEvent)
            and c.detail.outcome is JobOutcome.COMPLETED
            and c.key in wanted
        ]

    def of(self, kind: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.kind == kind]


class ForeignWatch:
    """Samples a controller's snapshot: which block jobs on the host are not the daemon's.

    On a libvirtd shared with other engineers' tests, their jobs are foreign to the policy and,
    by design, take a slot of the host budget (and their bandwidth limit): a benchmark must
    say when they were there.
    """

    def __init__(self, snapshot: Callable[[], Any], every: float = 0.05) -> None:
        self._snapshot = snapshot
        self._every = every
        self._stop = threading.Event()
        self.seen: list[tuple[float, tuple[tuple[str, int], ...]]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            jobs = self._snapshot().jobs
            foreign = tuple(sorted((str(j.key), j.job.bandwidth) for j in jobs if not j.managed))
            self.seen.append((time.monotonic(), foreign))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def during(self, start: float, end: float) -> set[tuple[str, int]]:
        """Foreign jobs (key, bandwidth limit) seen between the two monotonic instants."""
        return {job for t, jobs in self.seen if start - 0.1 <= t <= end + 0.1 for job in jobs}

    def ever(self) -> set[tuple[str, int]]:
        return {job for _, jobs in self.seen for job in jobs}


class Running:
    """A controller looping in a thread over `host` (a RecordingHost around a LibvirtHost),
    with a ForeignWatch on its snapshots; `stop()`, or leaving the `with`, shuts it down."""

    def __init__(self, host: RecordingHost, policy: Path, clock: Clock) -> None:
        from exporter.daemon.controller import Controller
        from exporter.policy.source import PolicySource

        self.host = host
        self.controller = Controller(host, PolicySource(policy), clock)
        self.thread = threading.Thread(target=self.controller.run, daemon=True)
        self.thread.start()
        self.watch = ForeignWatch(lambda: self.controller.snapshot)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        from exporter.daemon.controller import Shutdown

        self.controller.inbox.put(Shutdown())
        self.thread.join(timeout=30)
        self.watch.stop()

    def foreign_note(self) -> str:
        """Other engineers' jobs take slots and bandwidth of the host budget, by design."""
        seen = sorted(self.watch.ever())
        if not seen:
            return "No foreign block job ran on the host meanwhile.\n"
        jobs = ", ".join(f"{k} (limit {b} B/s)" for k, b in seen)
        return f"Foreign block jobs (other engineers' tests) seen meanwhile: {jobs}.\n"


# -- real libvirt: unique names, chains, domains, clean-up ------------------------------------


@dataclass
class Lab:
    """Domains and images of one benchmark run; `close()` removes them all."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    domains: list[str] = field(default_factory=list)
    folder: Path | None = None
    conn: Any = None

    @property
    def prefix(self) -> str:
        return f"bpx-bench-{self.tag}-"

    def open(self) -> Lab:
        import libvirt

        libvirt.registerErrorHandler(lambda *_: None, None)  # errors raise; no stderr noise
        self.conn = libvirt.open(URI)
        self.folder = IMAGES / f"bpx-bench-{self.tag}"
        self.folder.mkdir(mode=0o755)
        self.folder.chmod(0o755)  # QEMU (libvirt-qemu) must enter it
        return self

    def chain(self, name: str, size_mib: int, fill_mib: int) -> Any:
        import helpers

        assert self.folder is not None
        return helpers.create_chain(self.folder, name, 1, size_mib, fill_mib)

    def start(self, label: str, disks: Sequence[tuple[str, Path]]) -> str:
        """A transient paused TCG domain with qcow2 disks (target, top image)."""
        import helpers

        name = self.prefix + label
        self.domains.append(name)  # before the start: a half-made domain is removed too
        specs = [helpers.DiskSpec(target, top) for target, top in disks]
        helpers.start_domain(self.conn, name, specs, persistent=False)
        return name

    def paused_domains(self, count: int, targets: Sequence[str]) -> float:
        """`count` paused TCG domains, a qcow2 overlay per target over one shared, empty 16 MiB
        base each (every disk on a backing chain, no job); returns the set-up seconds."""
        from helpers import run

        assert self.folder is not None
        base = self.folder / "base.qcow2"
        run("qemu-img", "create", "-q", "-f", "qcow2", base, "16M")
        started = time.perf_counter()
        for i in range(count):
            disks = []
            for target in targets:
                top = self.folder / f"{i:04d}-{target}.qcow2"
                run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top)
                disks.append((target, top))
            self.start(f"{i:04d}", disks)
        return time.perf_counter() - started

    def _remove(self, name: str) -> None:
        import libvirt

        with contextlib.suppress(libvirt.libvirtError):  # never started, or gone already
            dom = self.conn.lookupByName(name)
            dom.destroy()  # transient: a destroy also undefines
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.lookupByName(name).undefine()

    def close(self) -> None:
        if self.conn is not None:
            with ThreadPoolExecutor(max_workers=8) as pool:  # a destroy takes ~1-2 s
                list(pool.map(self._remove, self.domains))
            self.conn.close()
        if self.folder is not None and self.folder.name.startswith("bpx-bench-"):
            shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    """A Lab under the integration suites' shared libvirtd lock (no restart mid-benchmark)."""
    import helpers

    with helpers.libvirtd_lock(exclusive=False):
        made = Lab()
        try:
            yield made.open()
        finally:
            made.close()


def write_policy(folder: Path, text: str, name: str = "policy.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path
