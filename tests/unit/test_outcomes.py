"""How a tracked pull's outcome is proven from the re-read host."""

from exporter.core.decisions import AbortReason
from exporter.core.memory import TrackedJob
from exporter.core.model import (
    BlockJob,
    Disk,
    DiskKey,
    Domain,
    DomainState,
    JobOutcome,
    JobType,
    Observation,
)
from exporter.core.outcomes import EVENT_GRACE_SECONDS, Outcome, OutcomeKind, settle

KEY = DiskKey("web-1", "vda")
CHAIN = ("/t/app.qcow2", "/t/os.qcow2")


def observe(chain=CHAIN, job=None, state=DomainState.RUNNING):
    disk = Disk("vda", "/i/web-1.qcow2", chain, job=job)
    return Observation((Domain("web-1", "u1", state, (disk,)),))


def tracked(base=None):
    return {KEY: TrackedJob(base=base, started_at=0.0, chain_before=CHAIN)}


def test_a_pull_still_running_has_no_outcome():
    result = settle(tracked(), observe(job=BlockJob(JobType.PULL, 5, 10, None)), {}, {}, 1.0)
    assert result.outcomes == ()
    assert result.still_running == {KEY}


def test_an_empty_chain_proves_a_full_pull_completed_without_any_event():
    result = settle(tracked(), observe(chain=()), {}, {}, 1.0)
    assert result.outcomes == (Outcome(KEY, OutcomeKind.COMPLETED),)


def test_a_chain_ending_at_the_base_proves_a_partial_pull_completed():
    result = settle(tracked(base="/t/os.qcow2"), observe(chain=("/t/os.qcow2",)), {}, {}, 1.0)
    assert result.outcomes == (Outcome(KEY, OutcomeKind.COMPLETED),)


def test_a_completed_event_with_an_unchanged_chain_is_not_completion():
    result = settle(tracked(), observe(), {KEY: JobOutcome.COMPLETED}, {}, 1.0)
    assert all(o.kind is not OutcomeKind.COMPLETED for o in result.outcomes)


def test_a_failed_event_with_an_unchanged_chain_is_a_failure():
    result = settle(tracked(), observe(), {KEY: JobOutcome.FAILED}, {}, 1.0)
    assert result.outcomes == (Outcome(KEY, OutcomeKind.FAILED),)


def test_a_stopped_domain_aborts_the_pull_even_without_events():
    result = settle(tracked(), observe(state=DomainState.SHUTOFF), {}, {}, 1.0)
    assert result.outcomes == (Outcome(KEY, OutcomeKind.ABORTED, AbortReason.DOMAIN_STOPPED),)


def test_a_vanished_domain_aborts_the_pull():
    result = settle(tracked(), Observation(()), {}, {}, 1.0)
    assert result.outcomes == (Outcome(KEY, OutcomeKind.ABORTED, AbortReason.DOMAIN_STOPPED),)


def test_a_vanished_job_waits_for_its_event_before_being_judged():
    result = settle(tracked(), observe(), {}, {}, 100.0)
    assert result.outcomes == ()
    assert result.unsettled == {KEY: 100.0}


def test_a_vanished_job_without_event_is_external_after_the_grace_period():
    later = 100.0 + EVENT_GRACE_SECONDS
    result = settle(tracked(), observe(), {}, {KEY: 100.0}, later)
    assert result.outcomes == (Outcome(KEY, OutcomeKind.ABORTED, AbortReason.EXTERNAL),)


def test_a_canceled_event_from_someone_else_is_an_external_abort():
    result = settle(tracked(), observe(), {KEY: JobOutcome.CANCELED}, {}, 1.0)
    assert result.outcomes == (Outcome(KEY, OutcomeKind.ABORTED, AbortReason.EXTERNAL),)


def test_an_adopted_partial_pull_completes_on_any_shorter_suffix_of_its_chain():
    result = settle(tracked(base=None), observe(chain=("/t/os.qcow2",)), {}, {}, 1.0)
    assert result.outcomes == (Outcome(KEY, OutcomeKind.COMPLETED),)


def test_a_replaced_chain_is_not_mistaken_for_completion():
    result = settle(tracked(), observe(chain=("/other.qcow2",)), {}, {}, 1.0)
    assert all(o.kind is not OutcomeKind.COMPLETED for o in result.outcomes)


def test_a_shut_off_domain_without_chain_is_not_mistaken_for_completion():
    # libvirt reports no backing chain for a domain that is not running.
    result = settle(tracked(), observe(chain=(), state=DomainState.SHUTOFF), {}, {}, 1.0)
    assert result.outcomes == (Outcome(KEY, OutcomeKind.ABORTED, AbortReason.DOMAIN_STOPPED),)


def test_a_shut_off_domain_whose_pull_announced_completion_counts_as_completed():
    events = {KEY: JobOutcome.COMPLETED}
    result = settle(tracked(), observe(chain=(), state=DomainState.SHUTOFF), events, {}, 1.0)
    assert result.outcomes == (Outcome(KEY, OutcomeKind.COMPLETED),)
