"""The installed blockpull-exporter.service inside a container: systemd's view, the journal,
/metrics, the policy file, and TCG domains to pull."""

from __future__ import annotations

import re
import shlex
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from nspawn import Container

UNIT = "blockpull-exporter.service"
POLICY = "/etc/blockpull-exporter/policy.yml"
METRICS_URL = "http://127.0.0.1:9855/metrics"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
MIB = 1024 * 1024
T = TypeVar("T")


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(LABEL.findall(match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def wait_for(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """Poll until `probe` returns something other than None or False."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@dataclass
class Service:
    container: Container
    how: str  # "package" or "pip": the README's install it came from

    def systemctl(self, *args: str, check: bool = True) -> int:
        return self.container.run(shlex.join(["systemctl", *args]), check=check).returncode

    def show(self, prop: str) -> str:
        return self.container.run(f"systemctl show -P {prop} {UNIT}").stdout.strip()

    def main_pid(self) -> int:
        return int(self.show("MainPID"))

    def journal(self) -> str:
        return self.container.run(f"journalctl -u {UNIT} -o cat --no-pager").stdout

    def journal_lines(self) -> list[str]:
        return self.journal().splitlines()

    def write_policy(self, text: str) -> None:
        self.container.write(POLICY, text)

    def policy(self) -> str:
        return self.container.path(POLICY).read_text()

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        result = self.container.run(f"curl -sf {METRICS_URL}", check=False, timeout=20)
        return parse_metrics(result.stdout) if result.returncode == 0 else None

    def metric(self, name: str, **labels: str) -> float | None:
        samples = self.scrape() or {}
        return samples.get((name, frozenset(labels.items())))

    def wait_metric(
        self, name: str, check: Callable[[float], bool], timeout: float = 20, **labels: str
    ) -> float:
        def probe() -> float | None:
            value = self.metric(name, **labels)
            return value if value is not None and check(value) else None

        return wait_for(f"{name}{labels or ''} to satisfy the check", probe, timeout)

    def sum_metric(self, name: str, **labels: str) -> float:
        """The sum over every series of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        samples = self.scrape() or {}
        return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def create_domain(container: Container, name: str, data_mib: int) -> str:
    """A paused TCG domain on a qcow2 overlay whose base holds `data_mib` MiB of data; the path
    of its base image."""
    folder = f"/var/lib/libvirt/images/{name}"
    script = f"""
        mkdir -p {folder}
        qemu-img create -q -f qcow2 {folder}/base.qcow2 {data_mib + 16}M
        qemu-io -c 'write -P 0xab 0 {data_mib}M' {folder}/base.qcow2 >/dev/null
        qemu-img create -q -f qcow2 -F qcow2 -b {folder}/base.qcow2 {folder}/top.qcow2
        chown -R libvirt-qemu:libvirt-qemu {folder}
        cat >{folder}/domain.xml <<XML
        <domain type='qemu'>
          <name>{name}</name>
          <memory unit='MiB'>64</memory>
          <vcpu>1</vcpu>
          <os><type arch='x86_64' machine='pc'>hvm</type></os>
          <devices>
            <disk type='file' device='disk'>
              <driver name='qemu' type='qcow2'/>
              <source file='{folder}/top.qcow2'/>
              <target dev='vda' bus='virtio'/>
            </disk>
          </devices>
        </domain>
        XML
        virsh -q define {folder}/domain.xml >/dev/null
        virsh -q start --paused {name} >/dev/null
        """
    container.run(textwrap.dedent(script))
    return f"{folder}/base.qcow2"


def remove_domain(container: Container, name: str) -> None:
    container.run(
        f"virsh -q destroy {name} >/dev/null 2>&1 || true\n"
        f"virsh -q undefine {name} >/dev/null 2>&1 || true\n"
        f"rm -rf /var/lib/libvirt/images/{name}",
        check=False,
    )
