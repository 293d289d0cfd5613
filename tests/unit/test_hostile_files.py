"""Hostile and careless configuration files (issue 13): each is answered at once, in bounded
memory, with an error that names the file and the limit, and changes nothing in force.

Every test is bounded by a timeout: before the fixes, several of these files hung `check` or
the daemon loop, or took minutes and gigabytes. The time and memory each takes are measured by
bench/hostile_files.py, not asserted here.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import resource
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from certs import Pki, handshake, make_pki

from exporter.commands import check
from exporter.config_file.composing import MAX_NODES
from exporter.config_file.issues import MAX_REPORTED
from exporter.daemon.controller import Controller
from exporter.hosts.sim.host import SimulatedHost
from exporter.policy.source import PolicySource
from exporter.web.config import WebConfigError, load_web_config

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "policies" / "example.yaml"
# 10 rules x 100 integers where globs belong: 1,000 mistakes, each reported on its own.
THOUSAND_MISTAKES = "version: 1\nrules:\n" + "".join(
    f"  - {{name: r{i}, domains: [{', '.join(['1'] * 100)}]}}\n" for i in range(10)
)


def run_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = check.main(argparse.Namespace(files=[str(path)]))
    out, err = capsys.readouterr()
    return status, out, err


def written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- aliases and error floods (case 2) -------------------------------------------------------


def alias_amplification() -> str:
    """11 KB: 1,000 aliases of a rule whose three glob lists alias one 1,000-item list."""
    items = ", ".join(["1"] * 1000)
    rule = f"  - &r {{name: a, domains: &l [{items}], disks: *l, backing: *l}}\n"
    return "version: 1\nrules:\n" + rule + "  - *r\n" * 999


def billion_laughs() -> str:
    """Nine levels of nine aliases (9**9 strings once expanded), in a rule's glob list."""
    lines = ["version: 1", "rules:", "  - name: laughs", "    domains:"]
    lines.append(f"      - &a [{', '.join(['lol'] * 9)}]")
    for level, previous in zip("bcdefghi", "abcdefgh", strict=True):
        lines.append(f"      - &{level} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_aliases_that_multiply_a_small_file_are_refused_with_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = written(tmp_path / "aliases.yaml", alias_amplification())
    status, out, err = run_check(path, capsys)
    assert (status, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith(f"{path}:")
    assert f"more than {MAX_NODES:,} YAML nodes" in err
    assert "aliases multiply it" in err


def test_the_classic_billion_laughs_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_check(written(tmp_path / "laughs.yaml", billion_laughs()), capsys)
    assert status == 1
    assert "YAML nodes" in err
    assert len(err) < 1000


def test_thousands_of_mistakes_print_the_first_few_dozen_and_a_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = written(tmp_path / "mistakes.yaml", THOUSAND_MISTAKES)
    status, _, err = run_check(path, capsys)
    lines = err.splitlines()
    assert status == 1
    assert len(lines) == MAX_REPORTED + 1
    assert all(line.startswith(f"{path}:3:") for line in lines[:MAX_REPORTED])  # file order
    assert lines[-1] == f"{path}: and {1000 - MAX_REPORTED:,} more issues, not shown"


def test_a_reload_with_thousands_of_mistakes_logs_and_keeps_a_bounded_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = written(tmp_path / "policy.yaml", EXAMPLE.read_text())
    source = PolicySource(path)
    in_force = source.policy
    written(path, THOUSAND_MISTAKES)
    with caplog.at_level(logging.ERROR):
        result = source.reload()
    assert result.error is not None
    assert len(result.error.splitlines()) == MAX_REPORTED + 1
    assert [len(record.getMessage().splitlines()) for record in caplog.records] == [
        MAX_REPORTED + 2
    ]
    assert source.policy is in_force


# -- special files (case 4) ------------------------------------------------------------------


def test_check_on_a_fifo_answers_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(tmp_path / "policy.yaml")
    status, _, err = run_check(tmp_path / "policy.yaml", capsys)
    assert status == 1
    assert err == f"{tmp_path / 'policy.yaml'}: cannot read: a FIFO, not a regular file\n"


def test_check_on_a_link_to_dev_zero_reads_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").symlink_to("/dev/zero")
    status, _, err = run_check(tmp_path / "policy.yaml", capsys)
    assert status == 1
    assert "cannot read: a character device, not a regular file" in err


def test_check_on_a_file_over_the_size_limit_names_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = "".join(f"  - {{name: r{i}, domains: [d{i}-*]}}\n" for i in range(100_000))
    status, _, err = run_check(written(tmp_path / "p.yaml", f"version: 1\nrules:\n{rules}"), capsys)
    assert status == 1
    assert "larger than 1 MiB, the limit for a configuration file" in err


def test_a_fifo_replacing_the_policy_does_not_stop_the_daemon_loop(tmp_path: Path) -> None:
    path = written(tmp_path / "policy.yaml", EXAMPLE.read_text())
    host = SimulatedHost()
    controller = Controller(host, PolicySource(path), host.clock)
    path.unlink()
    os.mkfifo(path)
    controller.run(until=host.clock.monotonic() + 3)  # the file check runs every second
    snapshot = controller.snapshot
    assert not snapshot.policy_reload_ok
    assert snapshot.policy_error is not None and "a FIFO" in snapshot.policy_error
    assert snapshot.rule_names == tuple(rule.name for rule in PolicySource(EXAMPLE).policy.rules)


@contextmanager
def file_descriptors_exhausted() -> Iterator[None]:
    """Every descriptor the process may open is taken, as under a flood of connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd.name) for fd in Path("/proc/self/fd").iterdir())
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
    taken = []
    try:
        while True:
            try:
                taken.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as error:
                assert error.errno == errno.EMFILE
                break
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_reload_without_free_descriptors_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = written(tmp_path / "policy.yaml", EXAMPLE.read_text())
    source = PolicySource(path)
    in_force = source.policy
    written(path, EXAMPLE.read_text().replace("50MiB/s", "60MiB/s"))
    with file_descriptors_exhausted():
        changed = source.changed_on_disk()
        result = source.reload()
    assert changed
    assert result.error == f"{path}: cannot read: Too many open files"
    assert source.policy is in_force
    assert source.reload().changed  # and once descriptors are free again, the new one loads


# -- the web config (cases 4, 10 and 11) -----------------------------------------------------


def web_config_error(path: Path) -> str:
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    return str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "tls_server_config: " + "[" * 10_000 + "]" * 10_000 + "\n",
        "".join(f"{'  ' * level}k{level}:\n" for level in range(200)),
    ],
    ids=["flow-10000", "block-200"],
)
def test_a_deeply_nested_web_config_is_a_clean_error_naming_the_file(
    tmp_path: Path, text: str
) -> None:
    path = written(tmp_path / "web.yml", text)
    message = web_config_error(path)
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: .*nest", message), message
    assert message.count("\n") == 0


def test_a_fifo_as_the_web_config_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "web.yml")
    assert "a FIFO, not a regular file" in web_config_error(tmp_path / "web.yml")


def test_a_fifo_as_the_certificate_file_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "server.crt")
    path = written(
        tmp_path / "web.yml", "tls_server_config:\n  cert_file: server.crt\n  key_file: x.key\n"
    )
    message = web_config_error(path)
    assert f"tls_server_config.cert_file: {tmp_path / 'server.crt'}: cannot read: a FIFO" in (
        message
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_web_config(directory: Path, pki: Pki, extra: str = "") -> Path:
    return written(
        directory / "web.yml",
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        + extra,
    )


@pytest.mark.parametrize("key", ["min_version", "max_version"])
@pytest.mark.parametrize("version", ["TLS10", "TLS11"])
def test_obsolete_tls_versions_are_refused_at_load_naming_the_key(
    tmp_path: Path, pki: Pki, key: str, version: str
) -> None:
    message = web_config_error(tls_web_config(tmp_path, pki, f"  {key}: {version}\n"))
    assert f"tls_server_config.{key}: {version} is refused" in message


def test_tls12_offers_only_forward_secret_aead_suites_by_default(tmp_path: Path, pki: Pki) -> None:
    context = load_web_config(tls_web_config(tmp_path, pki)).ssl_context()
    assert context is not None
    tls12 = [cipher for cipher in context.get_ciphers() if cipher["protocol"] == "TLSv1.2"]
    assert tls12
    assert {(cipher["kea"], cipher["aead"]) for cipher in tls12} == {("kx-ecdhe", True)}


def test_a_client_offering_only_cbc_suites_is_refused(tmp_path: Path, pki: Pki) -> None:
    server = load_web_config(tls_web_config(tmp_path, pki)).ssl_context()
    assert server is not None
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(pki.ca_cert)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
    with pytest.raises(ssl.SSLError, match="NO_SHARED_CIPHER"):
        handshake(server, client)
