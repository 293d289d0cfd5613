"""Files the daemon keeps for itself (its state file, the simulated host's file): written
atomically and privately, read without following a link or blocking on a special file.

The bottom layer: it imports nothing from the package, and every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIRECTORY = 0o700
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFileError(OSError):
    """The path is a directory, a FIFO, a symbolic link, a device or a socket."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(errno.EINVAL, f"{kind}, not a regular file", str(path))
        self.kind = kind


def write_atomically(path: Path, data: bytes, *, mode: int = PRIVATE_FILE) -> None:
    """Replace `path` with `data` at once: a reader sees the old file or the new one, never half.

    The temp file is made by mkstemp beside `path` (an unguessable name, created exclusively, so
    never through a symbolic link), gets `mode` whatever the umask, is fsynced, then renamed
    over `path` (a link there is replaced, not followed). On any failure the temp file is
    removed and the error raised.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        temp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def make_private_directory(path: Path) -> None:
    """Create `path` (and missing parents) with mode 0700 whatever the umask.

    A directory that exists keeps its mode: it may be shared, such as /tmp.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=PRIVATE_DIRECTORY)
    except FileExistsError:
        return
    path.chmod(PRIVATE_DIRECTORY)  # mkdir's mode is masked by the umask


def read_regular_file(path: Path) -> bytes:
    """The content of `path` if it is a regular file; raises NotRegularFileError otherwise.

    Opened without following a symbolic link and without blocking (a FIFO would wait for a
    writer forever), then checked with fstat, so a file swapped in between is caught too.
    FileNotFoundError and other OSErrors are raised as they are.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO):  # a link (O_NOFOLLOW), a socket
            raise NotRegularFileError(path, _kind(os.lstat(path).st_mode)) from error
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, _kind(mode))
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")
