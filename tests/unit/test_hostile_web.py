"""Hostile clients against a live WebServer on loopback: floods of idle or trickling
connections, running out of files, request bodies, and password guessing (issue 13).

Every test is bounded: at most a few hundred connections, a timeout on every socket, and
limits shrunk (`WebLimits`) so that deadlines pass within about a second.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import bcrypt
import pytest
from certs import make_pki
from live_server import BODY, PASSWORD_HASH, TIMEOUT, basic, request, serving, write_config

from exporter.web import auth as web_auth
from exporter.web.auth import BasicAuth, PasswordChecksBusyError, bcrypt_cost
from exporter.web.limits import WebLimits

REPO = Path(__file__).resolve().parents[2]
# Small enough to fill with a few connections, short enough to wait out in a test.
FAST = WebLimits(max_connections=8, evictable_after=0.1, request_timeout=1.0, idle_timeout=5.0)
# Deadlines out of the way: whatever frees a slot here, it is not the request deadline.
NO_DEADLINE = WebLimits(max_connections=4, evictable_after=0.1, request_timeout=60.0)
GET = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
GET_AND_CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@contextlib.contextmanager
def connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails the test)."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def statuses(reply: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply)]


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed the connection, without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(TIMEOUT)


# A flood of connections.


def test_connections_beyond_the_limit_get_no_thread_of_their_own() -> None:
    with serving(limits=FAST) as server:
        threads_before = threading.active_count()
        peak = threads_before
        with connections(server.port, 5 * FAST.max_connections):
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                peak = max(peak, threading.active_count())
                time.sleep(0.01)
    assert peak - threads_before <= FAST.max_connections


def test_a_client_trickling_its_request_head_is_cut_off_at_the_deadline() -> None:
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    with (
        serving(limits=FAST) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock,
    ):
        # One byte every 0.1 s never lets a read idle for long; only a deadline ends it.
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            if closed_by_server(sock):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the server let a head trickle in for 20 s")


def test_idle_connections_give_way_to_a_scrape_when_every_slot_is_taken() -> None:
    with (
        serving(limits=NO_DEADLINE) as server,
        connections(server.port, NO_DEADLINE.max_connections) as idle,
    ):
        time.sleep(2 * NO_DEADLINE.evictable_after)
        assert request(server)[0] == 200
        assert any(closed_by_server(sock) for sock in idle)


def test_an_idle_keep_alive_connection_gives_way_to_a_new_client() -> None:
    limits = WebLimits(max_connections=1, evictable_after=0.1)
    with (
        serving(limits=limits) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as kept,
    ):
        kept.sendall(GET)
        answer = b""
        while not answer.endswith(BODY):
            answer += kept.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        time.sleep(2 * limits.evictable_after)
        assert request(server)[0] == 200
        assert read_until_closed(kept) == b""


@pytest.mark.parametrize(
    "sent", [b"", b"\x16\x03\x01"], ids=["silent", "handshake-begun-then-stalled"]
)
def test_stalled_tls_handshakes_give_way_to_a_scrape_when_every_slot_is_taken(
    tmp_path: Path, sent: bytes
) -> None:
    pki = make_pki(tmp_path)
    config = write_config(
        tmp_path,
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n",
    )
    limits = replace(NO_DEADLINE, handshake_timeout=60.0)
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    with serving(config, limits=limits) as server, connections(server.port, 4) as stalled:
        for sock in stalled:
            sock.sendall(sent)
        time.sleep(2 * limits.evictable_after)
        assert request(server, context=context)[0] == 200


def test_a_scrape_is_answered_during_and_after_a_flood_of_idle_and_trickling_clients() -> None:
    # The flood drains through the slots at max_connections / evictable_after a second.
    limits = WebLimits(max_connections=8, evictable_after=0.05, request_timeout=60.0)
    with serving(limits=limits) as server:
        with connections(server.port, 200) as flood:
            for sock in flood[::2]:
                sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
            assert request(server)[0] == 200
        assert request(server)[0] == 200


CHILD = """
import logging, os, resource, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
from exporter.web import server
from exporter.web.limits import WebLimits
server._EPISODE_QUIET = 0.5  # the recovery is logged after 0.5 s without failures, not 10 s
web = server.WebServer("127.0.0.1:0", None, lambda: b"ok\\n", lambda: "",
                       WebLimits(request_timeout=60.0, evictable_after=60.0))
