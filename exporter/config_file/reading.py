"""Read a configuration file safely: regular files only, never blocking, never too much.

A FIFO put in place of a config file would block `open()` forever (and with it the daemon's
loop and its signal handling), a link to /dev/zero would be read until memory runs out. So the
file is opened non-blocking, checked with fstat on the opened descriptor (no race with a rename),
and read up to a size limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

MAX_FILE_BYTES = 1024 * 1024  # a policy or web config is a few KiB; 1 MiB is plenty

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class UnreadableFileError(Exception):
    """Why a file could not be read; the message does not name the file (callers do)."""


def read_config_file(path: str | os.PathLike[str]) -> bytes:
    """The whole content of the regular file at `path`, at most MAX_FILE_BYTES.

    Raises UnreadableFileError for any OS error (missing, permissions, too many open files), for
    anything but a regular file, and for a file over the limit.
    """
    try:
        fd = os.open(Path(path), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        raise UnreadableFileError(f"cannot read: {error.strerror or error}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise UnreadableFileError(f"cannot read: {kind}, not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            return read_config_stream(file)
    except OSError as error:
        raise UnreadableFileError(f"cannot read: {error.strerror or error}") from None
    finally:
        os.close(fd)


def read_config_stream(stream: BinaryIO) -> bytes:
    """At most MAX_FILE_BYTES from `stream` (standard input, an opened file)."""
    data = stream.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise UnreadableFileError(
            f"larger than {MAX_FILE_BYTES // 1024**2} MiB, the limit for a configuration file"
        )
    return data
