"""System test: the Debian package, and the README's pip path, each installed into a Debian 12
container that runs its own systemd, dbus, polkitd and libvirtd, and checked end to end.

Needs root, systemd-nspawn, mmdebstrap and Debian's packaging tools (scripts/setup installs
them). Without them the tests skip, unless the environment variable CI is set: then they fail.
Each install boots its own container (a unique machine name, a throwaway overlay) and stops it
afterwards, also when a test fails; the root it boots is cached (debian_root.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import debian_root
import pytest
from nspawn import Container
from readme_blocks import install_script
from service import UNIT, Service

HERE = Path(__file__).parent
REPO = HERE.parents[1]
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "mmdebstrap": "mmdebstrap",
    "nsenter": "util-linux",
    "dpkg-buildpackage": "dpkg-dev",
}
# The policy the README's policy step installs: pulls of the test's domains at 4 MiB/s.
GOOD_POLICY = """\
version: 1
defaults:
  bandwidth: 4MiB/s
  max_concurrent: 2
rules:
  - name: system-test
    domains: ["bpx-*"]
"""
# README.md sections whose code blocks make each install, in order.
INSTALLS = {
    "package": (
        "#### The package",
        "#### Access to libvirt",
        "#### The policy",
        "#### Settings and start",
    ),
    "pip": (
        "#### Without the package: pip",
        "#### Access to libvirt",
        "##### Without polkit",
        "#### The policy",
        "#### Settings and start",
    ),
}
PACKAGE_DIR = "/root/download"  # where the .deb was copied to
CLONE_DIR = "/root/blockpull-exporter"  # a clone of this repository


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.system)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries the end of the unit's journal."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    funcargs = getattr(item, "funcargs", {})
    service = funcargs.get("service") or funcargs.get("installed")
    if report.when == "call" and report.failed and isinstance(service, Service):
        with contextlib.suppress(Exception):
            tail = "\n".join(service.journal().splitlines()[-60:])
            report.sections.append((f"journal of {UNIT} (last 60 lines)", tail))


def require_system_environment() -> None:
    problems = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
    if os.geteuid() != 0:
        problems.append("root")
    if not problems:
        return
    message = "the system test needs " + ", ".join(problems) + " (scripts/setup)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def build_deb() -> Path:
    result = subprocess.run(
        [str(REPO / "scripts" / "build-deb")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build-deb failed:\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def source_files(repo: Path) -> list[str]:
    """The files of a clone: tracked and untracked, not ignored, that exist."""
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (repo / name).is_file()]


def install(container: Container, how: str, deb: Future[Path]) -> Service:
    """Boot the container and run the README's steps for this install in it."""
    container.boot()
    if how == "package":
        workdir = PACKAGE_DIR
        built = deb.result()
        container.path(workdir).mkdir(parents=True)
        shutil.copy(built, container.path(workdir) / built.name)
    else:
        workdir = CLONE_DIR
        for name in source_files(REPO):
            target = container.path(workdir) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target)
    container.write(f"{workdir}/policy.yml", GOOD_POLICY)
    container.run(f"cd {workdir}\n{install_script(*INSTALLS[how])}", timeout=300)
    return Service(container, how)


@dataclass
class Installs:
    deb: Future[Path]
    services: dict[str, Future[Service]]


@pytest.fixture(scope="session")
def installs() -> Iterator[Installs]:
    """Both installs, prepared side by side while the tests of the first one run. Every
    container is stopped and every temporary folder removed at the end, also on failure."""
    require_system_environment()
    folder = Path(tempfile.mkdtemp(prefix="bpx-system-"))
    containers: dict[str, Container] = {}
    pool = ThreadPoolExecutor(max_workers=len(INSTALLS) + 1)
    try:
        deb = pool.submit(build_deb)
        root = debian_root.ensure_root(folder / "mmdebstrap.log")
        for how in INSTALLS:
            name = f"bpx-{how}-{os.getpid()}-{secrets.token_hex(3)}"
            containers[how] = Container(root, name, folder / f"{name}.console")
        services = {how: pool.submit(install, c, how, deb) for how, c in containers.items()}
        yield Installs(deb, services)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for container in containers.values():
            container.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def deb_file(installs: Installs) -> Path:
    return installs.deb.result()


@pytest.fixture(scope="module", params=sorted(INSTALLS))
def installed(request: pytest.FixtureRequest, installs: Installs) -> Service:
    """A container where the README's steps for this install have run: the service is up."""
    return installs.services[request.param].result()


@pytest.fixture
def service(installed: Service) -> Service:
    """The installed service as the README left it: the good policy, running, with systemd's
    restart and start-limit counters flushed (tests restart it more often than the limit)."""
    changed = installed.policy() != GOOD_POLICY
    if changed:
        installed.write_policy(GOOD_POLICY)
    installed.systemctl("reset-failed", UNIT, check=False)
    if changed or installed.show("ActiveState") != "active":
        installed.systemctl("restart", UNIT)
    return installed
