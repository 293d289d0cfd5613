"""Guards: free space on the issue's host, and how soon the daemon reacts to other hands.

    .venv/bin/python bench/guards.py [--repeat 5] [--foreign 3] [--record]

Real libvirt (qemu:///system), domains named `bpx-bench-<uuid8>-*`; the policies select only
those. The controller runs its own loop with the daemon's default timers (resync 30 s, progress
2 s, policy file 1 s, holds 0.25 s, a job-sweep tick every 5 s) over a LibvirtHost wrapped in
the harness's RecordingHost, which timestamps the start of each of its libvirt calls.

1. Free space, the issue's host: a 260 MiB file system (tmpfs) holding three overlays whose
   bases (elsewhere) hold 120 MiB each, and a running guest that keeps writing to its own disk
   there (a 16 MiB region: harness/writing_guest.py). Free space and the guest's state are
   sampled every 50 ms, once with the default `min_free: 10%` and once with `min_free: 0`.
2. Reactions, from the stimulus to the start of the daemon's libvirt call: `hold` (the command
   returned) -> abort, `release` -> start, a speed set by hand -> set_speed, a reload that
   ignores the disk (SIGHUP, and the file replaced with no signal) -> abort, a file system
   filled by somebody else -> abort, a pull aborted by hand -> the next start (backoff 10 s,
   doubling), and a job somebody else started (`virsh blockpull`, max_concurrent 1) -> the
   daemon's own pull aborted as over budget (the job sweep reads every disk within 50 s).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from common import DAEMON_TIMERS, percentile, table
from harness.failing_storage import tmpfs
from harness.free_space import floor_of, free_bytes, overlays_with_data, watching
from harness.ground_truth import block_job
from harness.in_process_daemon import InProcessDaemon, running_in_process
from harness.libvirt_lab import DiskSpec, Lab, pull_by_hand
from harness.libvirtd import open_conn
from harness.policy_files import policy, rule, write_policy
from harness.qemu_images import run
from harness.waiting import wait_for, wait_until
from harness.writing_guest import create_writer_image

from exporter.core.decisions import AbortReason, DiskState
from exporter.core.model import DiskKey
from exporter.daemon.controller import Reload
from exporter.daemon.hold_store import HoldStore

MiB = common.MiB
SMALL = "260M"


def cli(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"blockpull-exporter {' '.join(args)}: {done.stderr.strip()}")


@contextlib.contextmanager
def small_fs(lab: Lab) -> Iterator[Path]:
    with tmpfs(lab.folder / "small", SMALL) as mountpoint:
        try:
            yield mountpoint
        finally:
            lab.remove_domains(wait=True)


# -- 1. free space --------------------------------------------------------------------------------


def free_space_case(guarded: bool, seconds: float) -> list[object]:
    with common.lab() as lab, small_fs(lab) as small:
        keys = overlays_with_data(lab, small, ("a", "b", "c"), fill_mib=120)
        guest = lab.boot("writer", [DiskSpec("vda", create_writer_image(small))]).name()
        floor, before = floor_of(small), free_bytes(small)
        text = policy(
            rule("mine", [k.domain for k in keys]), max_concurrent=3,
            min_free=None if guarded else 0,
        )  # fmt: skip
        with (
            watching(small, guest) as watch,
            running_in_process(
                text, lab.folder, options=DAEMON_TIMERS, only=[k.domain for k in keys]
            ) as daemon,
        ):
            began = time.monotonic()
            wait_for(watch.paused, seconds, 0.2)
            started = len(daemon.host.calls_of("start_pull"))
            completed = sum(daemon.completed(k) for k in keys)
            waiting = sum(daemon.state(k) is DiskState.WAITING_SPACE for k in keys)
        paused_at = watch.first_paused_at()
    lowest = min(watch.free)
    return [
        "min_free 10% (default)" if guarded else "min_free 0 (no guard)",
        f"{before / MiB:.0f}",
        f"{floor / MiB:.1f}",
        f"{lowest / MiB:.1f}",
        "yes" if lowest >= floor else "NO",
        f"{started} / {completed} / {waiting}",
        f"paused after {paused_at - began:.1f} s" if paused_at else f"running for {seconds:.0f} s",
        len(watch.free),
    ]


# -- 2. reactions ---------------------------------------------------------------------------------


def call_after(daemon: InProcessDaemon, name: str, key: DiskKey, since: float) -> float:
    """Seconds from `since` (monotonic) to the first `name` call on `key` that began after."""
    wait_until(lambda: any(c.began >= since for c in daemon.host.calls_of(name, key)), 90, name)
    return min(c.began for c in daemon.host.calls_of(name, key) if c.began >= since) - since


def workdir(lab: Lab, label: str) -> Path:
    """A folder of the lab's own for one daemon's policy file."""
    folder = lab.folder / f"daemon-{label}"
    folder.mkdir(exist_ok=True)
    return folder


def pulling(key: DiskKey) -> bool:
    conn = open_conn()
    try:
        return block_job(conn, key) is not None
    finally:
        conn.close()


@contextlib.contextmanager
def one_pull(
    lab: Lab, label: str, text: Callable[[DiskKey], str], state: Path | None = None
) -> Iterator[tuple[InProcessDaemon, DiskKey]]:
    [key] = lab.start_with_chains(label, [256], size_mib=512)
    with running_in_process(
        text(key), workdir(lab, label), options=DAEMON_TIMERS, only=[key.domain], state_dir=state
    ) as daemon:
        wait_until(lambda: pulling(key), 30, "the pull")
        yield daemon, key


def slow(key: DiskKey, **fields: object) -> str:
    return policy(rule("mine", [key.domain], **fields), bandwidth="1MiB/s")


def holds(lab: Lab, repeat: int) -> dict[str, list[float]]:
    """From the holds file written (its mtime: the command's own start-up is not the daemon's)
    to the daemon's call."""
    state = lab.folder / "state"
    held, released = [], []
    with one_pull(lab, "held", slow, state) as (daemon, key):
        for _ in range(repeat):
            wait_until(lambda: pulling(key), 30, "the pull")
            cli("hold", "--state.dir", str(state), "--for", "5m", key.domain)
            held.append(call_after(daemon, "abort", key, written(HoldStore(state).path)))
            cli("release", "--state.dir", str(state), key.domain)
            released.append(call_after(daemon, "start_pull", key, written(HoldStore(state).path)))
    return {"hold written -> abort": held, "release written -> start_pull": released}


