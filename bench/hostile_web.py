"""Hostile clients against the real daemon's web endpoint, on loopback only (issue 13).

Runs `blockpull-exporter run` on the simulated host under a 1,024 open-file limit and measures,
for each attack, the daemon's peak RSS, threads and open files, how scrapes fared during the
attack, and how soon /metrics answers once it stops. Every loop is bounded in count and time.

    .venv/bin/python bench/hostile_web.py                 # this tree
    .venv/bin/python bench/hostile_web.py --code DIR      # another tree's exporter/ (before/after)
    .venv/bin/python bench/hostile_web.py --cases idle,trickle

Cases: idle (1,000 connections that send nothing), trickle (1,000 connections sending one byte
of a request head per second), body (a GET whose body is a second request), auth (8 threads
guessing a password, plus the timing of unknown vs known users), rules (render time and series
for 1,000 to 100,000 policy rules, in process).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import resource
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "example.yaml"
CONNECTIONS = 1000
ATTACK_SECONDS = 12.0
SCRAPE_TIMEOUT = 1.0
NOFILE = 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    auth: tuple[str, str] | None = None

    def stats(self) -> dict[str, float]:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines())
        stat = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return {
            "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
            "hwm_mib": int(fields["VmHWM"].split()[0]) / 1024,
            "threads": int(fields["Threads"]),
            "fds": sum(1 for _ in Path(f"/proc/{self.process.pid}/fd").iterdir()),
            "cpu_s": (int(stat[11]) + int(stat[12])) / CLOCK_TICKS,
        }

    def scrape(self, timeout: float = SCRAPE_TIMEOUT, auth: tuple[str, str] | None = None) -> float:
        """Seconds a GET /metrics took; raises on failure or timeout."""
        auth = auth or self.auth
        head = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        if auth is not None:
            head += f"Authorization: Basic {base64.b64encode(':'.join(auth).encode()).decode()}\r\n"
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(head.encode() + b"\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
                if time.monotonic() - start > timeout:
                    raise TimeoutError("scrape too slow")
        if not reply.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(reply[:40])
        return time.monotonic() - start


@contextlib.contextmanager
def daemon(
    code: Path, web_config: str | None = None, auth: tuple[str, str] | None = None
) -> Iterator[Daemon]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        args = [
            sys.executable, "-m", "exporter", "run",
            "--policy.file", str(POLICY),
            "--libvirt.uri", f"sim://{work}/host.json",
            "--state.dir", str(work),
            "--web.listen-address", f"127.0.0.1:{port}",
        ]  # fmt: skip
        if web_config is not None:
            (work / "web.yml").write_text(web_config)
            args += ["--web.config.file", str(work / "web.yml")]
        log = work / "daemon.log"
        env = {**os.environ, "PYTHONPATH": str(code)}
        with log.open("wb") as out:
            process = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=code,  # `-m` puts the working directory first on sys.path
                preexec_fn=limit_files,
            )
        running = Daemon(process, port, log, auth)
        try:
            wait_until_serving(running)
            yield running
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(d: Daemon) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if d.process.poll() is not None:
            raise RuntimeError(f"daemon exited: {d.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            d.scrape()
            return
        time.sleep(0.1)
    raise RuntimeError("daemon never answered")


@dataclass
class Observed:
    peak: dict[str, float] = field(default_factory=dict)
    scrapes_ok: list[float] = field(default_factory=list)
    scrapes_failed: int = 0

    def sample(self, d: Daemon) -> None:
        if d.process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            for key, value in d.stats().items():
                self.peak[key] = max(self.peak.get(key, value), value)

    def try_scrape(self, d: Daemon) -> None:
        try:
            self.scrapes_ok.append(d.scrape())
        except (OSError, ConnectionError):
            self.scrapes_failed += 1


def recovery(d: Daemon) -> str:
    """How soon a scrape succeeds once the attack stopped (each try waits at most 1 s)."""
    start = time.monotonic()
    while time.monotonic() - start < 10:
        if d.process.poll() is not None:
            return f"daemon DEAD (exit {d.process.returncode})"
        with contextlib.suppress(OSError, ConnectionError):
            took = d.scrape()
            return f"{time.monotonic() - start:.2f} s (that scrape {took * 1000:.0f} ms)"
    return "no answer within 10 s"


def report(name: str, d: Daemon, before: dict[str, float], seen: Observed, extra: str) -> None:
    during = seen.scrapes_ok
    scrapes = f"{len(during)}/{len(during) + seen.scrapes_failed} ok" + (
        f", max {max(during) * 1000:.0f} ms" if during else ""
    )
    print(
        f"{name}: idle RSS {before['rss_mib']:.1f} MiB, {before['threads']:.0f} threads, "
        f"{before['fds']:.0f} fds | peak RSS {seen.peak.get('hwm_mib', 0):.1f} MiB, "
        f"{seen.peak.get('threads', 0):.0f} threads, {seen.peak.get('fds', 0):.0f} fds | "
        f"scrapes during: {scrapes} | after: {recovery(d)} | {extra}"
    )
    errors = [line for line in d.log.read_text(errors="replace").splitlines() if "rror" in line]
    print(
        f"  log lines with 'rror': {len(errors)}"
        + (f"; first: {errors[0][:160]}" if errors else "")
    )


def connect_many(port: int, count: int) -> tuple[list[socket.socket], int]:
    """`count` connections started at once; also how many the kernel completed within 5 s."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))  # in progress; the kernel completes it
        socks.append(sock)
    pending = set(socks)
    deadline = time.monotonic() + 5
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], list(pending)[:500], [], 0.1)
        pending.difference_update(writable)
    return socks, count - len(pending)


