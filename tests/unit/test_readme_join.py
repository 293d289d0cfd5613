"""The README's join with the libvirt exporters' metrics, run by promtool on made-up series."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from test_alert_rules import promtool

ROOT = Path(__file__).resolve().parents[2]
SECTION = "### Joining with the libvirt exporters"


def readme_join_query() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    match = re.search(r"```promql\n(.*?)```", section, re.DOTALL)
    assert match, "the join section has a promql block"
    return " ".join(match.group(1).split())


def test_the_documented_join_pairs_each_pulled_disk_with_its_libvirt_exporter_series(tmp_path):
    libvirt = (
        "libvirt_domain_block_stats_write_bytes_total"
        '{{instance="hv1:9177",host="hv1",domain="web-1",target_device="{}"}}'
    )
    blockpull = (
        'blockpull_job_cursor_bytes{{instance="hv1:9855",host="hv1",domain="web-1",disk="{}"}}'
    )
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": libvirt.format("vda"), "values": "0+6000x10"},
                    {"series": libvirt.format("vdb"), "values": "0+600x10"},
                    {"series": blockpull.format("vda"), "values": "0+1000x10"},
                ],
                "promql_expr_test": [
                    {
                        "expr": readme_join_query(),
                        "eval_time": "10m",
                        "exp_samples": [
                            {
                                "labels": '{host="hv1",instance="hv1:9177",domain="web-1",'
                                'target_device="vda"}',
                                "value": 100,
                            }
                        ],
                    }
                ],
            }
        ],
    }
    test_file = tmp_path / "join_test.yml"
    test_file.write_text(yaml.safe_dump(tests))
    done = subprocess.run(
        [promtool(), "test", "rules", str(test_file)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
