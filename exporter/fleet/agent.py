"""The fleet agent: this host's member of every shared group, on a thread of its own.

Every round (ROUND_SECONDS) it reads each group's members in one request, publishes this
host's demand and held slots when they changed, releases the slots it no longer needs, and
takes free ones up to its fair cap (`exporter.fleet.shares`). Every lease TTL / HEARTBEATS_PER_TTL
it extends the leases of its membership and slots. The controller reads the outcome as
allowances (`exporter.core.coordinator.Coordinator`) and is woken when they change.

Failure handling, in the order things go wrong:
- a request fails: `up` drops to 0, no new group pull may start, running ones keep their slots
  and shares; the next round tries again;
- the last successful heartbeat started more than `ttl - margin` seconds ago: the service may
  already have expired the leases and handed the slots to others, so every allowance becomes
  "lost" (the planner aborts group pulls with `coordination_lost`) and the session is dropped;
- the service answers again: a new session (a new member id) joins and competes for slots.
Slots are only ever claimed through the service's locks, so a host that cannot reach it can
never hold more than it held; its claims vanish with its lease, within the TTL.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.core.clock import Clock
from exporter.core.coordinator import CoordinationChanged, CoordinationStatus, GroupStatus
from exporter.core.shared import NOTHING, GroupAllowance, GroupUse
from exporter.fleet.session import CoordinationError, Session
from exporter.fleet.shares import pull_share, slot_cap, water_level
from exporter.policy.values import SharedGroup

log = logging.getLogger(__name__)

ROUND_SECONDS = 1.0
MIN_PAUSE_SECONDS = 0.1  # between rounds that took longer than ROUND_SECONDS
HEARTBEATS_PER_TTL = 6
CLOSE_WAIT_SECONDS = 10.0

SessionFactory = Callable[[str], Session]


def hold_margin(ttl: float) -> float:
    """Seconds before the lease's end at which group pulls stop: time to abort them."""
    return min(2.0, ttl / 4)


@dataclass
class _Group:
    """What the agent knows of one group; changed only under the agent's lock."""

    group: SharedGroup
    held: set[int] = field(default_factory=set)
    releasing: set[int] = field(default_factory=set)  # given up here, not yet on the service
    joined: bool = False
    settled: bool = False  # a round has settled it since it was added
    leaving: bool = False  # no longer in the policy
    published: dict[str, Any] | None = None
    share: int | None = None
    cluster_slots: int = 0
    cluster_demand: int = 0
    members: int = 0

    def settling(self) -> GroupAllowance:
        """Until its first round: keep what runs (pulls adopted after a restart) at the
        smallest share, start nothing. The round then takes their slots or stops them."""
        limit = self.group.max_concurrent
        return GroupAllowance(limit, pull_share(self.group.bandwidth, limit, limit), False)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _slots(value: object, limit: int) -> set[int]:
    if not isinstance(value, list | tuple):
        return set()
    return {s for s in value if isinstance(s, int) and not isinstance(s, bool) and 0 <= s < limit}


def _others_wait(others: Mapping[str, Mapping[str, Any]], limit: int) -> bool:
    """Whether another member wants more group pulls than it holds slots for."""
    return any(
        _count(caps.get("demand")) > len(_slots(caps.get("slots"), limit))
        for caps in others.values()
    )