def attack(d: Daemon, trickle: bytes | None) -> tuple[Observed, str]:
    """CONNECTIONS connections for ATTACK_SECONDS; with `trickle`, one byte each per second."""
    seen = Observed()
    socks, established = connect_many(d.port, CONNECTIONS)
    opened = {id(s): time.monotonic() for s in socks}
    lifetimes: list[float] = []
    alive = list(socks)
    start = time.monotonic()
    step = 0
    try:
        while time.monotonic() - start < ATTACK_SECONDS:
            for sock in list(alive):
                try:
                    if trickle is not None:
                        sock.send(trickle[step % len(trickle) : step % len(trickle) + 1])
                    elif sock.recv(1, socket.MSG_PEEK) == b"":
                        raise ConnectionResetError
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    lifetimes.append(time.monotonic() - opened[id(sock)])
                    alive.remove(sock)
            step += 1
            seen.sample(d)
            seen.try_scrape(d)
            time.sleep(max(0.0, start + step - time.monotonic()))
    finally:
        for sock in socks:
            sock.close()
    cut = (
        f"{established} connected within 5 s; server closed {len(lifetimes)} of {CONNECTIONS} "
        f"within {ATTACK_SECONDS:.0f} s"
        + (f" (median after {statistics.median(lifetimes):.1f} s)" if lifetimes else "")
    )
    return seen, cut


def case_flood(code: Path, trickle: bool) -> None:
    with daemon(code) as d:
        before = d.stats()
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 64 if trickle else None
        seen, cut = attack(d, head)
        report("trickle" if trickle else "idle", d, before, seen, cut)


def case_body(code: Path) -> None:
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    request = (
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + str(len(smuggled)).encode()
        + b"\r\n\r\n"
        + smuggled
    )
    with daemon(code) as d, socket.create_connection(("127.0.0.1", d.port), timeout=2) as sock:
        sock.sendall(request)
        replies = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                replies += chunk
        statuses = re.findall(rb"HTTP/1\.1 \d\d\d [^\r]*", replies)
        print(f"body: GET with a request as its body -> {len(statuses)} responses: {statuses}")


