"""Shared bits of the benchmarks: machine facts, timing, RESULTS.md sections, a lab on the
real libvirtd (unique `bpx-bench-<uuid8>-` names, cleaned up in `finally`) and a watch on
foreign block jobs. The daemon, the recording host, the policy writer and the libvirt lab are
the tests' own harness (tests/harness), shared rather than copied.

Import from a benchmark script as `import common` (the scripts put bench/ on sys.path); it puts
the repository root and tests/ (for `harness`) on sys.path.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from exporter.daemon.controller import ControllerOptions  # noqa: E402

if TYPE_CHECKING:  # the harness is imported where used: scale.py's RSS figures count imports
    from harness.in_process_daemon import InProcessDaemon
    from harness.libvirt_lab import Lab

MiB = 1024 * 1024
DAEMON_TIMERS = ControllerOptions()  # in-process daemons keep the defaults operators get
RESULTS = BENCH / "RESULTS.md"


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
        from harness.libvirtd import open_conn

        conn = open_conn()
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


# -- foreign jobs ------------------------------------------------------------------------------


class ForeignWatch:
    """Samples a controller's snapshot: which block jobs on the host are not the daemon's.

    On a libvirtd shared with other engineers' tests, their jobs are foreign to the policy and,
    by design, take a slot of the host budget (and their bandwidth limit): a benchmark must
    say when they were there.
    """

    def __init__(self, daemon: InProcessDaemon, every: float = 0.05) -> None:
        self._daemon = daemon
        self._every = every
        self._stop = threading.Event()
        self.seen: list[tuple[float, tuple[tuple[str, int], ...]]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ForeignWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            jobs = self._daemon.snapshot.jobs
            foreign = tuple(sorted((str(j.key), j.job.bandwidth) for j in jobs if not j.managed))
            self.seen.append((time.monotonic(), foreign))

    def during(self, start: float, end: float) -> set[tuple[str, int]]:
        """Foreign jobs (key, bandwidth limit) seen between the two monotonic instants."""
        return {job for t, jobs in self.seen if start - 0.1 <= t <= end + 0.1 for job in jobs}

    def ever(self) -> set[tuple[str, int]]:
        return {job for _, jobs in self.seen for job in jobs}

    def note(self) -> str:
        """Other engineers' jobs take slots and bandwidth of the host budget, by design."""
        seen = sorted(self.ever())
        if not seen:
            return "No foreign block job ran on the host meanwhile.\n"
        jobs = ", ".join(f"{k} (limit {b} B/s)" for k, b in seen)
        return f"Foreign block jobs (other engineers' tests) seen meanwhile: {jobs}.\n"


# -- real libvirt ------------------------------------------------------------------------------


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    """A lab of transient domains (a destroy removes them) under the integration suites'
    shared libvirtd lock (no restart mid-benchmark); removed on the way out."""
    import libvirt
    from harness.libvirt_lab import Lab
    from harness.libvirtd import libvirtd_lock, open_conn

    libvirt.registerErrorHandler(lambda *_: None, None)  # errors raise; no stderr noise
    with libvirtd_lock(exclusive=False):
        conn = open_conn()
        made = Lab.open(conn, kind="bench", persistent=False)
        try:
            yield made
        finally:
            made.close()
            conn.close()


def paused_domains(lab: Lab, count: int, targets: Sequence[str]) -> float:
    """`count` paused TCG domains, a qcow2 overlay per target over one shared, empty 16 MiB
    base each (every disk on a backing chain, no job); returns the set-up seconds."""
    from harness.libvirt_lab import DiskSpec
    from harness.qemu_images import create_overlay, run

    base = lab.folder / "base.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", base, "16M")
    base.chmod(0o644)
    started = time.perf_counter()
    for i in range(count):
        disks = [
            DiskSpec(target, create_overlay(base, lab.folder / f"{i:04d}-{target}.qcow2"))
            for target in targets
        ]
        lab.start(f"{i:04d}", disks)
    return time.perf_counter() - started
