"""A Debian root booted with systemd-nspawn: its own systemd as PID 1, on a throwaway overlay.

`--volatile=overlay` keeps the cached root read-only under a tmpfs, so every boot starts from
the same state and leaves nothing behind; `--private-network` gives it only a loopback. The
build machines have no systemd as PID 1 and no machined, so the container is not registered
(`--register=no --keep-unit`) and commands reach it with nsenter into its PID 1's namespaces.

With --keep-unit nspawn gives the container the cgroup nspawn runs in; on these machines that
is the root of the name=systemd and unified hierarchies, the same for every container, and two
containers' systemd then kill each other's units. So nspawn starts in a cgroup of its own,
removed after it exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

CONTAINER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# The hierarchies nspawn gives a container a subtree of (cgroup v1's name=systemd, and v2).
HIERARCHIES = (
    Path("/sys/fs/cgroup/systemd"),
    Path("/sys/fs/cgroup/unified"),
    Path("/sys/fs/cgroup"),
)


class ContainerError(AssertionError):
    """A command in the container failed; the message has its output."""


class Container:
    def __init__(self, root: Path, name: str, console_log: Path) -> None:
        self.root = root
        self.name = name
        self.console_log = console_log
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._leader = 0
        self._cgroups: list[Path] = []

    def boot(self, timeout: float = 90.0) -> None:
        argv = [
            "systemd-nspawn",
            "--boot",
            "--volatile=overlay",
            "--private-network",
            "--register=no",
            "--keep-unit",
            "--link-journal=no",
            "--console=read-only",
            f"--directory={self.root}",
            f"--machine={self.name}",
        ]
        self._cgroups = own_cgroups(self.name)
        enter = "".join(f'echo $$ >"{c}/cgroup.procs" && ' for c in self._cgroups)
        wrapper = ["sh", "-c", f'{enter}exec "$@"', "sh", *argv]
        with self.console_log.open("wb") as log:
            self._nspawn = subprocess.Popen(
                wrapper, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        self._leader = self._wait_for_leader(deadline)
        while True:
            state = self.run("systemctl is-system-running --wait", check=False, timeout=timeout)
            if state.stdout.strip() in {"running", "degraded"}:
                break
            if time.monotonic() > deadline:
                raise ContainerError(f"{self.name} did not boot: {state.stdout}{self.console()}")
            time.sleep(0.2)

    def _wait_for_leader(self, deadline: float) -> int:
        assert self._nspawn is not None
        children = Path(f"/proc/{self._nspawn.pid}/task/{self._nspawn.pid}/children")
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited: {self.console()}")
            with contextlib.suppress(OSError):
                for pid in children.read_text().split():
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
            time.sleep(0.05)
        raise ContainerError(f"no systemd in {self.name}: {self.console()}")

    def run(
        self, script: str, *, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a bash script as root inside the container, with a clean environment."""
        argv = [
            "nsenter",
            f"--target={self._leader}",
            "--all",
            "env",
            "-i",
            f"PATH={CONTAINER_PATH}",
            "LANG=C.UTF-8",
            "DEBIAN_FRONTEND=noninteractive",
            "SYSTEMD_COLORS=0",
            "bash",
            "-euo",
            "pipefail",
            "-c",
            script,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise ContainerError(
                f"in {self.name}, exit {result.returncode}: {script}\n"
                f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
            )
        return result

    def path(self, inside: str) -> Path:
        """A path inside the container as the host reaches it (through its PID 1's root)."""
        return Path(f"/proc/{self._leader}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str) -> None:
        self.path(inside).write_text(text)

    def console(self) -> str:
        with contextlib.suppress(OSError):
            return "\n--- console (last 40 lines)\n" + "\n".join(
                self.console_log.read_text(errors="replace").splitlines()[-40:]
            )
        return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Power off (SIGTERM to nspawn); past the timeout, kill the container's PID 1, which
        ends every process in its PID namespace. nspawn then removes its mounts and exits."""
        nspawn = self._nspawn
        if nspawn is None:
            return
        if nspawn.poll() is None:
            nspawn.send_signal(signal.SIGTERM)
            try:
                nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    if self._leader:
                        os.kill(self._leader, signal.SIGKILL)
                try:
                    nspawn.wait(10)
                except subprocess.TimeoutExpired:
                    nspawn.kill()
                    nspawn.wait(10)
        self._nspawn = None
        for cgroup in self._cgroups:
            remove_cgroup(cgroup)
        self._cgroups = []


def own_cgroups(name: str) -> list[Path]:
    """A new cgroup named for the container in each hierarchy nspawn uses here."""
    made = []
    for hierarchy in HIERARCHIES:
        if (hierarchy / "cgroup.procs").is_file():
            cgroup = hierarchy / "blockpull-exporter-tests" / name
            cgroup.mkdir(parents=True)
            made.append(cgroup)
    return made


def remove_cgroup(cgroup: Path) -> None:
    """Remove an empty cgroup and what the container made under it, deepest first."""
    found = [Path(d) for d, _, _ in os.walk(cgroup)]
    for directory in sorted(found, key=lambda d: len(d.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        cgroup.parent.rmdir()  # the shared parent, once no other container is left in it