def written(path: Path) -> float:
    """When `path` was last written, on the monotonic clock."""
    return path.stat().st_mtime - (time.time() - time.monotonic())


def hand_speed(lab: Lab, repeat: int) -> dict[str, list[float]]:
    import libvirt

    put_back = []
    with one_pull(lab, "speed", slow) as (daemon, key):
        conn = open_conn()
        try:
            for _ in range(repeat):
                flags = libvirt.VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES
                since = time.monotonic()
                conn.lookupByName(key.domain).blockJobSetSpeed(key.disk, 8 * MiB, flags)
                put_back.append(call_after(daemon, "set_speed", key, since))
        finally:
            conn.close()
    return {"speed set by hand -> set_speed back": put_back}


def deselect(lab: Lab, repeat: int) -> dict[str, list[float]]:
    by_signal, by_file = [], []
    for n in range(repeat):
        for signal_it, out in ((True, by_signal), (False, by_file)):
            label = f"des{n}{'s' if signal_it else 'f'}"
            with one_pull(lab, label, slow) as (daemon, key):
                since = time.monotonic()
                write_policy(daemon.policy, slow(key, action="ignore"))
                if signal_it:
                    daemon.controller.inbox.put(Reload())
                out.append(call_after(daemon, "abort", key, since))
                assert daemon.aborted(key, AbortReason.DESELECTED) == 1
    return {"reload (SIGHUP) ignoring the disk -> abort": by_signal,
            "policy file replaced, no signal -> abort": by_file}  # fmt: skip


def low_space(lab: Lab, repeat: int) -> dict[str, list[float]]:
    stopped = []
    for n in range(repeat):
        with tmpfs(lab.folder / f"small{n}", SMALL) as small:
            [key] = overlays_with_data(lab, small, (f"low{n}",), fill_mib=200)
            text = policy(rule("mine", [key.domain]), bandwidth="1MiB/s")
            with running_in_process(
                text, workdir(lab, f"low{n}"), options=DAEMON_TIMERS, only=[key.domain]
            ) as daemon:
                wait_until(lambda: pulling(key), 30, "the pull")  # noqa: B023
                since = time.monotonic()
                run("fallocate", "-l", str(free_bytes(small) - 8 * MiB), small / "filler")
                stopped.append(call_after(daemon, "abort", key, since))
            lab.remove_domains(wait=True)
    return {"file system filled by somebody else -> abort": stopped}


