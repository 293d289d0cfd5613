"""plan() invariants on random hosts, policies, memories, holds and times (hypothesis).

Each generated case is planned, the actions are applied one by one to the observation by a
perfect host (`builders.apply`), and the invariants (`invariants.py`) are checked on the way and
on the result. Rule selection is checked against a plain fnmatchcase oracle. The guards too:
no pull on a held domain, never two pulls in one domain (and none where a job runs), starts
only in domains read in full, no file system taken below its min_free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time
from fnmatch import fnmatchcase

from builders import apply
from example_counts import scaled
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exporter.core import schedule
from exporter.core.decisions import AbortPull, AbortReason, DiskState, Plan, StartPull
from exporter.core.holds import NO_HOLDS, Hold, HoldSet
from exporter.core.memory import Failures, Memory, TrackedJob
from exporter.core.model import (
    BlockJob,
    ChainUsage,
    Disk,
    DiskKey,
    Domain,
    DomainState,
    FileSystem,
    Inspection,
    JobType,
    Observation,
    Unmeasured,
)
from exporter.core.planner import backoff_delay, plan
from exporter.core.space import still_to_write
from exporter.policy.values import (
    Budget,
    Defaults,
    MinFree,
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
    cur=st.sampled_from((0, 0, 40)),
    end=st.sampled_from((100, 100, 0)),
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
        local_file=draw(st.booleans()),
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


# The tops live in /top: one file system, with room for some of the pulls, or unmeasurable.
TOP = "/top"
SIZES = (0, 10, 40, 100)
file_systems = st.sampled_from(
    (
        {TOP: FileSystem(TOP, 1000, 1000)},
        {TOP: FileSystem(TOP, 1000, 300)},
        {TOP: FileSystem(TOP, 1000, 150)},
        {TOP: FileSystem(TOP, 1000, 50)},
        {TOP: Unmeasured(TOP, "denied")},
        {},
    )
)


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    names = draw(st.lists(st.sampled_from(DOMAIN_NAMES), min_size=1, max_size=5, unique=True))
    obs = Observation(tuple(draw(domains(n)) for n in names), draw(file_systems))
    read: dict[str, Inspection] = {}
    for dom in obs.domains:
        if draw(st.sampled_from((True, True, False))):  # read in full, or not yet
            seen = {d.target: d.job for d in dom.disks if d.job is not None}
            if draw(st.integers(0, 4)) == 0:  # a job the sweep had not seen yet, or one gone
                hidden = draw(jobs | pulls) if draw(st.booleans()) else None
                target = draw(st.sampled_from([d.target for d in dom.disks]))
                seen = {t: j for t, j in seen.items() if t != target}
                seen.update({target: hidden} if hidden is not None else {})
            usage = {
                d.target: ChainUsage(100, tuple(draw(st.sampled_from(SIZES)) for _ in d.chain))
                for d in dom.disks
                if draw(st.integers(0, 5)) > 0
            }
            read[dom.name] = Inspection(seen, usage)
    return obs.with_inspections(read)


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
            min_free=draw(st.sampled_from((MinFree(percent=10), MinFree(bytes=100), MinFree()))),
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
    interruptions: dict[DiskKey, Failures] = {}
    tracked: dict[DiskKey, TrackedJob] = {}
    for key, (_, d) in sorted(obs.disks().items()):
        for records in (failures, interruptions):
            if draw(st.booleans()):
                records[key] = Failures(
                    count=draw(st.sampled_from((1, 2, 1, 3, 5))),
                    last_failure_at=now.timestamp() - draw(st.sampled_from((0, 30, 0, 90, 7200))),
                    disk_fingerprint=draw(st.sampled_from((d.fingerprint, d.fingerprint, "x"))),
                    policy_fingerprint=draw(st.sampled_from(("p1", "p1", "p2"))),
                )
        if d.job is not None and d.job.type is JobType.PULL and draw(st.booleans()):
            growth = draw(st.sampled_from((None, 0, 30, 200)))
            tracked[key] = TrackedJob(None, now.timestamp(), d.chain, growth)
    return Memory(failures=failures, tracked=tracked, interruptions=interruptions)


hold_globs = st.sampled_from(("web-*", "db-1", "*", "nothing"))


@st.composite
def hold_sets(draw: st.DrawFn, now: datetime) -> HoldSet:
    ts = now.timestamp()
    holds = [
        Hold(draw(hold_globs), ts - 60, ts + draw(st.sampled_from((-1, 600))), "", "ops")
        for _ in range(draw(st.sampled_from((0, 0, 1, 2))))
    ]
    return HoldSet(tuple(holds), error="unreadable" if draw(st.integers(0, 15)) == 0 else None)


@dataclass(frozen=True)
class Case:
    obs: Observation
    policy: Policy
    now: datetime
    memory: Memory
    holds: HoldSet = NO_HOLDS


@st.composite
def cases(draw: st.DrawFn) -> Case:
    obs, now = draw(observations()), draw(nows)
    return Case(obs, draw(policies()), now, draw(memories(obs, now)), draw(hold_sets(now)))


# The shrunk counterexample of issue 18, run on every seed: domain "app" pulls sda under the
# catch-all rule, whose only window never opens (pause), while vdb is due under an open rule.
# The first plan aborts sda and holds vdb; the plan after it starts vdb.
NEVER = Window("w1", frozenset(), None, None, False, None, None)
ISSUE_18 = Case(
    obs=Observation(
        (
            Domain(
                "app",
                "uuid-app",
                DomainState.RUNNING,
                (
                    Disk("sda", "/top/sda.qcow2", (), job=BlockJob(JobType.PULL, 0, 100, None)),
                    Disk("vdb", "/top/vdb.qcow2", ("/t/base-a.qcow2",)),
                ),
            ),
        )
    ),
    policy=Policy(
        version=1,
        timezone="UTC",
        defaults=Defaults(
            budget=Budget(None, 3),
            outside_windows=OutsideWindows.PAUSE,
            retry=Retry(max_attempts=4, backoff=60.0, max_backoff=60.0),
        ),
        windows=(NEVER, replace(NEVER, name="w2")),
        rules=(
            Rule("r0", (), (), ("/t/*",), (), (), None, (), 0, RuleAction.PULL),
            Rule("rest", ("*",), ("*",), (), (), (), None, ("w1",), 0, RuleAction.PULL),
        ),
        source="<hypothesis>",
        fingerprint="p1",
    ),
    now=datetime(2024, 3, 25, tzinfo=UTC),
    memory=Memory(),
)


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
    retry = case.policy.defaults.retry
    for records, gives_up in ((case.memory.failures, True), (case.memory.interruptions, False)):
        f = records.get(key)
        if f is None or (f.disk_fingerprint, f.policy_fingerprint) != (
            d.fingerprint,
            case.policy.fingerprint,
        ):
            continue
        if gives_up and f.count >= retry.max_attempts:
            return True
        if case.now.timestamp() < f.last_failure_at + backoff_delay(retry, f.count):
            return True
    return False


def held(case: Case, domain: str) -> bool:
    return case.holds.holding(domain, case.now.timestamp()) is not None


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


@settings(max_examples=scaled(500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
@example(ISSUE_18)
def test_plan_invariants_hold_on_random_hosts(case: Case) -> None:
    pol, obs = case.policy, case.obs
    result = plan(obs, pol, case.now, case.memory, holds=case.holds)
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

    # Actions only on disks a pull rule selects, of running domains (or the daemon's own pull
    # on a disk the policy no longer selects: aborted); starts only when allowed.
    by_key = {d.key: d for d in result.decisions}
    for action in result.actions:
        dom, d = disks[action.key]
        r = oracle_rule(pol, dom, d)
        assert dom.state.can_run_jobs
        if isinstance(action, AbortPull) and action.reason is AbortReason.DESELECTED:
            assert action.key in case.memory.tracked
            assert r is None or r.action is RuleAction.IGNORE
            continue
        assert r is not None and r.action is RuleAction.PULL
        if isinstance(action, StartPull):
            assert d.job is None
            assert schedule.rule_open(r, result.open_windows)
            assert not waiting_on_failures(case, action.key, d)
            assert by_key[action.key].state is DiskState.PULLING
            assert not held(case, dom.name)
            assert dom.name in obs.inspections  # read in full first
            assert all(k.job is None for k in dom.disks)  # nothing else runs in the domain
    starts = [a for a in result.actions if isinstance(a, StartPull)]
    assert len({a.key.domain for a in starts}) == len(starts)  # one pull per domain
    check_guards(case, result)

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


def check_guards(case: Case, result: Plan) -> None:
    """Holds, deselection and min_free, as decided on the observation."""
    disks = case.obs.disks()
    aborted = {a.key: a.reason for a in result.actions if isinstance(a, AbortPull)}
    states = {d.key: d.state for d in result.decisions}
    for key, (dom, d) in disks.items():
        ours = key in case.memory.tracked and d.job is not None and d.job.type is JobType.PULL
        r = oracle_rule(case.policy, dom, d)
        if ours and dom.state.can_run_jobs and (r is None or r.action is RuleAction.IGNORE):
            assert key in aborted  # deselected by the policy: the daemon's pull goes
        if held(case, dom.name):  # no pull of the daemon's goes on, or starts, there
            assert states[key] is not DiskState.PULLING
            assert key in aborted or states[key] is not DiskState.HELD or not ours
    min_free = case.policy.defaults.min_free
    fs = case.obs.file_systems.get(TOP)
    starts = [a for a in result.actions if isinstance(a, StartPull) and disks[a.key][1].local_file]
    if not starts or min_free.off:
        return
    assert isinstance(fs, FileSystem)  # nothing starts where free space cannot be measured
    assert all(a.growth is not None for a in starts)
    running = sum(
        still_to_write(d.job, t.growth if (t := case.memory.tracked.get(k)) else None)
        for k, (_, d) in disks.items()
        if d.local_file and d.job is not None and d.job.type is JobType.PULL and k not in aborted
    )
    assert sum(a.growth or 0 for a in starts) + running <= fs.free - min_free.floor(fs.size)


def check_applied(case: Case, first: Plan, host: Observation) -> None:
    pol = case.policy
    memory = remembered(case.memory, first, case.now)
    again = plan(host, pol, case.now, memory, holds=case.holds)
    check_held_starts(first, again)
    host = apply(host, again.actions)
    memory = remembered(memory, again, case.now)
    assert plan(host, pol, case.now, memory, holds=case.holds).actions == ()  # idempotent

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


def remembered(memory: Memory, acted: Plan, now: datetime) -> Memory:
    """What the controller remembers of a plan's actions: its pulls, and what they may write."""
    for action in acted.actions:
        if isinstance(action, StartPull):
            job = TrackedJob(action.base, now.timestamp(), (), action.growth)
            memory = memory.with_tracked(action.key, job)
        elif isinstance(action, AbortPull):
            memory = memory.without_tracked(action.key)
    return memory


def check_held_starts(first: Plan, again: Plan) -> None:
    """Idempotent, except a start held behind an abort in the same domain: planned again after
    acting, a plan makes exactly the starts the first one held, and nothing else.

    One pull per domain at a time, and a pull this plan aborts holds its domain until a fresh
    observation shows it gone (exporter.planner, `_one_pull_per_domain`): the controller plans
    again at once after such a plan, so the held start waits for no timer.
    """
    aborted = {a.key.domain for a in first.actions if isinstance(a, AbortPull)}
    started = {a.key.domain for a in first.actions if isinstance(a, StartPull)}
    held = first.held_starts
    assert list(held) == sorted(set(held))
    assert len({k.domain for k in held}) == len(held)  # one per domain
    states = {d.key: d.state for d in first.decisions}
    for k in held:
        assert k.domain in aborted and k.domain not in started
        assert states[k] is DiskState.PENDING
    assert all(isinstance(a, StartPull) for a in again.actions), again.actions
    assert sorted(a.key for a in again.actions) == list(held)
    assert again.held_starts == ()