def case_auth(code: Path) -> None:
    users = {
        "alice": bcrypt.hashpw(b"right", bcrypt.gensalt(10)).decode(),
        "bob": bcrypt.hashpw(b"right", bcrypt.gensalt(12)).decode(),
    }
    config = "basic_auth_users:\n" + "".join(f"  {u}: '{h}'\n" for u, h in users.items())
    with daemon(code, config, auth=("alice", "right")) as d:
        timing = {
            who: statistics.median(failed_check_seconds(d, who) for _ in range(7))
            for who in ("nobody", "alice", "bob")
        }
        print(
            "auth timing of a 401 (median of 7): "
            + ", ".join(f"{who} {t * 1000:.0f} ms" for who, t in timing.items())
            + " (alice cost 10, bob cost 12, nobody unknown)"
        )
        before = d.stats()
        seen = Observed()
        stop = threading.Event()
        guesses = [0]
        threads = [
            threading.Thread(target=guess, args=(d, stop, guesses), daemon=True) for _ in range(8)
        ]
        for t in threads:
            t.start()
        start = time.monotonic()
        cpu0 = d.stats()["cpu_s"]
        while time.monotonic() - start < ATTACK_SECONDS:
            seen.sample(d)
            seen.try_scrape(d)
            time.sleep(0.25)
        cores = (d.stats()["cpu_s"] - cpu0) / (time.monotonic() - start)
        stop.set()
        for t in threads:
            t.join(5)
        median = statistics.median(seen.scrapes_ok) * 1000 if seen.scrapes_ok else float("nan")
        report(
            "auth brute force",
            d,
            before,
            seen,
            f"{guesses[0] / ATTACK_SECONDS:.0f} guesses/s answered, daemon used {cores:.2f} "
            f"cores, valid scrape median {median:.0f} ms",
        )


def failed_check_seconds(d: Daemon, user: str) -> float:
    start = time.monotonic()
    with contextlib.suppress(ConnectionError):
        d.scrape(timeout=5, auth=(user, "wrong"))
    return time.monotonic() - start


def guess(d: Daemon, stop: threading.Event, guesses: list[int]) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError, ConnectionError):
            d.scrape(timeout=5, auth=("alice", f"guess{time.monotonic()}"))
        guesses[0] += 1


def case_rules(code: Path) -> None:
    sys.path.insert(0, str(code))
    from exporter.core.decisions import Plan
    from exporter.daemon.snapshot import Counters, Histogram, Snapshot
    from exporter.metrics.renderer import render
    from exporter.policy.values import Budget

    for rules in (1_000, 10_000, 100_000):
        snapshot = Snapshot(
            taken_at=0.0,
            libvirt_up=True,
            plan=Plan((), (), Budget(bandwidth=None, max_concurrent=2), frozenset(), None),
            jobs=(),
            counters=Counters(),
            backing_dependents={},
            window_names=(),
            rule_names=tuple(f"rule-{i}" for i in range(rules)),
            policy_source="bench",
            policy_reload_ok=True,
            policy_reload_success_at=0.0,
            policy_error=None,
            reconcile_duration=Histogram((float("inf"),), (0,), 0.0, 0),
            last_reconcile_success_at=0.0,
        )
        start = time.process_time()
        body = render(snapshot, "bench")
        took = time.process_time() - start
        series = body.count(b"\nblockpull_disks{")
        print(
            f"rules {rules}: blockpull_disks has {series} series, body {len(body) / 1e6:.1f} MB, "
            f"render {took * 1000:.0f} ms CPU ({took / rules * 1e6:.1f} us per rule)"
        )


CASES: dict[str, Callable[[Path], None]] = {
    "idle": lambda code: case_flood(code, trickle=False),
    "trickle": lambda code: case_flood(code, trickle=True),
    "body": case_body,
    "auth": case_auth,
    "rules": case_rules,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=REPO, help="tree whose exporter/ to run")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated")
    args = parser.parse_args()
    # The attacker needs its own thousand sockets.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * CONNECTIONS)), hard))
    for name in args.cases.split(","):
        CASES[name](args.code.resolve())


if __name__ == "__main__":
    main()
