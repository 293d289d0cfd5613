"""A Debian 12 root for the system test, made by mmdebstrap and cached between runs.

The root has what a libvirt host has (systemd, dbus, polkitd, libvirtd, QEMU) but not the
daemon's dependencies: their .debs wait in apt's cache, with the package lists, so that in the
container (no network) `apt-get install ./blockpull-exporter_*.deb` and the README's pip path
resolve and install them for real, and a Depends: that Debian 12 cannot satisfy fails.

Packages come from the mirror in this machine's apt sources, read at run time. The cache key
is the recipe below; a root is built into a temporary folder and renamed when complete, under a
lock, so an interrupted build is never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

CACHE = Path(os.environ.get("BPX_SYSTEM_TEST_CACHE", "/var/cache/blockpull-exporter/system-test"))
SUITE = "bookworm"
INSTALLED = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "polkitd",
    "libvirt-daemon-system",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "qemu-system-x86",
    "qemu-utils",
    "curl",
    # Most hosts have these; setting up ca-certificates alone took half a minute in each
    # container when apt pulled it in with python3.
    "python3",
    "ca-certificates",
)
# Downloaded only: the package's Depends, the README's pip path, and what the Ansible test
# installs (python3-venv for ansible-core; python3-apt, which Ansible's apt module installs, with
# lsb-release, which it recommends and the download here does not fetch on its own).
DOWNLOADED = (
    "python3-libvirt",
    "python3-prometheus-client",
    "python3-yaml",
    "python3-bcrypt",
    "python3-venv",
    "python3-wheel",
    "python3-apt",
    "lsb-release",
)
CUSTOMIZE = (
    # nspawn leaves the cgroup v1 controllers read-only: libvirt must not try to use them.
    """echo 'cgroup_controllers = [ ]' >>"$1/etc/libvirt/qemu.conf\"""",
    # The container is named by nspawn; no network, so no apt timers.
    """rm -f "$1/etc/hostname\"""",
    """chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer""",
    """chroot "$1" apt-get clean""",
    f"""chroot "$1" apt-get install --download-only -y {" ".join(DOWNLOADED)}""",
)
UNUSED_FOR = 14 * 24 * 3600  # other recipes' roots are removed after two weeks unused


def recipe_key() -> str:
    recipe = repr((SUITE, INSTALLED, DOWNLOADED, CUSTOMIZE, "v2"))
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def host_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return ""


def apt_sources() -> list[Path]:
    """This machine's apt source files, in apt's order (sources.list, then sources.list.d)."""
    candidates = [Path("/etc/apt/sources.list")]
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    return [p for p in candidates if p.is_file() and _has_entries(p)]


def _has_entries(path: Path) -> bool:
    lines = (line.strip() for line in path.read_text().splitlines())
    return any(line and not line.startswith("#") for line in lines)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_root(log: Path) -> Path:
    """The cached root for the current recipe; built (about two minutes) when missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    root = CACHE / f"debian12-{recipe_key()}"
    with _locked(CACHE / ".lock"):
        if not root.is_dir():
            _build(root, log)
        root.with_suffix(".used").touch()
        _remove_unused(keep=root)
    return root


def _build(root: Path, log: Path) -> None:
    if host_codename() != SUITE:
        raise RuntimeError(f"the system test builds its root from a Debian 12 ({SUITE}) host")
    sources = apt_sources()
    if not sources:
        raise RuntimeError("no apt sources on this machine to take the mirror from")
    partial = root.with_name(f".partial-{root.name}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={','.join(INSTALLED)}",
        "--skip=cleanup/apt",  # keep the lists and the downloaded .debs
        "--dpkgopt=force-unsafe-io",  # no fsync: a half-built root is thrown away anyway
        '--aptopt=Acquire::Languages "none"',
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-include=/usr/share/locale/locale.alias",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        *(f"--customize-hook={hook}" for hook in CUSTOMIZE),
        SUITE,
        str(partial),
        *map(str, sources),
    ]
    try:
        with log.open("w") as out:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=False
            )
        if result.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"mmdebstrap failed ({result.returncode}):\n{tail}")
        partial.rename(root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _remove_unused(keep: Path) -> None:
    now = time.time()
    for stamp in CACHE.glob("debian12-*.used"):
        other = stamp.with_suffix("")
        if other != keep and now - stamp.stat().st_mtime > UNUSED_FOR:
            shutil.rmtree(other, ignore_errors=True)
            stamp.unlink(missing_ok=True)
