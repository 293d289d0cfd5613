"""The subject of a fault test: one paused domain with one pullable disk (vda), its
guest-visible content kept aside before anything ran, and its counters on the daemon's
/metrics (the daemon runs as a DaemonProcess)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exporter.core.model import DiskKey
from harness.daemon_process import DaemonProcess
from harness.libvirt_lab import DiskSpec, Lab
from harness.qemu_images import Chain, create_chain, flatten, same_content


@dataclass(frozen=True)
class Subject:
    domain: str
    chain: Chain
    original: Path  # the guest-visible content before anything ran, raw

    @property
    def key(self) -> DiskKey:
        return DiskKey(self.domain, "vda")

    def labels(self) -> dict[str, str]:
        return {"domain": self.domain, "disk": "vda"}

    def content_unchanged(self) -> bool:
        """Only meaningful once the domain has stopped (libvirt_lab.stop_domain)."""
        return same_content(self.chain.top, self.original)


def make_subject(lab: Lab, label: str = "fault", fill_mib: int = 32) -> Subject:
    """A paused domain over a 1-deep chain in the lab's folder."""
    return start_subject(lab, create_chain(lab.folder, name=label, fill_mib=fill_mib), label)


def start_subject(lab: Lab, chain: Chain, label: str) -> Subject:
    """A paused domain whose vda is `chain.top`, its content kept aside in the lab first."""
    original = flatten(chain.top, lab.folder / f"{label}-original.raw")
    name = lab.start(label, [DiskSpec("vda", chain.top)]).name()
    return Subject(name, chain, original)


# -- its counters ------------------------------------------------------------------------------


def expected_counters(
    started: int = 0, completed: int = 0, failed: int = 0, aborted: int = 0
) -> dict[str, float]:
    """What `counters` returns when the subject's disk saw exactly these."""
    return {"started": started, "completed": completed, "failed": failed, "aborted": aborted}


def counters(daemon: DaemonProcess, subject: Subject) -> dict[str, float]:
    """started/completed/failed and aborted (all reasons) for the subject's disk."""
    samples = daemon.samples()
    labels = frozenset(subject.labels().items())
    result = {
        kind: samples.get((f"blockpull_jobs_{kind}_total", labels), 0.0)
        for kind in ("started", "completed", "failed")
    }
    result["aborted"] = sum(
        value
        for (name, series), value in samples.items()
        if name == "blockpull_jobs_aborted_total" and labels <= series
    )
    return result


def assert_counts(
    daemon: DaemonProcess,
    subject: Subject,
    started: int = 0,
    completed: int = 0,
    failed: int = 0,
    aborted: int = 0,
) -> None:
    """The subject's counters, tolerating pulls aborted over_budget: other suites share this
    libvirtd, and their pulls are foreign jobs that take slots and bandwidth from our budget.
    Each such abort must come with exactly one extra start (the pull is started again)."""
    got = counters(daemon, subject)
    over = aborted_reason(daemon, subject, "over_budget")
    expected = expected_counters(started + over, completed, failed, aborted + over)
    assert got == expected, f"over_budget aborts: {over}\n{daemon.log()[-4000:]}"


def aborted_reason(daemon: DaemonProcess, subject: Subject, reason: str) -> int:
    value = daemon.value("blockpull_jobs_aborted_total", **subject.labels(), reason=reason)
    return int(value or 0)
