"""A real etcd cluster on loopback for the fleet tests, the fleet benchmark and the demo.

`etcd_cluster(workdir)` starts `size` members of Debian's etcd (etcd-server) on free loopback
ports, each with its own data dir under `workdir`, waits until every member is healthy, and
kills them all and removes their data on the way out, whatever happened. `etcd gateway`
(etcd's own TCP proxy) gives the daemons one address that fails over between members, as an
operator would run it on each host. The cluster can find its leader, stop and restart a
member, and freeze (SIGSTOP) and thaw (SIGCONT) every member.

No libvirt and no exporter import here: the benchmark and the demo use it as it is.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.loopback import free_port

ETCD = "etcd"
START_TIMEOUT = 30.0
START_ATTEMPTS = 3  # free_port() races with every other process on the machine
STOP_TIMEOUT = 10.0
REQUEST_TIMEOUT = 2.0


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def post(self, path: str, body: object) -> dict[str, object] | None:
        """One call of etcd's JSON gateway API on this member; None when it does not answer."""
        request = urllib.request.Request(
            self.client_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                answer = json.loads(response.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None
        return answer if isinstance(answer, dict) else None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=REQUEST_TIMEOUT) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False


@dataclass
class EtcdCluster:
    workdir: Path
    size: int = 3
    members: list[EtcdMember] = field(default_factory=list)
    gateway: subprocess.Popen[bytes] | None = None
    gateway_port: int = 0
    token: str = field(default_factory=lambda: f"blockpull-test-{uuid.uuid4().hex[:8]}")

    # -- addresses ------------------------------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        """The tooz URL through the gateway: survives the loss of any one member."""
        return f"etcd3+http://127.0.0.1:{self.gateway_port}"

    def member_url(self, member: EtcdMember) -> str:
        return f"etcd3+http://127.0.0.1:{member.client_port}"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        for _ in range(START_ATTEMPTS):
            self._launch_all()
            if self._wait(lambda: all(m.healthy() for m in self.members), START_TIMEOUT):
                self._start_gateway()
                return
            self.close()
        raise RuntimeError(f"etcd did not become healthy:\n{self.logs()}")

    def _launch_all(self) -> None:
        self.members = [
            EtcdMember(
                f"e{i}",
                free_port(),
                free_port(),
                self.workdir / f"etcd-e{i}",
                self.workdir / f"etcd-e{i}.log",
            )
            for i in range(self.size)
        ]
        for member in self.members:
            shutil.rmtree(member.data_dir, ignore_errors=True)
            self._launch(member, "new")

    def _launch(self, member: EtcdMember, state: str) -> None:
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        command = [
            ETCD,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={cluster}",
            f"--initial-cluster-state={state}",
            f"--initial-cluster-token={self.token}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        log = member.log_path.open("ab")
        member.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
        log.close()

    def _start_gateway(self) -> None:
        for _ in range(START_ATTEMPTS):
            self.gateway_port = free_port()
            endpoints = ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)
            log = (self.workdir / "etcd-gateway.log").open("ab")
            self.gateway = subprocess.Popen(
                [
                    ETCD,
                    "gateway",
                    "start",
                    f"--listen-addr=127.0.0.1:{self.gateway_port}",
                    f"--endpoints={endpoints}",
                    "--retry-delay=1s",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
            log.close()
            probe = EtcdMember("gateway", self.gateway_port, 0, self.workdir, self.workdir)
            if self._wait(probe.healthy, START_TIMEOUT / 3):
                return
            _kill(self.gateway)
        raise RuntimeError(f"etcd gateway did not answer:\n{self.logs()}")

    def close(self) -> None:
        _kill(self.gateway)
        self.gateway = None
        for member in self.members:
            if member.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    member.process.send_signal(signal.SIGCONT)  # a frozen member cannot die
            _kill(member.process)
            shutil.rmtree(member.data_dir, ignore_errors=True)

    # -- faults ---------------------------------------------------------------------------------

    def leader(self) -> EtcdMember:
        """The member that leads now, as the members themselves report it."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for member in self.members:
                status = member.post("/v3/maintenance/status", {}) if member.running() else None
                if status is None:
                    continue
                header = status.get("header")
                if isinstance(header, dict) and header.get("member_id") == status.get("leader"):
                    return member
            time.sleep(0.1)
        raise RuntimeError(f"no etcd leader within {START_TIMEOUT:.0f} s:\n{self.logs()}")

    def stop(self, member: EtcdMember) -> None:
        _kill(member.process)

    def restart(self, member: EtcdMember) -> None:
        """Start a stopped member again on its data dir; waits until it is healthy."""
        assert not member.running()
        self._launch(member, "existing")
        if not self._wait(member.healthy, START_TIMEOUT):
            raise RuntimeError(f"etcd {member.name} did not come back:\n{self.logs()}")

    def freeze(self) -> None:
        for member in self.members:
            if member.process is not None:
                member.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for member in self.members:
            if member.process is not None:
                member.process.send_signal(signal.SIGCONT)

    def healthy(self) -> bool:
        return all(m.healthy() for m in self.members if m.running())

    def logs(self, lines: int = 20) -> str:
        parts = []
        for path in sorted(self.workdir.glob("etcd-*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    @staticmethod
    def _wait(ready: object, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():  # type: ignore[operator]
                return True
            time.sleep(0.1)
        return False


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def etcd_cluster(workdir: Path, size: int = 3) -> Iterator[EtcdCluster]:
    """A started cluster of `size` members and a gateway; torn down on the way out."""
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = EtcdCluster(workdir, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
