"""`sim:///path/to/state.json`: the simulated host behind the CLI, kept in a JSON file.

Every call re-reads the file when another process has changed it, catches up with the clock
(so time passes while nobody looks), and a mutating call writes it back atomically
(`exporter.files.write_atomically`) under an fcntl lock on `<file>.lock`. A job's progress is
a function of time, not of who looked, so a daemon and a separate `status` process see the
same progress. A missing file is created with a demo scenario (`demo_host`).

File format: {"format": "blockpull-exporter-sim", "version": 1, "host": <a world's state>}, the
world's state as `exporter.hosts.sim.state` writes it.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

from exporter.core.clock import Clock
from exporter.core.model import DomainState, ErrorReason, HostError
from exporter.files import NotRegularFileError, read_regular_file, write_atomically
from exporter.hosts.sim import state
from exporter.hosts.sim.host import NO_LATENCY, Latency, SimulatedHost
from exporter.hosts.sim.records import GiB, MiB, SimDisk

SCHEME = "sim://"
FORMAT = "blockpull-exporter-sim"
FILE_VERSION = 1
MAX_STATE_BYTES = 256 * 1024**2  # a 4,000-disk host is a few MiB; a bigger file is not ours

TEMPLATES = "/var/lib/libvirt/images/templates"
IMAGES = "/var/lib/libvirt/images"
# Two pulls at device speed drain the demo (20 GiB) in under three minutes.
DEMO_DEVICE_SPEED = 128 * MiB


class SimStateError(ValueError):
    """The state file is not a simulated host this version can read."""


def is_sim_uri(uri: str) -> bool:
    return uri.startswith(SCHEME)


def sim_path(uri: str) -> Path:
    """The state file named by `sim:///absolute/path.json`."""
    if not is_sim_uri(uri):
        raise ValueError(f"{uri!r} is not a sim:// URI")
    rest = unquote(uri[len(SCHEME) :])
    if not rest.startswith("/") or rest == "/":
        raise ValueError(f"{uri!r}: a sim URI names an absolute file: sim:///path/to/state.json")
    return Path(rest)


def open_sim_host(uri: str, clock: Clock) -> SimFileHost:
    return SimFileHost(sim_path(uri), clock)


def demo_host(now: float) -> SimulatedHost:
    """Six running domains on template-backed overlays, as the example policies expect; the
    overlays' folder is a 100 GiB file system with 60 GiB free (the min_free guard applies).

    web-1..4: vda -> web-app-3 (1 GiB) -> os-base-12 (2 GiB).
    db-1..2:  vda -> db-2 (2 GiB) -> os-base-12 (2 GiB), and an independent data disk vdb.
    """
    host = SimulatedHost(start=now, device_speed=DEMO_DEVICE_SPEED)
    host.add_file_system(IMAGES, size=100 * GiB, free=60 * GiB)
    base = f"{TEMPLATES}/os-base-12.qcow2"
    for n in range(1, 5):
        chain = (f"{TEMPLATES}/web-app-3.qcow2", base)
        vda = SimDisk("vda", f"{IMAGES}/web-{n}.qcow2", chain, (1 * GiB, 2 * GiB))
        host.add_domain(f"web-{n}", [vda], state=DomainState.RUNNING)
    for n in range(1, 3):
        chain = (f"{TEMPLATES}/db-2.qcow2", base)
        vda = SimDisk("vda", f"{IMAGES}/db-{n}.qcow2", chain, (2 * GiB, 2 * GiB))
        vdb = SimDisk("vdb", f"{IMAGES}/db-{n}-data.qcow2")
        host.add_domain(f"db-{n}", [vda, vdb], state=DomainState.RUNNING)
    return host


class SimFileHost(SimulatedHost):
    """A SimulatedHost whose state lives in a JSON file shared between processes."""

    def __init__(
        self,
        path: Path,
        clock: Clock,
        *,
        latency: Latency = NO_LATENCY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(clock=clock, latency=latency, sleep=sleep)
        self._path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._loaded: bytes | None = None  # the file's bytes our state was last synced with
        self._lock_handle: IO[str] | None = None  # the lock file, held during an operation
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, _file_lock(self._lock_path, exclusive=True):
            if not path.exists():
                self._write(demo_host(clock.time()).to_state())
                self._loaded = None
            self._reload_locked()  # a broken file fails here, not in the daemon's loop

    @property
    def path(self) -> Path:
        return self._path

    def _begin_persistence(self, mutating: bool) -> None:
        with _unreachable_on_os_error(self._path):
            handle = self._lock_path.open("a")
        try:
            with _unreachable_on_os_error(self._path):
                fcntl.flock(handle, fcntl.LOCK_EX if mutating else fcntl.LOCK_SH)
                self._reload_locked()
        except BaseException:
            handle.close()  # closing drops the lock
            raise
        self._lock_handle = handle

    def _end_persistence(self, mutating: bool) -> None:
        handle, self._lock_handle = self._lock_handle, None
        try:
            if mutating:
                with _unreachable_on_os_error(self._path):
                    self._write(state.encode(self._parts_locked()))
        finally:
            if handle is not None:
                handle.close()

    def _reload_locked(self) -> None:
        # Unchanged bytes keep the in-memory state, which may be ahead of the file: events
        # already delivered for it are not delivered twice.
        try:
            raw = read_regular_file(self._path, max_bytes=MAX_STATE_BYTES, follow_links=False)
        except FileNotFoundError as error:
            raise HostError(ErrorReason.CONNECTION, f"{self._path} vanished") from error
        except NotRegularFileError as error:
            raise SimStateError(f"{self._path}: {error.kind}, not a regular file") from error
        if raw == self._loaded:
            return
        try:
            self._install_locked(state.decode(_parse(raw, self._path)))
        except (KeyError, TypeError, ValueError, HostError) as error:
            if isinstance(error, SimStateError):
                raise
            raise SimStateError(f"{self._path}: malformed host state: {error!r}") from error
        self._loaded = raw

    def _write(self, host_state: dict[str, Any]) -> None:
        raw = _file_bytes(host_state)
        write_atomically(self._path, raw)
        self._loaded = raw


def save_sim_host(path: Path, host: SimulatedHost) -> None:
    """Write `host` as the state file of `sim://<path>`: scenarios for tests, benchmarks and
    the fleet demo. Not for a file a running daemon uses (no lock is taken)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, _file_bytes(host.to_state()))


