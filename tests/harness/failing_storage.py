"""Storage that fails under a pull: a backing store that dies (qemu-nbd killed) and a file
system that fills (a small tmpfs). Both clean up after themselves."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.loopback import free_port, listening
from harness.waiting import wait_for

NBD_CLIENTS = 8  # qemu-img probes the export while QEMU holds its own connection


@dataclass
class NbdServer:
    """qemu-nbd serving raw `image` as nbd://127.0.0.1:`port`/`name`, persistent (-t), for
    several clients. `kill()` is how a storage server crashes; `start()` again serves the same
    URL, so the overlay above it works again."""

    image: Path
    name: str = "base"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nbd://127.0.0.1:{self.port}/{self.name}"

    def start(self, timeout: float = 15.0) -> None:
        """Returns once it listens; fails with qemu-nbd's own words if it exits."""
        command = ["qemu-nbd", "-f", "raw", "-p", str(self.port), "-b", "127.0.0.1", "-t"]
        command += [f"--shared={NBD_CLIENTS}", "-x", self.name, str(self.image)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.process = process

        def up() -> bool:
            if process.poll() is not None:
                stderr = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"qemu-nbd exited: {stderr}")
            return listening(self.port)

        if not wait_for(up, timeout, 0.05):
            self.kill()
            raise RuntimeError(f"qemu-nbd does not listen on 127.0.0.1:{self.port}")

    def kill(self) -> None:
        """SIGKILL, as a crashing storage server would go; a stopped server is fine."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A small tmpfs (mode 0755: QEMU runs as libvirt-qemu) unmounted on the way out."""
    mountpoint.mkdir(mode=0o755)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)],
        check=True,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
