"""A real Prometheus (Debian's 2.42, /usr/bin/prometheus) for end-to-end tests.

`running_prometheus(targets, workdir)` writes a temp config (1 s scrape and evaluation
intervals, job "blockpull-exporter" as prometheus/alerts.yml assumes, a copy of the alert rules),
starts Prometheus on a free loopback port with its own data dir, waits for /-/ready and always
kills it on the way out. `PrometheusServer` answers instant queries, alerts and targets through
the HTTP API and describes its state (targets, log tail) for failure messages.

No libvirt import here: unit tests may use it too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.loopback import free_port

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "prometheus" / "alerts.yml"
PROMETHEUS = "/usr/bin/prometheus"
JOB = "blockpull-exporter"  # the scrape job name prometheus/alerts.yml assumes
READY_TIMEOUT = 90.0  # a cold start on a loaded 2-core machine takes a few seconds


def prometheus_config(targets: Sequence[str], rule_file: Path | None) -> str:
    """Prometheus YAML (JSON is YAML) scraping `targets` every second."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
    }
    if rule_file is not None:
        config["rule_files"] = [str(rule_file)]
    return json.dumps(config, indent=1)


class PrometheusError(AssertionError):
    """Prometheus did not start or answered a query with an error."""


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        """The `data` of a /api/v1 answer; raises PrometheusError on an error answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
                answer = json.load(r)
        except urllib.error.HTTPError as error:  # 400/422: a bad query, with a JSON body
            answer = json.loads(error.read() or b"{}")
        if answer.get("status") != "success":
            raise PrometheusError(f"/api/v1/{path} {params}: {answer}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result: vector samples, or one scalar/string as a 1-list."""
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def values(self, expr: str) -> dict[frozenset[tuple[str, str]], float]:
        """An instant vector query as {labels: value} (also works for one scalar)."""
        return {
            frozenset(sample["metric"].items()): float(sample["value"][1])
            for sample in self.query(expr)
        }

    def range_values(self, expr: str) -> dict[frozenset[tuple[str, str]], list[float]]:
        """A range-vector selector (`m[30s]`) queried instantly: every sample, oldest first."""
        return {
            frozenset(series["metric"].items()): [float(v) for _, v in series["values"]]
            for series in self.api("query", query=expr)["result"]
        }

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, as /api/v1/alerts lists them."""
        return list(self.api("alerts")["alerts"])

    def firing(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        return [
            alert
            for alert in self.alerts()
            if alert["state"] == "firing"
            and alert["labels"].get("alertname") == alertname
            and all(alert["labels"].get(k) == v for k, v in labels.items())
        ]

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule of every group."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def describe(self) -> str:
        """Targets (health, last error, last scrape) and the log tail, for failure messages."""
        try:
            lines = [
                f"  {t['scrapeUrl']}: {t['health']} lastError={t['lastError']!r} "
                f"lastScrape={t['lastScrape']}"
                for t in self.targets()
            ]
            targets = "\n".join(lines) or "  (none)"
        except (PrometheusError, OSError) as error:
            targets = f"  (unavailable: {error})"
        return f"Prometheus targets:\n{targets}\nPrometheus log tail:\n{self.log()[-3000:]}"

    def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float,
        what: str,
        details: str | Callable[[], str] = "",
    ) -> float:
        """Seconds until `predicate()` held; else fails naming `what`, with `details` (text, or
        a function called at the failure) and our state."""
        began = time.monotonic()
        deadline = began + timeout
        while True:
            if predicate():
                return time.monotonic() - began
            if time.monotonic() > deadline:
                text = details() if callable(details) else details
                raise AssertionError(
                    f"not within {timeout:.0f} s: {what}\n{text}\n{self.describe()}"
                )
            time.sleep(0.5)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False


def rules_copy(workdir: Path, source: Path = ALERTS) -> Path:
    """prometheus/alerts.yml copied unchanged into `workdir` (Prometheus reads the copy)."""
    copy = workdir / "alerts.yml"
    shutil.copyfile(source, copy)
    return copy


@contextlib.contextmanager
def running_prometheus(
    targets: Sequence[str], workdir: Path, rule_file: Path | None = None, attempts: int = 3
) -> Iterator[PrometheusServer]:
    """A ready Prometheus scraping `targets`; killed (and its data removed) in a finally."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config(targets, rule_file))
    check = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise PrometheusError(f"promtool check config: {check.stdout}{check.stderr}")
    for attempt in range(1, attempts + 1):
        server = _start(config, workdir, attempt)
        try:
            if _wait_ready(server):
                yield server
                return
            if server.process.poll() is None or "address already in use" not in server.log():
                raise PrometheusError(f"Prometheus not ready in {READY_TIMEOUT} s:\n{server.log()}")
        finally:
            _stop(server.process)
            shutil.rmtree(workdir / f"data-{attempt}", ignore_errors=True)
    raise PrometheusError(f"Prometheus found no free port in {attempts} attempts")


def _start(config: Path, workdir: Path, attempt: int) -> PrometheusServer:
    port = free_port()
    log_path = workdir / f"prometheus-{attempt}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / f'data-{attempt}'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=info",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return PrometheusServer(f"http://127.0.0.1:{port}", process, log_path)


def _wait_ready(server: PrometheusServer) -> bool:
    """True once /-/ready answers; False as soon as the process died."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        if server.ready():
            return True
        time.sleep(0.2)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