web.start()
opened = len(os.listdir("/proc/self/fd"))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (opened + 8, hard))
print(web.port, flush=True)
sys.stdin.read()
web.stop()
"""


def test_running_out_of_files_on_accept_is_logged_once_and_survived() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        with connections(port, 30):
            time.sleep(1.5)  # accept() fails with EMFILE again and again meanwhile
        assert exchange(port, GET_AND_CLOSE).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.6)  # a quiet spell, then a success: the episode is over
        assert exchange(port, GET_AND_CLOSE).startswith(b"HTTP/1.1 200 ")
        _, err = child.communicate(b"", timeout=TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lines = err.decode().splitlines()
    assert child.returncode == 0, lines
    assert [line for line in lines if "cannot accept" in line] == [
        "WARNING cannot accept connections: [Errno 24] Too many open files; retrying, and "
        "saying so once it works"
    ]
    assert [line for line in lines if "again" in line] == ["WARNING accepting connections again"]


# Request bodies.


def test_a_get_body_is_discarded_not_served_as_a_second_request() -> None:
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    first = b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
    with serving(limits=FAST) as server:
        reply = exchange(server.port, first + smuggled + GET_AND_CLOSE)
    assert statuses(reply) == [200, 200]
    assert reply.count(BODY) == 1
    assert reply.endswith(b"<html>landing</html>")


def test_a_post_body_is_discarded_and_the_connection_stays_usable() -> None:
    post = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    with serving(limits=FAST) as server:
        assert statuses(exchange(server.port, post + GET_AND_CLOSE)) == [405, 200]


def test_a_body_over_the_cap_gets_413_and_the_connection_is_closed() -> None:
    too_long = FAST.max_request_body + 1
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % too_long
    with serving(limits=FAST) as server:
        reply = exchange(server.port, head + GET)
    assert statuses(reply) == [413]
    assert b"Connection: close" in reply


def test_a_body_with_transfer_encoding_gets_400_and_the_connection_is_closed() -> None:
    chunked = b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"25\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n"
    with serving(limits=FAST) as server:
        reply = exchange(server.port, chunked + body)
    assert statuses(reply) == [400]


@pytest.mark.parametrize(
    "lengths",
    [[b"-1"], [b"abc"], [b"1, 2"], [b"3", b"4"], ["\u0663".encode()]],
    ids=["negative", "text", "list", "two-values", "non-ascii-digit"],
)
def test_a_malformed_content_length_gets_400(lengths: list[bytes]) -> None:
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
    head += b"".join(b"Content-Length: " + length + b"\r\n" for length in lengths)
    with serving(limits=FAST) as server:
        assert statuses(exchange(server.port, head + b"\r\nabcd" + GET)) == [400]


def test_a_client_that_stops_mid_body_is_cut_off_at_the_deadline() -> None:
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
    with (
        serving(limits=FAST) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock,
    ):
        sock.sendall(head)
        assert read_until_closed(sock) == b""  # no answer to half a request; closed in time


def test_a_request_head_over_the_cap_gets_431_and_the_connection_is_closed() -> None:
    big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * FAST.max_request_head
    with serving(limits=FAST) as server:
        reply = exchange(server.port, big + b"\r\n\r\n")
    assert statuses(reply) == [431]


# Password guessing.


def test_unknown_users_are_checked_against_a_hash_of_the_highest_configured_cost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = {
        "alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)),
        "bob": bcrypt.hashpw(b"pw", bcrypt.gensalt(5)),
    }
    auth = BasicAuth(users)
    checked: list[bytes] = []
    real = web_auth.bcrypt.checkpw
    monkeypatch.setattr(
        web_auth.bcrypt, "checkpw", lambda pw, hashed: checked.append(hashed) or real(pw, hashed)
    )
    assert not auth.check("nobody", "pw")
    assert [bcrypt_cost(h) for h in checked] == [5]
    assert checked[0] not in users.values()


class BlockingCheck:
    """Stands in for bcrypt.checkpw: holds each check until released, counting overlaps."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.entered.set()
        self.release.wait(TIMEOUT)
        with self._lock:
            self.running -= 1
        return False


def run_checks(auth: BasicAuth, count: int) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=auth.check, args=("alice", f"guess{i}"), daemon=True)
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


def test_no_two_password_checks_run_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    blocking = BlockingCheck()
    monkeypatch.setattr(web_auth.bcrypt, "checkpw", blocking)
    auth = BasicAuth({"alice": PASSWORD_HASH}, running_checks=1, waiting_checks=3)
    threads = run_checks(auth, 4)
    assert blocking.entered.wait(TIMEOUT)
    time.sleep(0.1)  # time for the others to reach bcrypt, if they could
    blocking.release.set()
    for thread in threads:
        thread.join(TIMEOUT)
    assert blocking.most_at_once == 1


def test_password_checks_beyond_the_queue_are_refused_as_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocking = BlockingCheck()
    monkeypatch.setattr(web_auth.bcrypt, "checkpw", blocking)
    auth = BasicAuth({"alice": PASSWORD_HASH}, running_checks=1, waiting_checks=0)
    threads = run_checks(auth, 1)
    try:
        assert blocking.entered.wait(TIMEOUT)
        with pytest.raises(PasswordChecksBusyError):
            auth.check("alice", "another guess")
    finally:
        blocking.release.set()
        for thread in threads:
            thread.join(TIMEOUT)


def test_a_client_already_checked_is_served_while_checks_are_saturated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = BasicAuth({"alice": PASSWORD_HASH}, running_checks=1, waiting_checks=0)
    assert auth.check("alice", "s3cret")
    blocking = BlockingCheck()
    monkeypatch.setattr(web_auth.bcrypt, "checkpw", blocking)
    threads = run_checks(auth, 1)
    try:
        assert blocking.entered.wait(TIMEOUT)
        assert auth.check("alice", "s3cret")
    finally:
        blocking.release.set()
        for thread in threads:
            thread.join(TIMEOUT)


def test_saturated_password_checks_are_answered_503_with_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def busy(self: BasicAuth, user: str, password: str) -> bool:
        raise PasswordChecksBusyError

    config = write_config(tmp_path, f"basic_auth_users:\n  alice: '{PASSWORD_HASH.decode()}'\n")
    monkeypatch.setattr(BasicAuth, "check", busy)
    with serving(config) as server:
        status, headers, _ = request(server, headers=basic("alice", "guess"))
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert headers["Connection"] == "close"