class FleetAgent:
    """`exporter.core.coordinator.Coordinator` over a coordination `Session`."""

    def __init__(self, open_session: SessionFactory, name: str, ttl: float, clock: Clock) -> None:
        self._open_session = open_session
        self._name = name
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}
        self._uses: dict[str, GroupUse] = {}
        self._session: Session | None = None
        self._member = ""
        self._lease_from = 0.0  # monotonic start of the last successful heartbeat
        self._next_heartbeat = 0.0
        self._up = False
        self._rounds = 0
        self._requests_before = 0  # requests of sessions already dropped
        self._sink: Callable[[CoordinationChanged], None] | None = None
        self._stop: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    # -- the Coordinator protocol -------------------------------------------------------------

    def allowances(self, now: float) -> Mapping[str, GroupAllowance]:
        with self._lock:
            return {name: self._allowance(group, now) for name, group in self._groups.items()}

    def report(self, groups: tuple[SharedGroup, ...], uses: tuple[GroupUse, ...]) -> None:
        with self._lock:
            wanted = {group.name: group for group in groups}
            for name, state in self._groups.items():
                state.leaving = name not in wanted
            for name, group in wanted.items():
                if name in self._groups:
                    self._groups[name].group = group
                else:
                    self._groups[name] = _Group(group)
            self._uses = {use.group: use for use in uses}

    def lease_end(self, now: float) -> float:
        with self._lock:
            if self._session is None or not any(g.held for g in self._groups.values()):
                return math.inf
            until = self._hold_until()
            return until if until > now else math.inf

    def status(self) -> CoordinationStatus:
        with self._lock:
            requests = self._requests_before + (self._session.requests if self._session else 0)
            return CoordinationStatus(
                up=self._up,
                requests=requests,
                groups=tuple(
                    GroupStatus(
                        g.group, len(g.held), g.share, g.cluster_slots, g.cluster_demand, g.members
                    )
                    for g in self._groups.values()
                    if not g.leaving
                ),
            )

    def subscribe(self, sink: Callable[[CoordinationChanged], None]) -> None:
        self._sink = sink

    def start(self) -> None:
        """Run rounds on a daemon thread until `close`."""
        self._thread = threading.Thread(target=self._run, name="fleet-agent", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.put(True)
        if self._thread is not None:
            self._thread.join(CLOSE_WAIT_SECONDS)
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    # -- rounds -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            began = self._clock.monotonic()
            self.round()
            rest = max(MIN_PAUSE_SECONDS, began + ROUND_SECONDS - self._clock.monotonic())
            if self._clock.wait(self._stop, rest) is not None:
                return

    def round(self) -> None:
        """One round: (re)connect, heartbeat when due, and settle every group once."""
        before = self.allowances(self._clock.monotonic())
        was_up = self._up
        try:
            self._round()
            self._up = True
        except CoordinationError as error:
            if was_up or self._rounds == 0:
                log.warning("coordination service unreachable: %s", error)
            self._up = False
        if self._up and not was_up and self._rounds > 0:
            log.info("coordination service reachable again")
        self._rounds += 1
        after = self.allowances(self._clock.monotonic())
        if self._sink is not None:
            self._sink(CoordinationChanged(allowances=after != before or was_up is not self._up))

    def _round(self) -> None:
        now = self._clock.monotonic()
        if self._session is not None and now >= self._hold_until():
            self._drop_session()
        if self._session is None:
            self._new_session(now)
        session = self._session
        assert session is not None
        self._keep_alive(session)
        with self._lock:
            groups = list(self._groups.items())
            uses = dict(self._uses)
        for name, group in groups:
            if group.leaving:
                self._leave(session, name, group)
            else:
                self._settle(session, group, uses.get(name))

    def _keep_alive(self, session: Session) -> None:
        """Heartbeat when due. Called between the requests of a round as well: over a slow
        network a round can take seconds, and the leases must not wait for it to end."""
        now = self._clock.monotonic()
        if now >= self._next_heartbeat:
            session.heartbeat()
            self._lease_from = now  # the lease runs from no later than the request's start
            self._next_heartbeat = now + self._ttl / HEARTBEATS_PER_TTL

    def _new_session(self, now: float) -> None:
        member = f"{self._name}.{uuid.uuid4().hex[:8]}"
        session = self._open_session(member)
        with self._lock:
            self._session, self._member = session, member
            self._lease_from = now
            self._next_heartbeat = now + self._ttl / HEARTBEATS_PER_TTL
            for group in self._groups.values():
                group.joined, group.published = False, None
        log.info("joined the coordination service as %s", member)

    def _drop_session(self) -> None:
        """The leases may be gone: forget every slot; the service forgets them by itself.

        The old session is closed on a thread of its own: its requests may each wait for the
        request timeout, and the next round must not wait for them."""
        with self._lock:
            session, self._session = self._session, None
            if session is not None:
                self._requests_before += session.requests
            for group in self._groups.values():
                group.held.clear()
                group.releasing.clear()
                group.joined, group.published = False, None
        if session is not None:
            threading.Thread(target=session.close, name="fleet-drop", daemon=True).start()
        log.warning(
            "no heartbeat reached the coordination service for %.0f s: group pulls stop "
            "(coordination_lost) until it answers again",
            self._ttl - hold_margin(self._ttl),
        )

    def _release(self, session: Session, state: _Group, slots: list[int]) -> None:
        """Give slots up: first here, so that no new pull is planned on them, then on the
        service. One that fails stays in `releasing` and is released again next round."""
        with self._lock:
            state.held.difference_update(slots)
            state.releasing.update(slots)
        for slot in sorted(state.releasing):
            session.release(state.group.name, slot)
            state.releasing.discard(slot)

    def _leave(self, session: Session, name: str, group: _Group) -> None:
        self._release(session, group, sorted(group.held))
        if group.joined:
            session.leave(name)
        with self._lock:
            del self._groups[name]

    def _settle(self, session: Session, state: _Group, use: GroupUse | None) -> None:
        group = state.group
        name, limit = group.name, group.max_concurrent
        demand = use.demand if use is not None else 0
        in_use = use.pulls if use is not None else 0
        if not state.joined:
            session.join(name, self._capabilities(demand, state.held))
            state.joined = True
            self._keep_alive(session)
        members = session.members(name)
        others = {m: caps for m, caps in members.items() if m != self._member}
        other_demands = [_count(caps.get("demand")) for caps in others.values()]
        taken = set().union(*(_slots(caps.get("slots"), limit) for caps in others.values()))
        published = _count(members.get(self._member, {}).get("demand"))
        level, leftover = water_level([*other_demands, demand], limit)
        cap = slot_cap(demand, level, leftover)
        surplus = max(0, len(state.held) - max(cap, in_use))
        full = len(taken) + len(state.held) >= limit
        if not surplus and len(state.held) > cap and full and _others_wait(others, limit):
            surplus = 1  # a slot in use above the fair cap, one a round: the planner stops a
            # pull (over_budget), which resumes where it stopped when a slot comes back
        self._release(session, state, sorted(state.held, reverse=True)[:surplus])
        # Take slots only for demand the others have seen: they cut their shares first.
        mine = state.held | state.releasing
        for slot in range(limit):
            if len(state.held) >= min(cap, published) or slot in taken or slot in mine:
                continue
            self._keep_alive(session)
            if session.acquire(name, slot):
                with self._lock:
                    state.held.add(slot)
        capabilities = self._capabilities(demand, state.held)
        if capabilities != state.published:
            session.publish(name, capabilities)
            state.published = capabilities
        cluster_demand = sum(other_demands) + max(demand, published)
        with self._lock:
            state.share = pull_share(group.bandwidth, limit, cluster_demand)
            state.cluster_slots = len(taken) + len(state.held)
            state.cluster_demand = sum(other_demands) + demand
            state.members = len(members)
            state.settled = True

    @staticmethod
    def _capabilities(demand: int, held: set[int]) -> dict[str, Any]:
        return {"demand": demand, "slots": sorted(held)}

    # -- allowances (under the lock) ------------------------------------------------------------

    def _hold_until(self) -> float:
        return self._lease_from + self._ttl - hold_margin(self._ttl)

    def _allowance(self, group: _Group, now: float) -> GroupAllowance:
        if self._session is None:
            return group.settling() if self._rounds == 0 else NOTHING
        if now >= self._hold_until():
            return NOTHING
        if not group.settled:
            return group.settling()
        return GroupAllowance(len(group.held), group.share, may_start=self._up)