def _file_bytes(host_state: dict[str, Any]) -> bytes:
    return (json.dumps(_document(host_state), indent=1) + "\n").encode()


def _document(host_state: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": FILE_VERSION, "host": host_state}


def _parse(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except ValueError as error:
        raise SimStateError(f"{path}: not JSON: {error}") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SimStateError(f"{path}: not a {FORMAT} file")
    if document.get("version") != FILE_VERSION:
        raise SimStateError(
            f"{path}: version {document.get('version')!r}, this program reads {FILE_VERSION}"
        )
    host = document.get("host")
    if not isinstance(host, dict):
        raise SimStateError(f"{path}: no host state")
    return host


@contextmanager
def _unreachable_on_os_error(path: Path) -> Iterator[None]:
    """The file is this host's libvirtd: when it cannot be read or written (too many open
    files, a full disk), the host is unreachable, which the daemon survives and retries."""
    try:
        yield
    except NotRegularFileError:
        raise
    except OSError as error:
        raise HostError(ErrorReason.CONNECTION, f"{path}: {error.strerror or error}") from error


@contextmanager
def _file_lock(path: Path, *, exclusive: bool) -> Iterator[None]:
    # A separate lock file: os.replace swaps the state file's inode, which would drop a lock
    # taken on the state file itself.
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
