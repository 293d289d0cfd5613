"""The guards under the systemd unit's sandbox, as far as this machine can build it without a
systemd: a private mount namespace with the whole tree read-only (ProtectSystem=strict), /home
hidden (ProtectHome=yes), and the daemon's side run as an unprivileged user (User=).

- The free space of an image folder, and of a file system mounted below it, is measured there.
- Holds placed by root in the daemon user's 0700 state directory are read by that user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.failing_storage import tmpfs
from harness.libvirt_lab import Lab

REPO = Path(__file__).resolve().parents[2]
DAEMON_USER = "nobody"  # stands for the unit's own user: not root, in no group of ours


def sandboxed(code: str, package: Path) -> str:
    """Run `code` (Python) as DAEMON_USER in a read-only mount namespace; its stdout.

    With Debian's python3 and the package copied to `package`, as the unit runs the daemon: the
    checkout and its venv may sit where DAEMON_USER cannot look (a 0700 `mktemp -d`)."""
    script = (
        "mount --make-rprivate / && mount -o remount,bind,ro / && "
        "mount -t tmpfs -o ro tmpfs /home && "
        f"exec setpriv --reuid={DAEMON_USER} --regid=nogroup --clear-groups "
        '/usr/bin/python3 -c "$0"'
    )
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, code],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package)},
        timeout=60,
    )
    if done.returncode != 0:
        raise AssertionError(f"sandboxed run failed: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture(scope="module")
def package() -> Iterator[Path]:
    """The `exporter` package where every user may read it (0755 under /var/tmp)."""
    folder = Path(tempfile.mkdtemp(prefix="bpx-test-package-", dir="/var/tmp"))
    try:
        folder.chmod(0o755)
        shutil.copytree(
            REPO / "exporter", folder / "exporter", ignore=shutil.ignore_patterns("__pycache__")
        )
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def needs_root_and_namespaces() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("needs root, unshare and setpriv to build the sandbox")


@pytest.fixture
def daemon_state_dir() -> Iterator[Path]:
    """A state directory as systemd makes it: 0700, owned by the daemon's user."""
    state = Path("/var/tmp") / f"bpx-test-{uuid.uuid4().hex[:8]}-state"
    state.mkdir(mode=0o700)
    shutil.chown(state, DAEMON_USER, "nogroup")
    yield state
    shutil.rmtree(state, ignore_errors=True)


def test_free_space_is_measured_inside_the_sandbox_as_the_daemons_user(
    domains: Lab, package: Path
) -> None:
    with tmpfs(domains.folder / "small", "64M") as small:
        code = (
            "import json; from exporter.hosts.local_fs import LocalFileSystems;"
            f"found = LocalFileSystems().measure([{str(domains.folder)!r}, {str(small)!r},"
            " '/home/nobody-images']);"
            "print(json.dumps({d: getattr(f, 'mountpoint', None) or f.error "
            "for d, f in found.items()}))"
        )
        found = json.loads(sandboxed(code, package))
    assert found[str(small)] == str(small)  # its own file system, by its mount point
    assert found[str(domains.folder)] == "/"
    assert "No such file or directory" in found["/home/nobody-images"]  # ProtectHome hides it


def test_holds_placed_by_root_are_read_by_the_daemons_user(
    daemon_state_dir: Path, package: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "hold", "--state.dir", str(daemon_state_dir),
         "--reason", "backup", "web-*"],
        capture_output=True, text=True, check=False, cwd=REPO,
        preexec_fn=lambda: os.umask(0o077),  # root's umask must not matter
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    code = (
        "from pathlib import Path; from exporter.daemon.hold_store import HoldStore;"
        f"holds = HoldStore(Path({str(daemon_state_dir)!r})).read();"
        "print(holds.error or ','.join(h.domains for h in holds.holds))"
    )
    assert sandboxed(code, package).strip() == "web-*"
    owner = (daemon_state_dir / "holds" / "holds.json").stat()
    assert owner.st_uid == daemon_state_dir.stat().st_uid  # the daemon's, not root's
