"""Read a configuration file (policy, web config, certificates): regular files only, never
blocking, at most 1 MiB, with an error that says why in words an operator reads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from exporter.files import FileTooLargeError, read_at_most, read_regular_file

MAX_FILE_BYTES = 1024 * 1024  # a policy or web config is a few KiB; 1 MiB is plenty
_LIMIT = f"larger than {MAX_FILE_BYTES // 1024**2} MiB, the limit for a configuration file"


class UnreadableFileError(Exception):
    """Why a file could not be read; the message does not name the file (callers do)."""


def read_config_file(path: str | os.PathLike[str]) -> bytes:
    """The whole content of the regular file at `path`, at most MAX_FILE_BYTES.

    Raises UnreadableFileError for any OS error (missing, permissions, too many open files), for
    anything but a regular file, and for a file over the limit. A link is followed: config
    management often links the file in place.
    """
    try:
        return read_regular_file(Path(path), max_bytes=MAX_FILE_BYTES)
    except FileTooLargeError:
        raise UnreadableFileError(_LIMIT) from None
    except OSError as error:
        raise UnreadableFileError(f"cannot read: {error.strerror or error}") from None


def read_config_stream(stream: BinaryIO) -> bytes:
    """At most MAX_FILE_BYTES from `stream` (standard input)."""
    try:
        return read_at_most(stream, MAX_FILE_BYTES, Path("-"))
    except FileTooLargeError:
        raise UnreadableFileError(_LIMIT) from None
