"""The HTML landing page at `/`."""

from __future__ import annotations

import html

from exporter.daemon.snapshot import Snapshot
from exporter.policy.units import format_size, format_timestamp


def _hold_rows(snapshot: Snapshot) -> list[tuple[str, str]]:
    if snapshot.holds.error:
        return [("Holds", f"every domain is held: the holds file is unreadable: "
                 f"{snapshot.holds.error}")]  # fmt: skip
    held = sorted(snapshot.holds.in_force(snapshot.taken_at), key=lambda h: h.until)
    if not held:
        return [("Holds", "none")]
    rows = []
    for hold in held:
        why = f": {hold.reason}" if hold.reason else ""
        rows.append(
            (f"Hold on {hold.domains}", f"until {format_timestamp(hold.until)} by {hold.by}{why}")
        )
    return rows


def render_landing_page(version: str, snapshot: Snapshot | None) -> str:
    """The HTML at `/`: what this is, where the metrics are, and whether the policy is healthy."""
    if snapshot is None:
        status = "<p>Starting: no reconcile has run yet.</p>"
    else:
        policy = "loaded" if snapshot.policy_reload_ok else "last reload failed"
        rows = [
            ("Policy", f"{snapshot.policy_source} ({policy})"),
            ("libvirt", "up" if snapshot.libvirt_up else "DOWN"),
        ]
        if snapshot.policy_error:
            rows.append(("Policy error", snapshot.policy_error))
        if snapshot.plan is not None:
            rows.append(("Running block jobs", str(len(snapshot.jobs))))
        rows += _hold_rows(snapshot)
        if snapshot.plan is not None:
            rows += [
                (f"Free space on {c.mountpoint}", f"{format_size(c.free)}, min_free keeps "
                 f"{format_size(c.floor)}, running pulls may write {format_size(c.reserved)}")
                for c in snapshot.plan.space
            ]  # fmt: skip
        status = "<table>{}</table>".format(
            "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>blockpull-exporter</title>'
        "</head><body>\n"
        f"<h1>blockpull-exporter</h1>\n<p>Version {html.escape(version)}</p>\n"
        '<p><a href="metrics">Metrics</a></p>\n'
        f"{status}\n</body></html>\n"
    )