def hand_abort(lab: Lab) -> dict[str, list[float]]:
    retry = {"max_attempts": 3, "backoff": "10s", "max_backoff": "1m"}
    restarts = []
    with one_pull(lab, "hand", lambda k: policy(
        rule("mine", [k.domain]), bandwidth="1MiB/s", retry=retry
    )) as (daemon, key):  # fmt: skip
        conn = open_conn()
        try:
            for _ in range(2):
                wait_until(lambda: pulling(key), 60, "the pull")
                since = time.monotonic()
                conn.lookupByName(key.domain).blockJobAbort(key.disk, 0)
                restarts.append(call_after(daemon, "start_pull", key, since))
        finally:
            conn.close()
        assert daemon.aborted(key, AbortReason.EXTERNAL) == 2
    return {"pull aborted by hand -> next start (backoff 10 s, then 20 s)": restarts}


def foreign(lab: Lab, repeat: int) -> dict[str, list[float]]:
    counted = []
    for n in range(repeat):
        [ours] = lab.start_with_chains(f"ours{n}", [256], size_mib=512)
        [theirs] = lab.start_with_chains(f"theirs{n}", [256], size_mib=512)
        text = policy(rule("mine", [ours.domain]), bandwidth="1MiB/s", max_concurrent=1)
        with running_in_process(
            text, workdir(lab, f"f{n}"), options=DAEMON_TIMERS, only=[ours.domain, theirs.domain]
        ) as daemon:
            wait_until(lambda: pulling(ours), 30, "our pull")  # noqa: B023
            time.sleep(n * 17 % 50)  # somewhere in the sweep's cycle
            conn = open_conn()
            try:
                since = time.monotonic()
                pull_by_hand(conn, theirs, 1 * MiB)
            finally:
                conn.close()
            counted.append(call_after(daemon, "abort", ours, since))
    return {"job started by somebody else -> counted (own pull aborted, over budget)": counted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--foreign", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    command = "python bench/guards.py " + " ".join(sys.argv[1:])
    out = [common.header("Guards (bench/guards.py)", command.strip(), with_libvirt=True)]
    rows = [free_space_case(True, 45.0), free_space_case(False, 60.0)]
    out.append(
        f"\n### Free space: the issue's host\n\nA {SMALL} file system with three overlays over "
        "bases holding 120 MiB each (360 MiB to pull), max_concurrent 3, no bandwidth limit, "
        "and a guest writing 16 MiB to its own disk there over and over. Free space (what "
        "QEMU may use) sampled every 50 ms.\n\n"
        + table(
            [
                "policy",
                "free at start MiB",
                "floor MiB",
                "lowest free MiB",
                "never below floor",
                "pulls started / completed / waiting_space",
                "writing guest",
                "samples",
            ],
            [rows[0], rows[1]],
        )
    )
    print(out[-1], flush=True)
    results: dict[str, list[float]] = {}
    with common.lab() as lab:
        results |= holds(lab, args.repeat)
        results |= hand_speed(lab, args.repeat)
        results |= deselect(lab, max(1, args.repeat // 2))
        results |= low_space(lab, max(1, args.repeat // 2))
        results |= hand_abort(lab)
        results |= foreign(lab, args.foreign)
    reaction_rows = [
        [what, len(s), f"{percentile(s, 50):.3f}", f"{percentile(s, 95):.3f}", f"{max(s):.3f}",
         ", ".join(f"{x:.2f}" for x in s)]
        for what, s in results.items()
    ]  # fmt: skip
    out.append(
        "\n### Reactions\n\nSeconds from the stimulus to the start of the daemon's libvirt "
        "call, the daemon's default timers.\n\n"
        + table(["reaction", "n", "p50 s", "p95 s", "max s", "all"], reaction_rows)
        + f"\nLoad average at the end: {common.load_average()}.\n"
    )
    text = "".join(out)
    print(text, flush=True)
    if args.record:
        common.record("guards", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
