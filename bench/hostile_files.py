"""Time and peak memory of `blockpull-exporter check` (and of a web config load) on hostile files.

Issue 13 asks that `check` answer any file within 10 s and 300 MiB. This builds each hostile
file of the issue in a temporary folder and runs the real command once per file under
`/usr/bin/time -v`, printing wall time, peak RSS, exit status and the size of what was printed.
A timeout (30 s, `--timeout SECONDS`) and a 4 GiB address-space limit keep a regression from
taking the machine down. `.venv/bin/python bench/hostile_files.py` (~5 s after the fixes).
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPORTER = [sys.executable, "-m", "exporter"]  # PYTHONPATH=DIR measures another checkout
DEFAULT_TIMEOUT = 30.0
ADDRESS_SPACE = 4 * 1024**3


def alias_amplification() -> str:
    """11 KB: 1,000 aliases of a rule whose three glob lists alias one 1,000-item list."""
    items = ", ".join(["1"] * 1000)
    aliases = "".join("  - *r\n" for _ in range(999))
    return (
        f"version: 1\nrules:\n  - &r {{name: a, domains: &l [{items}], disks: *l, backing: *l}}\n"
        f"{aliases}"
    )


def billion_laughs() -> str:
    """The classic nine levels of nine aliases, reached from a rule's glob list."""
    lines = [
        "version: 1",
        "laughs:",
        '  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    ]
    previous = "a"
    for level in "bcdefghi":
        lines.append(f"  - &{level} [{', '.join([f'*{previous}'] * 9)}]")
        previous = level
    lines += ["rules:", "  - {name: x, domains: *i}"]
    return "\n".join(lines) + "\n"


def many_rules(count: int) -> str:
    return "version: 1\nrules:\n" + "".join(
        f"  - {{name: r{i}, domains: [d{i}-*]}}\n" for i in range(count)
    )


def dense_mistakes(size: int) -> str:
    """Just under `size` bytes: one rule whose glob list holds as many integers as fit."""
    head = "version: 1\nrules:\n  - {name: a, domains: ["
    return head + "1," * ((size - len(head) - 4) // 2) + "]}\n"


def many_mistakes(rules: int) -> str:
    """`rules` rules of 100 integers where globs belong: 100 mistakes each."""
    items = ", ".join(["1"] * 100)
    return "version: 1\nrules:\n" + "".join(
        f"  - {{name: r{i}, domains: [{items}]}}\n" for i in range(rules)
    )


def deep_web_config(depth: int) -> str:
    return "tls_server_config: " + "[" * depth + "]" * depth + "\n"


def build(folder: Path) -> list[tuple[str, list[str]]]:
    """(case, command) for each hostile file."""
    example = str(ROOT / "policies" / "example.yaml")
    files = {
        "alias-amplification.yaml": alias_amplification(),
        "billion-laughs.yaml": billion_laughs(),
        "many-rules-100000.yaml": many_rules(100_000),
        "oversized-2MiB.yaml": "version: 1\n" + "#" * 2 * 1024**2 + "\n",
        "dense-1MiB.yaml": dense_mistakes(1000 * 1024),
        "thousand-mistakes.yaml": many_mistakes(10),
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    os.mkfifo(folder / "fifo.yaml")
    (folder / "dev-zero.yaml").symlink_to("/dev/zero")
    (folder / "deep-web.yml").write_text(deep_web_config(10_000))
    check = [*EXPORTER, "check"]
    cases = [
        (name, [*check, str(folder / name)])
        for name in (
            "alias-amplification.yaml",
            "billion-laughs.yaml",
            "many-rules-100000.yaml",
            "oversized-2MiB.yaml",
            "dense-1MiB.yaml",
            "thousand-mistakes.yaml",
            "fifo.yaml",
            "dev-zero.yaml",
        )
    ]
    run_with_web_config = [
        *EXPORTER,
        "run",
        "--policy.file",
        example,
        "--libvirt.uri",
        f"sim://{folder / 'sim.json'}",
        "--state.dir",
        str(folder / "state"),
        "--web.listen-address",
        "127.0.0.1:0",
        "--web.config.file",
        str(folder / "deep-web.yml"),
    ]
    cases.append(("deep-web.yml (run --web.config.file)", run_with_web_config))
    return cases


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def measure(command: list[str], output: Path, timeout: float) -> tuple[str, str, str, str]:
    """(wall seconds, peak RSS MiB, exit status, bytes printed)."""
    timed = ["/usr/bin/time", "-v", "-o", str(output.with_suffix(".time")), *command]
    with output.open("wb") as sink:
        process = subprocess.Popen(
            timed,
            stdout=sink,
            stderr=sink,
            stdin=subprocess.DEVNULL,
            preexec_fn=_limit_memory,
            cwd=output.parent,  # not the checkout: `-m exporter` must honour PYTHONPATH
            start_new_session=True,  # a timeout kills `time` and the exporter under it
        )
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return f"> {timeout:.0f} (killed)", "-", "timeout", f"{output.stat().st_size:,}"
    stats = dict(
        line.strip().rsplit(": ", 1)
        for line in output.with_suffix(".time").read_text().splitlines()
        if ": " in line
    )
    wall = stats.get("Elapsed (wall clock) time (h:mm:ss or m:ss)", "?")
    minutes, _, seconds = wall.rpartition(":")
    wall_seconds = float(seconds) + 60 * float(minutes.split(":")[-1] or 0)
    rss = int(stats.get("Maximum resident set size (kbytes)", "0")) / 1024
    return (
        f"{wall_seconds:.2f}",
        f"{rss:.0f}",
        str(process.returncode),
        f"{output.stat().st_size:,}",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpx-hostile-") as name:
        folder = Path(name)
        print(f"{'case':40} {'wall s':>14} {'peak MiB':>9} {'exit':>7} {'bytes out':>12}")
        for index, (case, command) in enumerate(build(folder)):
            wall, rss, status, printed = measure(command, folder / f"out-{index}.txt", args.timeout)
            print(f"{case:40} {wall:>14} {rss:>9} {status:>7} {printed:>12}", flush=True)
            first = (folder / f"out-{index}.txt").read_text(errors="replace").splitlines()[:1]
            if first:
                print(f"    {first[0][:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
