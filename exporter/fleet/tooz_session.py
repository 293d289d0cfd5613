"""A `Session` on tooz: etcd through its etcd3 gateway driver (`etcd3+http://host:2379`), or
any other tooz backend with group membership and locks (ZooKeeper, Redis, ...).

- Membership: tooz group `blockpull.<group>`; this member's capabilities are its demand and
  the slots it holds. The membership lives on a lease of `ttl` seconds.
- Slots: tooz lock `blockpull.<group>.slot.<n>`, taken without waiting. On etcd a lock is a key
  created only if absent, on a lease of its own; tooz's heartbeat refreshes them all.

tooz's own heartbeat thread is not started: the agent heartbeats, so it knows exactly when a
lease was last extended. Every request is counted (on etcd, the HTTP requests themselves).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from exporter.fleet.session import CoordinationError

log = logging.getLogger(__name__)

T = TypeVar("T")
GROUP_PREFIX = "blockpull."
# Each HTTP request to the service waits at most this long: a frozen etcd must not hold the
# agent's round for the driver's default of 30 s.
REQUEST_TIMEOUT_SECONDS = 2


class ToozSession:
    def __init__(self, url: str, member: str, ttl: int) -> None:
        from tooz import coordination  # imported only by daemons that coordinate

        self._coordination = coordination
        self._requests = 0
        self._per_call = 1  # requests counted per call; 0 once HTTP requests are counted
        self._locks: dict[tuple[str, int], Any] = {}
        self._driver = self._call(
            lambda: coordination.get_coordinator(
                url,
                member.encode(),
                lock_timeout=ttl,
                membership_timeout=ttl,
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
        )
        if self._count_http_requests():
            self._per_call = 0
        self._call(lambda: self._driver.start(start_heart=False))

    @property
    def requests(self) -> int:
        return self._requests

    def _count_http_requests(self) -> bool:
        """On etcd, count the gateway's HTTP requests themselves; True when that works."""
        client = getattr(self._driver, "client", None)
        post = getattr(client, "post", None)
        if client is None or post is None:
            return False

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._requests += 1
            return post(*args, **kwargs)

        client.post = counted
        return True

    def _call(self, operation: Callable[[], T]) -> T:
        self._requests += self._per_call
        try:
            return operation()
        except CoordinationError:
            raise
        except Exception as error:  # tooz, requests and driver errors alike: the service failed
            raise CoordinationError(f"{type(error).__name__}: {error}") from error

    def heartbeat(self) -> None:
        self._call(self._driver.heartbeat)

    def join(self, group: str, capabilities: Mapping[str, Any]) -> None:
        errors = self._coordination
        group_id = (GROUP_PREFIX + group).encode()

        def join() -> None:
            with contextlib.suppress(errors.GroupAlreadyExist):
                self._driver.create_group(group_id).get()
            with contextlib.suppress(errors.MemberAlreadyExist):
                self._driver.join_group(group_id, dict(capabilities)).get()

        self._call(join)

    def leave(self, group: str) -> None:
        errors = self._coordination

        def leave() -> None:
            with contextlib.suppress(errors.MemberNotJoined, errors.GroupNotCreated):
                self._driver.leave_group((GROUP_PREFIX + group).encode()).get()

        self._call(leave)

    def publish(self, group: str, capabilities: Mapping[str, Any]) -> None:
        group_id = (GROUP_PREFIX + group).encode()
        self._call(lambda: self._driver.update_capabilities(group_id, dict(capabilities)).get())

    def members(self, group: str) -> Mapping[str, Mapping[str, Any]]:
        group_id = (GROUP_PREFIX + group).encode()

        def read() -> dict[bytes, Any]:
            try:
                return dict(self._driver.get_members_with_capabilities(group_id).get())
            except NotImplementedError:  # drivers without the one-read form
                members = self._driver.get_members(group_id).get()
                return {m: self._driver.get_member_capabilities(group_id, m).get() for m in members}

        raw = self._call(read)
        return {
            member.decode(errors="replace"): caps if isinstance(caps, dict) else {}
            for member, caps in raw.items()
        }

    def acquire(self, group: str, slot: int) -> bool:
        lock = self._locks.get((group, slot))
        if lock is None:
            lock = self._driver.get_lock(f"{GROUP_PREFIX}{group}.slot.{slot}".encode())
        acquired = bool(self._call(lambda: lock.acquire(blocking=False)))
        if acquired:
            self._locks[(group, slot)] = lock
        return acquired

    def release(self, group: str, slot: int) -> None:
        lock = self._locks.pop((group, slot), None)
        if lock is not None:
            self._call(lock.release)

    def close(self) -> None:
        for key in list(self._locks):
            try:
                self.release(*key)
            except CoordinationError as error:
                log.debug("releasing slot %s on close: %s", key, error)
        try:
            self._call(self._driver.stop)
        except CoordinationError as error:
            log.debug("stopping the tooz session: %s", error)
