"""The one writer of policy YAML for tests and benchmarks.

`policy(...)` and `rule(...)` build the text; values are written as JSON, which is valid YAML
flow, so paths, globs and times stay strings. Every policy is in UTC, so a test can place a
window boundary exactly. `write_policy` puts a file in place the way config management does
(write aside, then rename), so a daemon watching it never reads half a file.

A daemon on the shared libvirtd refuses a policy that could select someone else's domain
(own_names.require_own_policy): name domains exactly, or by a run's unique prefix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from exporter.files import write_atomically

# Other engineers' block jobs on the shared libvirtd are foreign jobs to the daemon and take a
# slot each: policies that must never wait for a slot leave room for all of them.
ROOM_FOR_FOREIGN_JOBS = 500


def rule(name: str, domains: Iterable[str], **fields: object) -> str:
    """One rule: `domains` globs, then any rule field (disks, keep_base, windows, action...)."""
    lines = [f"  - name: {name}", f"    domains: {json.dumps(list(domains))}"]
    lines += [f"    {key}: {json.dumps(value)}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


def policy(
    *rules: str,
    bandwidth: str = "unlimited",
    max_concurrent: int = 2,
    retry: Mapping[str, object] | None = None,
    outside_windows: str | None = None,
    windows: Mapping[str, Mapping[str, object]] | None = None,
    min_free: str | int | None = None,
) -> str:
    """A policy in UTC; `retry`, `outside_windows` and `min_free` omitted keep the loader's
    defaults; `windows`: name -> fields ({"days": "daily", "from": "10:00", "to": "10:01"})."""
    defaults: dict[str, object] = {"bandwidth": bandwidth, "max_concurrent": max_concurrent}
    if outside_windows is not None:
        defaults["outside_windows"] = outside_windows
    if min_free is not None:
        defaults["min_free"] = min_free
    if retry is not None:
        defaults["retry"] = dict(retry)
    text = "version: 1\ntimezone: UTC\ndefaults:\n"
    text += "".join(f"  {key}: {json.dumps(value)}\n" for key, value in defaults.items())
    if windows:
        text += "windows:\n"
        text += "".join(f"  {name}: {json.dumps(dict(w))}\n" for name, w in windows.items())
    return text + "rules:\n" + "".join(rules)


def retry(max_attempts: int, backoff: str, max_backoff: str) -> dict[str, object]:
    return {"max_attempts": max_attempts, "backoff": backoff, "max_backoff": max_backoff}


def policy_for_domains(
    domains: Sequence[str],
    bandwidth: str = "6MiB/s",
    max_concurrent: int = ROOM_FOR_FOREIGN_JOBS,
    max_attempts: int = 5,
    backoff: str = "2s",
    max_backoff: str = "2s",
    rule_name: str = "e2e",
    window: str | None = None,
    min_free: str | int | None = None,
) -> str:
    """The subprocess suites' policy: one rule naming exactly `domains`, short retries.

    `window`: the name of a window open all day, every day, that the rule lists (so
    blockpull_window_active has a series).
    """
    fields: dict[str, object] = {"windows": [window]} if window else {}
    return policy(
        rule(rule_name, domains, **fields),
        bandwidth=bandwidth,
        max_concurrent=max_concurrent,
        retry=retry(max_attempts, backoff, max_backoff),
        windows={window: {"days": "daily"}} if window else None,
        min_free=min_free,
    )


def write_policy(path: Path, text: str) -> Path:
    """`text` (valid or not: tests write broken files too) at `path`, atomically."""
    write_atomically(path, text.encode(), mode=0o644)  # a daemon as another user reads it
    return path
