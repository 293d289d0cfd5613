"""plan() invariants on random hosts, policies, memories and times (hypothesis).

Each generated case is planned, the actions are applied one by one to the observation by a
perfect host (`builders.apply`), and the invariants of DESIGN.md are checked on the way and
on the result. Rule selection is checked against a plain fnmatchcase oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, time
from fnmatch import fnmatchcase

from builders import apply
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.core import schedule
from exporter.core.decisions import AbortPull, DiskState, Plan, StartPull
from exporter.core.memory import Failures, Memory
from exporter.core.model import BlockJob, Disk, DiskKey, Domain, DomainState, JobType, Observation
from exporter.core.planner import backoff_delay, plan
from exporter.policy.values import (
    Budget,
    Defaults,
    OutsideWindows,
    Policy,
    Retry,
    Rule,
    RuleAction,
    Window,
)

IMAGES = ("/t/base-a.qcow2", "/t/base-b.qcow2", "/o/mid-1.qcow2", "/o/mid-2.qcow2", "/x/raw")
DOMAIN_NAMES = ("web-1", "web-2", "db-1", "db-2", "app")
TARGETS = ("vda", "vdb", "sda")
WINDOW_NAMES = ("w1", "w2")
BANDWIDTHS = (None, 1, 3, 50, 1000, 10**6)
# Biased towards what the planner acts on: running domains, pull jobs, pull rules.
STATES = (DomainState.RUNNING,) * 4 + (DomainState.PAUSED, DomainState.SHUTOFF, DomainState.OTHER)
BUDGET_BANDWIDTHS = (None, 1, 2, 7, 100, 1000, 10**6)

WAITING = DiskState.WAITING_WINDOW  # failures are judged before windows

# -- strategies -----------------------------------------------------------------------------

jobs = st.builds(
    BlockJob,
    type=st.sampled_from(JobType),
    cur=st.just(0),
    end=st.just(100),
    bandwidth=st.sampled_from(BANDWIDTHS),
)
pulls = jobs.map(lambda j: BlockJob(JobType.PULL, j.cur, j.end, j.bandwidth))
maybe_job = st.sampled_from((False, False, True)).flatmap(
    lambda j: jobs | pulls if j else st.none()
)


@st.composite
def disks(draw: st.DrawFn, target: str) -> Disk:
    return Disk(
        target=target,
        source=None if draw(st.integers(0, 7)) == 0 else f"/top/{target}.qcow2",
        chain=tuple(draw(st.lists(st.sampled_from(IMAGES), max_size=3, unique=True))),
        readonly=draw(st.integers(0, 7)) == 0,
        transient=draw(st.integers(0, 7)) == 0,
        job=draw(maybe_job),
    )


@st.composite
def domains(draw: st.DrawFn, name: str) -> Domain:
    targets = draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=3, unique=True))
    return Domain(
        name=name,
        uuid=f"uuid-{name}",
        state=draw(st.sampled_from(STATES)),
        disks=tuple(draw(disks(t)) for t in targets),
    )


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    names = draw(st.lists(st.sampled_from(DOMAIN_NAMES), min_size=1, max_size=5, unique=True))
    return Observation(tuple(draw(domains(n)) for n in names))


# Broad globs are drawn more often, so that most disks are selected by some rule.
globs = st.sampled_from(((), ("*",), ("*",), ("web-*",), ("db-*", "app"), ("*-1",), ("?eb-2",)))
disk_globs = st.sampled_from(((), ("*",), ("*",), ("vd*",), ("sda", "vd[b]")))
backing_globs = st.sampled_from(((),) * 4 + (("/t/*",), ("/o/*", "/x/raw")))
excludes = st.sampled_from(((),) * 4 + (("web-2",), ("app", "db-?")))
clock = st.none() | st.builds(time, st.integers(0, 23), st.sampled_from((0, 30)))


@st.composite
def windows(draw: st.DrawFn, name: str) -> Window:
    start, end = draw(clock), draw(clock)
    overrides = draw(st.booleans())
    return Window(
        name=name,
        days=frozenset(draw(st.lists(st.integers(0, 6), max_size=7))),
        start=start if end is not None else None,
        end=end if start is not None else None,
        overrides_bandwidth=overrides,
        bandwidth=draw(st.sampled_from(BUDGET_BANDWIDTHS)) if overrides else None,
        max_concurrent=draw(st.none() | st.integers(0, 4)),
    )


@st.composite
def rules(draw: st.DrawFn, name: str) -> Rule:
    return Rule(
        name=name,
        domains=draw(globs),
        disks=draw(disk_globs),
        backing=draw(backing_globs),
        exclude_domains=draw(excludes),
        exclude_disks=draw(st.sampled_from(((),) * 4 + (("vdb",), ("sd*",)))),
        keep_base=draw(st.sampled_from((None,) * 4 + ("/t/*", "/t/base-a.qcow2", "/o/*"))),
        windows=tuple(draw(st.lists(st.sampled_from(WINDOW_NAMES), max_size=2, unique=True))),
        priority=draw(st.integers(0, 3)),
        action=draw(st.sampled_from((RuleAction.PULL,) * 4 + (RuleAction.IGNORE,))),
    )


# Half the policies end with a catch-all pull rule, as real ones often do.
catch_all = st.sampled_from(((), ("w1",))).flatmap(
    lambda w: st.sampled_from(
        ((), (Rule("rest", ("*",), ("*",), (), (), (), None, w, 0, RuleAction.PULL),))
    )
)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    count = draw(st.sampled_from((2, 3, 1, 2, 3, 0)))
    return Policy(
        version=1,
        timezone=draw(st.sampled_from(("UTC", "Europe/Berlin"))),
        defaults=Defaults(
            budget=Budget(
                draw(st.sampled_from(BUDGET_BANDWIDTHS)), draw(st.sampled_from((3, 2, 4, 1, 0)))
            ),
            outside_windows=draw(st.sampled_from(OutsideWindows)),
            retry=Retry(
                max_attempts=draw(st.sampled_from((4, 3, 2, 1))),
                backoff=draw(st.sampled_from((60.0, 60.0, 1.0, 0.0))),
                max_backoff=draw(st.sampled_from((60.0, 3600.0))),
            ),
        ),
        windows=tuple(draw(windows(n)) for n in WINDOW_NAMES),
        rules=tuple(draw(rules(f"r{i}")) for i in range(count)) + draw(catch_all),
        source="<hypothesis>",
        fingerprint="p1",
    )


nows = st.datetimes(
    min_value=datetime(2024, 3, 25), max_value=datetime(2024, 4, 2), timezones=st.just(UTC)
)


@st.composite
def memories(draw: st.DrawFn, obs: Observation, now: datetime) -> Memory:
    failures: dict[DiskKey, Failures] = {}
    for key, (_, d) in sorted(obs.disks().items()):
        if draw(st.booleans()):
            failures[key] = Failures(
                count=draw(st.sampled_from((1, 2, 1, 3, 5))),
                last_failure_at=now.timestamp() - draw(st.sampled_from((0, 30, 0, 90, 7200))),
                disk_fingerprint=draw(st.sampled_from((d.fingerprint, d.fingerprint, "stale"))),
                policy_fingerprint=draw(st.sampled_from(("p1", "p1", "p2"))),
            )
    return Memory(failures=failures)


@dataclass(frozen=True)
class Case:
    obs: Observation
    policy: Policy
    now: datetime
    memory: Memory


@st.composite
def cases(draw: st.DrawFn) -> Case:
    obs, now = draw(observations()), draw(nows)
    return Case(obs, draw(policies()), now, draw(memories(obs, now)))


# -- oracles --------------------------------------------------------------------------------


def any_glob(text: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(text, p) for p in patterns)


def oracle_rule(pol: Policy, dom: Domain, d: Disk) -> Rule | None:
    for r in pol.rules:
        if (
            (not r.domains or any_glob(dom.name, r.domains))
            and not any_glob(dom.name, r.exclude_domains)
            and (not r.disks or any_glob(d.target, r.disks))
            and not any_glob(d.target, r.exclude_disks)
            and (not r.backing or any(any_glob(i, r.backing) for i in d.chain))
        ):
            return r
    return None


def waiting_on_failures(case: Case, key: DiskKey, d: Disk) -> bool:
    f = case.memory.failures.get(key)
    if f is None or (f.disk_fingerprint, f.policy_fingerprint) != (
        d.fingerprint,
        case.policy.fingerprint,
    ):
        return False
    retry = case.policy.defaults.retry
    return f.count >= retry.max_attempts or (
        case.now.timestamp() < f.last_failure_at + backoff_delay(retry, f.count)
    )


def aggregate(obs: Observation, managed: set[DiskKey]) -> float:
    """Bytes/s of every job; a managed unlimited pull counts as infinite, a foreign one as 0."""
    total = 0.0
    for key, (_, d) in obs.disks().items():
        if d.job is not None:
            unlimited = math.inf if key in managed else 0.0
            total += unlimited if d.job.bandwidth is None else d.job.bandwidth
    return total


def touched(result: Plan) -> set[DiskKey]:
    return {a.key for a in result.actions}


# -- the property ---------------------------------------------------------------------------


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_plan_invariants_hold_on_random_hosts(case: Case) -> None:
    pol, obs = case.policy, case.obs
    result = plan(obs, pol, case.now, case.memory)
    disks = obs.disks()
    budget = schedule.budget_at(pol, schedule.open_windows(pol, case.now))
    assert result.budget == budget

    # Every disk exactly one decision, sorted, with the oracle's rule.
    assert [d.key for d in result.decisions] == sorted(disks)
    for decision in result.decisions:
        dom, d = disks[decision.key]
        expected = oracle_rule(pol, dom, d)
        assert decision.rule == (expected.name if expected else None)
        assert decision.depth == len(d.chain)
        if d.job is None and waiting_on_failures(case, decision.key, d):
            assert decision.state not in (WAITING, DiskState.PENDING, DiskState.PULLING)

    # Actions only on disks a pull rule selects, of running domains; starts only when allowed.
    by_key = {d.key: d for d in result.decisions}
    for action in result.actions:
        dom, d = disks[action.key]
        r = oracle_rule(pol, dom, d)
        assert r is not None and r.action is RuleAction.PULL
        assert dom.state.can_run_jobs
        if isinstance(action, StartPull):
            assert d.job is None
            assert schedule.rule_open(r, result.open_windows)
            assert not waiting_on_failures(case, action.key, d)
            assert by_key[action.key].state is DiskState.PULLING

    # Applied one by one, each action lowers the aggregate or leaves it within the budget,
    # and a start always leaves it within the budget.
    managed = touched(result) | {d.key for d in result.decisions if d.state is DiskState.PULLING}
    state, before = obs, aggregate(obs, managed)
    for action in result.actions:
        state = apply(state, (action,))
        after = aggregate(state, managed)
        if budget.bandwidth is not None:
            within = after <= budget.bandwidth
            assert within or (after <= before and not isinstance(action, StartPull)), action
        before = after
    check_applied(case, result, state)


def check_applied(case: Case, first: Plan, host: Observation) -> None:
    pol = case.policy
    again = plan(host, pol, case.now, case.memory)
    assert again.actions == ()  # idempotent

    disks = host.disks()
    states = {d.key: d.state for d in again.decisions}
    ours = {
        k for k, (_, d) in disks.items() if d.job is not None and states[k] is DiskState.PULLING
    }
    foreign = [d.job for k, (_, d) in disks.items() if d.job is not None and k not in ours]
    budget = first.budget

    if len(foreign) >= budget.max_concurrent:
        assert not ours
        assert not any(isinstance(a, StartPull) for a in first.actions)
    else:
        assert len(ours) + len(foreign) <= budget.max_concurrent

    if budget.bandwidth is not None:
        limits = [disks[k][1].job.bandwidth for k in ours]  # type: ignore[union-attr]
        assert all(limit is not None for limit in limits)
        foreign_bw = sum(j.bandwidth for j in foreign if j is not None and j.bandwidth is not None)
        assert not ours or sum(limits) + foreign_bw <= budget.bandwidth

    for k in ours:
        dom, d = disks[k]
        r = oracle_rule(pol, dom, d)
        assert r is not None and r.action is RuleAction.PULL
        if not schedule.rule_open(r, first.open_windows):
            assert pol.defaults.outside_windows is OutsideWindows.FINISH
            assert not any(isinstance(a, StartPull) and a.key == k for a in first.actions)

    aborted = {a.key for a in first.actions if isinstance(a, AbortPull)}
    assert all(disks[k][1].job is None for k in aborted)
