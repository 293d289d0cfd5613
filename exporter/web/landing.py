"""The HTML landing page at `/`."""

from __future__ import annotations

import html

from exporter.daemon.snapshot import Snapshot


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
