"""Files from disk, read and written safely: the one reader of the daemon's files (policy, web
config, certificates, the state file, the simulated host's file) and the one atomic writer.

A FIFO put in place of a file would block `open()` forever (and with it the daemon's loop and
its signal handling), a link to /dev/zero would be read until memory runs out. So a file is
opened non-blocking, checked with fstat on the opened descriptor (no race with a rename), and
read up to a size limit. The bottom layer: it imports nothing from the package.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

PRIVATE_FILE = 0o600
PRIVATE_DIRECTORY = 0o700
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class NotRegularFileError(OSError):
    """The path is a directory, a FIFO, a symbolic link, a device or a socket."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(errno.EINVAL, f"{kind}, not a regular file", str(path))
        self.kind = kind


class FileTooLargeError(OSError):
    """The file holds more than the caller's limit."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(errno.EFBIG, f"larger than {_size(limit)}", str(path))
        self.limit = limit


def _size(limit: int) -> str:
    return f"{limit // 1024**2} MiB" if limit % 1024**2 == 0 else f"{limit} bytes"


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


def read_regular_file(path: Path, *, max_bytes: int, follow_links: bool = True) -> bytes:
    """The content of `path` if it is a regular file of at most `max_bytes`.

    Raises NotRegularFileError for anything else (with `follow_links=False`, a symbolic link
    too: files the daemon writes itself are never links), FileTooLargeError over the limit, and
    FileNotFoundError and other OSErrors as they are.
    """
    flags = _READ_FLAGS if follow_links else _READ_FLAGS | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
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
        return read_at_most(handle, max_bytes, path)


def read_at_most(stream: BinaryIO, max_bytes: int, path: Path) -> bytes:
    """All of `stream` (an opened file, standard input); FileTooLargeError past `max_bytes`."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLargeError(path, max_bytes)
    return data


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
