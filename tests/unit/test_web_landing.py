"""The HTML landing page at `/`."""

from __future__ import annotations

import snapshots

from exporter.web.landing import render_landing_page


def test_landing_page_names_the_version_and_links_the_metrics() -> None:
    page = render_landing_page("1.2.3", snapshots.realistic_snapshot())
    assert "Version 1.2.3" in page
    assert 'href="metrics"' in page


def test_landing_page_escapes_and_reports_the_policy_error() -> None:
    snapshot = snapshots.snapshot(policy_reload_ok=False, policy_error="line 3: <bad> & worse")
    page = render_landing_page("1.0", snapshot)
    assert 'href="metrics"' in page
    assert "last reload failed" in page
    assert "line 3: &lt;bad&gt; &amp; worse" in page
