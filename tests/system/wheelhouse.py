"""A folder of wheels for ansible-core, for the container's Python (3.11, x86_64), downloaded
once with the host's pip and cached by version: the container has no network.

The download goes to a temporary folder renamed when complete, under a lock, so an interrupted
download is never used.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

from debian_root import CACHE

ANSIBLE_CORE = "2.19.14"  # the last ansible-core whose controller runs on Debian 12's Python
PYTHON = "3.11"
# Debian 12 has glibc 2.36: every manylinux wheel for x86_64 up to that runs there.
PLATFORMS = ("manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64")


def ensure_wheelhouse() -> Path:
    folder = CACHE.parent / f"wheelhouse-ansible-core-{ANSIBLE_CORE}-cp311-x86_64"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f".{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.is_dir():
            _download(folder)
    return folder


def _download(folder: Path) -> None:
    partial = folder.with_name(f".partial-{folder.name}")
    shutil.rmtree(partial, ignore_errors=True)
    argv = [sys.executable, "-m", "pip", "download", "--quiet", f"--dest={partial}"]
    argv += ["--only-binary=:all:", f"--python-version={PYTHON}", "--implementation=cp"]
    argv += [f"--platform={platform}" for platform in PLATFORMS]
    argv.append(f"ansible-core=={ANSIBLE_CORE}")
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=600, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            raise RuntimeError(f"pip download of ansible-core failed:\n{result.stderr}")
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
