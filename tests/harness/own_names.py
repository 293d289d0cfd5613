"""Names that say "made by this run", and the guard that keeps tests to what they made.

libvirtd is shared by every engineer's suites and benchmarks: a policy that selects a domain
by a loose glob would pull someone else's disks, and a clean-up of the wrong name would
destroy someone else's domain. Everything a run creates is named `bpx-<kind>-<uuid8>-<label>`;
policies given to a daemon on the shared host, and clean-ups, are checked against that.

No libvirt import here: the subprocess daemon also runs on the simulated host without it.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from exporter.policy.loader import load_policy

KINDS = ("test", "bench")
OWN = re.compile(r"bpx-(test|bench)-[0-9a-f]{8}-")


def unique_prefix(kind: str = "test") -> str:
    """`bpx-<kind>-<uuid8>-`: no other run on the machine starts its names with it."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {KINDS}")
    return f"bpx-{kind}-{uuid.uuid4().hex[:8]}-"


def unique_name(label: str, kind: str = "test") -> str:
    return unique_prefix(kind) + label


def is_own(name: str) -> bool:
    """True when `name` (or a glob) starts with a whole unique prefix, glob-free."""
    return OWN.match(name) is not None


def require_own(name: str) -> None:
    if not is_own(name):
        raise ValueError(f"{name!r} was not made by a test or benchmark run: not touching it")


def require_own_policy(path: Path) -> None:
    """Refuse a policy that could select a disk of someone else's domain on the shared host:
    every rule must name its domains, each by a glob that starts with a unique prefix."""
    for rule in load_policy(path).rules:
        if not rule.domains:
            raise ValueError(f"{path}: rule {rule.name}: no `domains` means every domain")
        for glob in rule.domains:
            if not is_own(glob):
                raise ValueError(f"{path}: rule {rule.name}: {glob!r} may select foreign domains")
