"""The simulated host behaves like libvirt 9.0 where the daemon can tell the difference."""

from __future__ import annotations

import json
import threading

import pytest

from exporter.core.clock import ManualClock
from exporter.core.model import (
    BlockJob,
    ConnectionEvent,
    Disk,
    DiskKey,
    DomainState,
    ErrorReason,
    HostError,
    HostEvent,
    JobEvent,
    JobOutcome,
    JobType,
    LifecycleEvent,
)
from exporter.hosts.sim.host import Latency, SimulatedHost
from exporter.hosts.sim.records import GiB, MiB, SimDisk
from exporter.hosts.sim.world import DEFAULT_EPOCH

APP = "/templates/app.qcow2"
BASE = "/templates/base.qcow2"
VDA = DiskKey("web-1", "vda")


class Recorder:
    """A sink that remembers each event with the simulated time it arrived at."""

    def __init__(self, host: SimulatedHost) -> None:
        self.host = host
        self.events: list[HostEvent] = []
        self.times: list[float] = []
        host.subscribe(self)

    def __call__(self, event: HostEvent) -> None:
        self.events.append(event)
        self.times.append(self.host.now() - DEFAULT_EPOCH)

    def job_events(self) -> list[JobEvent]:
        return [event for event in self.events if isinstance(event, JobEvent)]


def web_host(
    *, size: int | tuple[int, ...] = GiB, chain: tuple[str, ...] = (APP, BASE)
) -> SimulatedHost:
    """One running domain web-1 with vda on a two-image chain, device speed 100 MiB/s."""
    host = SimulatedHost(device_speed=100 * MiB)
    host.add_domain("web-1", [SimDisk("vda", "/images/web-1.qcow2", chain, size)])
    return host


def elapsed(host: SimulatedHost) -> float:
    return host.now() - DEFAULT_EPOCH


# -- building and observing ------------------------------------------------------------------


def test_add_domain_returns_the_keys_of_its_disks() -> None:
    host = SimulatedHost()
    keys = host.add_domain(
        "db-1", [SimDisk("vda", "/images/db-1.qcow2"), SimDisk("vdb", "/images/db-1-data")]
    )
    assert keys == (DiskKey("db-1", "vda"), DiskKey("db-1", "vdb"))


def test_observe_reports_domains_states_and_chains() -> None:
    host = web_host()
    host.add_domain("db-1", [SimDisk("vda", "/images/db-1.qcow2")], state=DomainState.SHUTOFF)
    observation = host.observe()
    web, db = observation.domains
    assert (web.name, web.state, db.name, db.state) == (
        "web-1",
        DomainState.RUNNING,
        "db-1",
        DomainState.SHUTOFF,
    )
    assert web.disks == (Disk("vda", "/images/web-1.qcow2", (APP, BASE)),)
    assert db.disks[0].chain == ()


def test_observe_reports_readonly_and_transient_flags() -> None:
    host = SimulatedHost()
    host.add_domain(
        "vm",
        [SimDisk("hdc", None, readonly=True), SimDisk("vdb", "/images/t", transient=True)],
    )
    hdc, vdb = host.observe().domains[0].disks
    assert (hdc.readonly, hdc.source, vdb.transient) == (True, None, True)


def test_domain_uuid_is_stable_for_a_name() -> None:
    first, second = SimulatedHost(), SimulatedHost()
    first.add_domain("web-1")
    second.add_domain("web-1")
    assert first.observe().domains[0].uuid == second.observe().domains[0].uuid


def test_adding_a_domain_twice_is_rejected() -> None:
    host = web_host()
    with pytest.raises(ValueError, match="already exists"):
        host.add_domain("web-1")


def test_sizes_must_match_the_chain() -> None:
    with pytest.raises(ValueError, match="2 sizes for 1 images"):
        SimulatedHost().add_domain("vm", [SimDisk("vda", "/i", (BASE,), (1, 2))])


def test_observe_reads_job_info_only_for_disks_with_a_job() -> None:
    host = web_host()
    host.add_domain("web-2", [SimDisk("vda", "/images/web-2.qcow2", (BASE,))])
    host.add_domain("web-3", [SimDisk("vda", "/images/web-3.qcow2", (BASE,))])
    host.start_pull(VDA, None, None)
    host.reset_calls()
    host.observe()
    calls = host.calls()
    assert (calls["list_domains"], calls["xml_reads"], calls["job_info_reads"]) == (1, 3, 1)


def test_calls_is_a_snapshot_that_later_calls_do_not_change() -> None:
    host = web_host()
    before = host.calls()
    host.observe()
    assert (before["observe"], host.calls()["observe"]) == (0, 1)


def test_refresh_jobs_costs_one_job_info_read_per_key() -> None:
    host = web_host()
    host.refresh_jobs([VDA, DiskKey("web-1", "vdb"), DiskKey("nope", "vda")])
    calls = host.calls()
    assert (calls["refresh_jobs"], calls["refresh_jobs_keys"], calls["job_info_reads"]) == (1, 3, 3)


def test_refresh_jobs_reports_none_for_disks_without_a_job() -> None:
    host = web_host()
    assert host.refresh_jobs([VDA, DiskKey("gone", "vda")]) == {
        VDA: None,
        DiskKey("gone", "vda"): None,
    }


def test_observe_shows_the_running_job_on_its_disk() -> None:
    host = web_host()
    host.start_pull(VDA, None, 10 * MiB)
    host.advance(1)
    (disk,) = host.observe().domains[0].disks
    assert disk.job == BlockJob(JobType.PULL, 10 * MiB, 2 * GiB, 10 * MiB)


# -- pulls ----------------------------------------------------------------------------------


def test_pull_started_right_now_reports_zero_cur_and_end() -> None:
    host = web_host()
    host.start_pull(VDA, None, None)
    assert host.refresh_jobs([VDA])[VDA] == BlockJob(JobType.PULL, 0, 0, None)


def test_pull_reports_its_end_once_time_moves_on() -> None:
    host = web_host()
    host.start_pull(VDA, None, None)
    host.advance(0.001)
    job = host.job(VDA)
    assert job is not None
    assert job.end == 2 * GiB


def test_pull_progresses_at_its_bandwidth() -> None:
    host = web_host()
    host.start_pull(VDA, None, 10 * MiB)
    host.advance(3)
    assert host.job(VDA) == BlockJob(JobType.PULL, 30 * MiB, 2 * GiB, 10 * MiB)


def test_unlimited_pull_runs_at_device_speed() -> None:
    host = web_host()
    host.start_pull(VDA, None, None)
    host.advance(2)
    job = host.job(VDA)
    assert job is not None
    assert (job.cur, job.bandwidth) == (200 * MiB, None)


def test_bandwidth_above_device_speed_is_capped_but_reported_as_set() -> None:
    host = web_host()
    host.start_pull(VDA, None, 1000 * MiB)
    host.advance(1)
    assert host.job(VDA) == BlockJob(JobType.PULL, 100 * MiB, 2 * GiB, 1000 * MiB)


def test_pull_copies_the_sum_of_the_images_above_the_base() -> None:
    host = web_host(size=(3 * GiB, 5 * GiB))
    host.start_pull(VDA, BASE, None)
    host.advance(1)
    job = host.job(VDA)
    assert job is not None
    assert job.end == 3 * GiB


def test_full_pull_empties_the_chain() -> None:
    host = web_host()
    host.start_pull(VDA, None, None)
    host.advance(60)
    assert host.chain(VDA) == ()


def test_partial_pull_keeps_the_base_and_below() -> None:
    host = web_host(chain=("/t/top-layer", APP, BASE))
    host.start_pull(VDA, APP, None)
    host.advance(60)
    assert host.chain(VDA) == (APP, BASE)


def test_completed_pull_disappears_and_emits_completed() -> None:
    host = web_host()
    sink = Recorder(host)
    host.start_pull(VDA, None, None)
    host.advance(60)
    assert (host.job(VDA), sink.job_events()) == (
        None,
        [JobEvent(VDA, JobType.PULL, JobOutcome.COMPLETED)],
    )


def test_pull_completes_at_its_exact_instant_within_a_long_advance() -> None:
    host = web_host()  # 2 GiB at 100 MiB/s: 20.48 s
    sink = Recorder(host)
    host.start_pull(VDA, None, None)
    host.advance(3600)
    assert (sink.times, elapsed(host)) == ([pytest.approx(20.48)], 3600)


def test_completions_crossed_by_one_advance_arrive_in_time_order() -> None:
    host = SimulatedHost(device_speed=GiB)
    slow, fast = DiskKey("a", "vda"), DiskKey("b", "vda")
    host.add_domain("a", [SimDisk("vda", "/a", (BASE,), 4 * GiB)])
    host.add_domain("b", [SimDisk("vda", "/b", (BASE,), 1 * GiB)])
    sink = Recorder(host)
    host.start_pull(slow, None, None)
    host.start_pull(fast, None, None)
    host.advance(100)
    assert [event.key for event in sink.job_events()] == [fast, slow]
    assert sink.times == [pytest.approx(1), pytest.approx(4)]


def test_sink_starting_a_pull_at_completion_gets_the_rest_of_the_advance() -> None:
    host = SimulatedHost(device_speed=GiB)
    first, second = DiskKey("a", "vda"), DiskKey("b", "vda")
    host.add_domain("a", [SimDisk("vda", "/a", (BASE,), 1 * GiB)])
    host.add_domain("b", [SimDisk("vda", "/b", (BASE,), 10 * GiB)])

    def start_next(event: HostEvent) -> None:
        if isinstance(event, JobEvent) and event.key == first:
            host.start_pull(second, None, None)

    host.subscribe(start_next)
    host.start_pull(first, None, None)
    host.advance(3)  # completes at 1 s; the second pull runs for the remaining 2 s
    job = host.job(second)
    assert job is not None
    assert job.cur == 2 * GiB


def test_pull_of_an_independent_disk_completes_as_soon_as_time_moves() -> None:
    host = web_host(chain=())
    sink = Recorder(host)
    host.start_pull(VDA, None, None)
    host.advance(0.001)
    assert sink.job_events() == [JobEvent(VDA, JobType.PULL, JobOutcome.COMPLETED)]


def test_advancing_by_zero_does_not_complete_a_pull_with_nothing_to_copy() -> None:
    host = web_host(chain=())
    host.start_pull(VDA, None, None)
    host.advance(0)
    assert host.job(VDA) == BlockJob(JobType.PULL, 0, 0, None)


def test_pull_down_to_the_nearest_image_completes_without_changing_the_chain() -> None:
    host = web_host()
    host.start_pull(VDA, APP, None)
    host.advance(1)
    assert (host.job(VDA), host.chain(VDA)) == (None, (APP, BASE))


def test_set_speed_changes_the_rate_from_now_on() -> None:
    host = web_host()
    host.start_pull(VDA, None, 10 * MiB)
    host.advance(2)
    host.set_speed(VDA, 30 * MiB)
    host.advance(2)
    assert host.job(VDA) == BlockJob(JobType.PULL, 80 * MiB, 2 * GiB, 30 * MiB)


def test_set_speed_moves_the_completion_instant() -> None:
    host = web_host(size=(50 * MiB, 50 * MiB))
    sink = Recorder(host)
    host.start_pull(VDA, None, 10 * MiB)
    host.advance(5)
    host.set_speed(VDA, 25 * MiB)  # 50 MiB left at 25 MiB/s
    host.advance(10)
    assert sink.times[-1] == pytest.approx(7)


def test_set_speed_none_means_unlimited() -> None:
    host = web_host()
    host.start_pull(VDA, None, 10 * MiB)
    host.set_speed(VDA, None)
    host.advance(1)
    assert host.job(VDA) == BlockJob(JobType.PULL, 100 * MiB, 2 * GiB, None)


def test_paused_domain_can_run_a_pull() -> None:
    host = SimulatedHost(device_speed=GiB)
    (key,) = host.add_domain("vm", [SimDisk("vda", "/i", (BASE,))], state=DomainState.PAUSED)
    host.start_pull(key, None, None)
    host.advance(2)
    assert host.chain(key) == ()


def test_pausing_a_domain_keeps_its_pull_running() -> None:
    host = web_host()
    host.start_pull(VDA, None, 10 * MiB)
    host.pause_domain("web-1")
    host.advance(1)
    assert (host.domain_state("web-1"), host.job(VDA)) == (
        DomainState.PAUSED,
        BlockJob(JobType.PULL, 10 * MiB, 2 * GiB, 10 * MiB),
    )


# -- errors, as libvirt raises them ----------------------------------------------------------


def test_start_pull_on_an_unknown_domain_raises_domain_not_found() -> None:
    with pytest.raises(HostError) as error:
        web_host().start_pull(DiskKey("nope", "vda"), None, None)
    assert error.value.reason is ErrorReason.DOMAIN_NOT_FOUND


def test_start_pull_on_a_shut_off_domain_raises_domain_not_running() -> None:
    host = web_host()
    host.shutdown_domain("web-1")
    with pytest.raises(HostError) as error:
        host.start_pull(VDA, None, None)
    assert error.value.reason is ErrorReason.DOMAIN_NOT_RUNNING


def test_start_pull_on_an_unknown_disk_raises_disk_not_found() -> None:
    with pytest.raises(HostError) as error:
        web_host().start_pull(DiskKey("web-1", "vdz"), None, None)
    assert error.value.reason is ErrorReason.DISK_NOT_FOUND


def test_start_pull_on_a_busy_disk_raises_disk_busy() -> None:
    host = web_host()
    host.start_pull(VDA, None, None)
    with pytest.raises(HostError) as error:
        host.start_pull(VDA, None, None)
    assert error.value.reason is ErrorReason.DISK_BUSY


def test_start_pull_with_a_base_outside_the_chain_raises_base_not_in_chain() -> None:
    with pytest.raises(HostError) as error:
        web_host().start_pull(VDA, "/templates/other.qcow2", None)
    assert error.value.reason is ErrorReason.BASE_NOT_IN_CHAIN


def test_start_pull_on_a_read_only_disk_fails() -> None:
    host = SimulatedHost()
    (key,) = host.add_domain("vm", [SimDisk("vda", "/i", (BASE,), readonly=True)])
    with pytest.raises(HostError) as error:
        host.start_pull(key, None, None)
    assert error.value.reason is ErrorReason.OTHER


def test_start_pull_on_a_transient_disk_fails() -> None:
    host = SimulatedHost()
    (key,) = host.add_domain("vm", [SimDisk("vda", "/i", (BASE,), transient=True)])
    with pytest.raises(HostError) as error:
        host.start_pull(key, None, None)
    assert error.value.reason is ErrorReason.OTHER


@pytest.mark.parametrize("bandwidth", [-1, 0])
def test_start_pull_with_a_bandwidth_that_is_not_positive_fails(bandwidth: int) -> None:
    with pytest.raises(HostError) as error:
        web_host().start_pull(VDA, None, bandwidth)  # unlimited is None
    assert error.value.reason is ErrorReason.OTHER


def test_failed_start_leaves_no_job() -> None:
    host = web_host()
    with pytest.raises(HostError):
        host.start_pull(VDA, "/not/in/chain", None)
    assert host.running_jobs() == {}


def test_set_speed_without_a_job_raises_no_job() -> None:
    with pytest.raises(HostError) as error:
        web_host().set_speed(VDA, MiB)
    assert error.value.reason is ErrorReason.NO_JOB


def test_abort_without_a_job_raises_no_job() -> None:
    with pytest.raises(HostError) as error:
        web_host().abort(VDA)
    assert error.value.reason is ErrorReason.NO_JOB


def test_abort_on_a_shut_off_domain_raises_domain_not_running() -> None:
    host = web_host()
    host.destroy_domain("web-1")
    with pytest.raises(HostError) as error:
        host.abort(VDA)
    assert error.value.reason is ErrorReason.DOMAIN_NOT_RUNNING


# -- abort and resume ------------------------------------------------------------------------


def test_abort_emits_canceled_and_keeps_the_chain() -> None:
    host = web_host()
    sink = Recorder(host)
    host.start_pull(VDA, None, None)
    host.advance(5)
    host.abort(VDA)
    assert (sink.job_events(), host.chain(VDA), host.job(VDA)) == (
        [JobEvent(VDA, JobType.PULL, JobOutcome.CANCELED)],
        (APP, BASE),
        None,
    )


def test_pull_resumed_after_abort_copies_only_the_rest() -> None:
    host = web_host()  # 2 GiB at 100 MiB/s: 20.48 s in one go
    sink = Recorder(host)
    host.start_pull(VDA, None, None)
    host.advance(15)
    host.abort(VDA)
    host.start_pull(VDA, None, None)
    host.advance(60)
    assert sink.times[-1] == pytest.approx(15 + 5.48)


def test_resumed_pull_jumps_over_the_copied_bytes_and_keeps_the_full_end() -> None:
    host = web_host()
    host.start_pull(VDA, None, None)
    host.advance(10)
    host.abort(VDA)
    host.start_pull(VDA, None, None)
    host.advance(1)
    assert host.job(VDA) == BlockJob(JobType.PULL, 1100 * MiB, 2 * GiB, None)


def test_resumed_copy_does_not_count_as_work_done_again() -> None:
    host = web_host()
    host.start_pull(VDA, None, None)
    host.advance(10)
    host.abort(VDA)
    host.start_pull(VDA, None, None)
    host.advance(60)
    assert host.bytes_copied_total() == 2 * GiB


def test_completed_pull_leaves_nothing_marked_as_copied() -> None:
    host = web_host()
    host.start_pull(VDA, BASE, None)
    host.advance(4)
    host.abort(VDA)
    host.start_pull(VDA, BASE, None)
    host.advance(60)
    assert host.copied(VDA) == 0


# -- faults ----------------------------------------------------------------------------------


def test_failed_job_vanishes_with_a_failed_event_and_the_chain_unchanged() -> None:
    host = web_host()
    sink = Recorder(host)
    host.start_pull(VDA, None, None)
    host.advance(1)
    host.fail_job(VDA)
    assert (host.job(VDA), sink.job_events(), host.chain(VDA)) == (
        None,
        [JobEvent(VDA, JobType.PULL, JobOutcome.FAILED)],
        (APP, BASE),
    )


def test_fail_next_start_raises_the_given_reason_once() -> None:
    host = web_host()
    host.fail_next_start(VDA, ErrorReason.DISK_BUSY, "try later")
    with pytest.raises(HostError) as error:
        host.start_pull(VDA, None, None)
    host.start_pull(VDA, None, None)
    assert (error.value.reason, error.value.message) == (ErrorReason.DISK_BUSY, "try later")
    assert host.job(VDA) is not None


def test_destroying_a_domain_mid_pull_emits_no_block_job_event() -> None:
    host = web_host()
    sink = Recorder(host)
    host.start_pull(VDA, None, None)
    host.advance(1)
    host.destroy_domain("web-1")
    host.advance(60)
    assert sink.events[-1:] == [LifecycleEvent("web-1", "stopped")]
    assert sink.job_events() == []


def test_destroyed_domain_is_shut_off_with_its_job_gone_and_chain_kept() -> None:
    host = web_host()
    host.start_pull(VDA, None, None)
    host.destroy_domain("web-1")
    assert (host.domain_state("web-1"), host.running_jobs(), host.chain(VDA)) == (
        DomainState.SHUTOFF,
        {},
        (APP, BASE),
    )


def test_shutting_down_a_domain_mid_pull_emits_only_stopped() -> None:
    host = web_host()
    sink = Recorder(host)
    host.start_pull(VDA, None, None)
    host.shutdown_domain("web-1")
    assert (sink.events, host.running_jobs()) == ([LifecycleEvent("web-1", "stopped")], {})


def test_starting_a_domain_emits_started_and_allows_pulls_again() -> None:
    host = web_host()
    host.destroy_domain("web-1")
    sink = Recorder(host)
    host.start_domain("web-1")
    host.start_pull(VDA, None, None)
    assert sink.events == [LifecycleEvent("web-1", "started")]


def test_removed_domain_disappears_from_observe() -> None:
    host = web_host()
    sink = Recorder(host)
    host.remove_domain("web-1")
    assert (host.observe().domains, sink.events) == (
        (),
        [LifecycleEvent("web-1", "stopped"), LifecycleEvent("web-1", "undefined")],
    )


def test_dropped_connection_fails_every_host_call() -> None:
    host = web_host()
    host.drop_connection()
    calls = [
        host.observe,
        lambda: host.refresh_jobs([VDA]),
        lambda: host.start_pull(VDA, None, None),
        lambda: host.set_speed(VDA, None),
        lambda: host.abort(VDA),
    ]
    reasons = []
    for call in calls:
        with pytest.raises(HostError) as error:
            call()
        reasons.append(error.value.reason)
    assert reasons == [ErrorReason.CONNECTION] * 5


def test_dropped_connection_emits_one_down_event() -> None:
    host = web_host()
    sink = Recorder(host)
    host.drop_connection("libvirtd restarted")
    host.drop_connection()
    assert sink.events == [ConnectionEvent(up=False, reason="libvirtd restarted")]


def test_restored_connection_emits_an_up_event_and_calls_work_again() -> None:
    host = web_host()
    host.drop_connection()
    sink = Recorder(host)
    host.restore_connection()
    assert (sink.events, len(host.observe().domains)) == ([ConnectionEvent(up=True)], 1)


def test_pull_finishing_while_disconnected_is_never_announced() -> None:
    host = web_host()
    sink = Recorder(host)
    host.start_pull(VDA, None, None)
    host.drop_connection()
    host.advance(60)
    host.restore_connection()
    assert (sink.job_events(), host.chain(VDA)) == ([], ())


def test_foreign_pull_progresses_and_completes_like_any_pull() -> None:
    host = web_host()
    sink = Recorder(host)
    host.add_foreign_job(VDA, JobType.PULL, 50 * MiB)
    host.advance(1)
    progress = host.job(VDA)
    host.advance(60)
    assert (progress, host.chain(VDA), sink.job_events()) == (
        BlockJob(JobType.PULL, 50 * MiB, 2 * GiB, 50 * MiB),
        (),
        [JobEvent(VDA, JobType.PULL, JobOutcome.COMPLETED)],
    )


def test_foreign_job_is_not_counted_as_a_start_pull_call() -> None:
    host = web_host()
    host.add_foreign_job(VDA)
    assert host.calls()["start_pull"] == 0


def test_foreign_copy_turns_ready_at_its_end_and_keeps_running() -> None:
    host = web_host()
    sink = Recorder(host)
    host.add_foreign_job(VDA, JobType.COPY, end=GiB)
    host.advance(60)
    assert (sink.job_events(), host.job(VDA), host.chain(VDA)) == (
        [JobEvent(VDA, JobType.COPY, JobOutcome.READY)],
        BlockJob(JobType.COPY, GiB, GiB, None),
        (APP, BASE),
    )


def test_foreign_copy_blocks_a_pull_on_its_disk() -> None:
    host = web_host()
    host.add_foreign_job(VDA, JobType.COPY)
    with pytest.raises(HostError) as error:
        host.start_pull(VDA, None, None)
    assert error.value.reason is ErrorReason.DISK_BUSY


def test_aborting_a_foreign_copy_emits_canceled() -> None:
    host = web_host()
    sink = Recorder(host)
    host.add_foreign_job(VDA, JobType.COPY)
    host.abort(VDA)
    assert sink.job_events() == [JobEvent(VDA, JobType.COPY, JobOutcome.CANCELED)]


def test_complete_silently_shortens_the_chain_without_any_event() -> None:
    host = web_host()
    sink = Recorder(host)
    host.start_pull(VDA, APP, None)
    host.complete_silently(VDA)
    assert (sink.events, host.job(VDA), host.chain(VDA)) == ([], None, (APP, BASE))


def test_complete_silently_a_full_pull_leaves_an_independent_disk() -> None:
    host = web_host()
    host.start_pull(VDA, None, None)
    host.complete_silently(VDA)
    assert host.chain(VDA) == ()


def test_set_chain_replaces_the_disk_and_forgets_copied_bytes() -> None:
    host = web_host()
    host.start_pull(VDA, None, None)
    host.advance(1)
    host.abort(VDA)
    host.set_chain(VDA, ("/templates/new.qcow2",), size=4 * GiB, source="/images/new.qcow2")
    disk = host.observe().domains[0].disks[0]
    assert (disk.source, disk.chain, host.copied(VDA)) == (
        "/images/new.qcow2",
        ("/templates/new.qcow2",),
        0,
    )


def test_set_chain_on_a_disk_with_a_job_is_rejected() -> None:
    host = web_host()
    host.start_pull(VDA, None, None)
    with pytest.raises(ValueError, match="block job"):
        host.set_chain(VDA, ())


# -- aggregates ------------------------------------------------------------------------------


def test_running_jobs_lists_each_running_job() -> None:
    host = web_host()
    (other,) = host.add_domain("web-2", [SimDisk("vda", "/images/web-2.qcow2", (BASE,))])
    host.start_pull(VDA, None, 10 * MiB)
    host.start_pull(other, None, 20 * MiB)
    host.advance(1)
    assert host.running_jobs() == {
        VDA: BlockJob(JobType.PULL, 10 * MiB, 2 * GiB, 10 * MiB),
        other: BlockJob(JobType.PULL, 20 * MiB, GiB, 20 * MiB),
    }


def test_bytes_copied_total_sums_the_work_of_running_and_ended_jobs() -> None:
    host = web_host()
    (other,) = host.add_domain("web-2", [SimDisk("vda", "/images/web-2.qcow2", (BASE,))])
    host.start_pull(VDA, None, 10 * MiB)
    host.start_pull(other, None, 20 * MiB)
    host.advance(2)
    host.abort(VDA)
    host.advance(1)
    assert host.bytes_copied_total() == 20 * MiB + 60 * MiB


def test_device_speed_change_applies_to_running_unlimited_jobs() -> None:
    host = web_host()
    host.start_pull(VDA, None, None)
    host.advance(1)
    host.set_device_speed(200 * MiB)
    host.advance(1)
    job = host.job(VDA)
    assert job is not None
    assert job.cur == 300 * MiB


# -- time and latency ------------------------------------------------------------------------


def test_advance_backwards_is_rejected() -> None:
    with pytest.raises(ValueError, match="forward"):
        SimulatedHost().advance(-1)


def test_host_clock_wait_stops_at_the_instant_of_an_event() -> None:
    import queue

    host = web_host()
    inbox: queue.SimpleQueue[HostEvent] = queue.SimpleQueue()
    host.subscribe(inbox.put)
    host.start_pull(VDA, None, None)
    event = host.clock.wait(inbox, 3600)
    assert (event, host.clock.time() - DEFAULT_EPOCH) == (
        JobEvent(VDA, JobType.PULL, JobOutcome.COMPLETED),
        pytest.approx(20.48),
    )


def test_host_clock_wait_returns_none_after_the_timeout() -> None:
    import queue

    host = web_host()
    inbox: queue.SimpleQueue[HostEvent] = queue.SimpleQueue()
    assert (host.clock.wait(inbox, 5), host.clock.monotonic() - DEFAULT_EPOCH) == (None, 5)


def test_host_following_an_injected_clock_offers_no_clock_of_its_own() -> None:
    with pytest.raises(ValueError, match="injected clock"):
        _ = SimulatedHost(clock=ManualClock()).clock


def test_many_speed_changes_keep_the_completion_instant_exact() -> None:
    host = web_host(size=(50 * MiB, 50 * MiB))
    sink = Recorder(host)
    host.start_pull(VDA, None, 10 * MiB)
    for _ in range(500):
        host.set_speed(VDA, 10 * MiB)
    host.advance(60)
    assert sink.times == [pytest.approx(10)]


def test_injected_clock_drives_progress() -> None:
    clock = ManualClock()
    host = SimulatedHost(clock=clock, device_speed=100 * MiB)
    (key,) = host.add_domain("vm", [SimDisk("vda", "/i", (BASE,))])
    host.start_pull(key, None, None)
    clock.advance(2)
    job = host.refresh_jobs([key])[key]
    assert job is not None
    assert job.cur == 200 * MiB


def test_injected_clock_catch_up_emits_completion_on_the_next_call() -> None:
    clock = ManualClock()
    host = SimulatedHost(clock=clock, device_speed=100 * MiB)
    (key,) = host.add_domain("vm", [SimDisk("vda", "/i", (BASE,))])
    sink = Recorder(host)
    host.start_pull(key, None, None)
    clock.advance(60)
    host.observe()
    assert sink.job_events() == [JobEvent(key, JobType.PULL, JobOutcome.COMPLETED)]


def test_observe_sleeps_through_the_latency_model() -> None:
    slept: list[float] = []
    host = SimulatedHost(latency=Latency(call=1, domain_xml=10, job_info=100), sleep=slept.append)
    host.add_domain("a", [SimDisk("vda", "/a", (BASE,))])
    host.add_domain("b", [SimDisk("vda", "/b", (BASE,))])
    host.start_pull(DiskKey("a", "vda"), None, None)
    slept.clear()
    host.observe()
    assert slept == [1 + 2 * 10 + 100]


def test_refresh_jobs_sleeps_per_key() -> None:
    slept: list[float] = []
    host = SimulatedHost(latency=Latency(job_info=0.5), sleep=slept.append)
    host.refresh_jobs([DiskKey("a", "vda"), DiskKey("b", "vda")])
    assert slept == [1.0]


def test_no_latency_means_no_sleep() -> None:
    slept: list[float] = []
    host = SimulatedHost(sleep=slept.append)
    host.add_domain("a", [SimDisk("vda", "/a", (BASE,))])
    host.observe()
    host.refresh_jobs([DiskKey("a", "vda")])
    assert slept == []


# -- events and threads ----------------------------------------------------------------------


def test_events_before_subscribing_are_not_delivered_later() -> None:
    host = web_host()  # emitted defined/started with nobody listening
    sink = Recorder(host)
    host.observe()
    assert sink.events == []


def test_close_forgets_the_sink_but_the_host_stays_usable() -> None:
    host = web_host()
    sink = Recorder(host)
    host.close()
    host.start_pull(VDA, None, None)
    host.advance(60)
    assert (sink.events, host.chain(VDA)) == ([], ())


def test_sink_may_call_the_host_back() -> None:
    host = web_host()
    seen: list[tuple[str, ...]] = []

    def sink(event: HostEvent) -> None:
        if isinstance(event, JobEvent):
            seen.append(host.observe().domains[0].disks[0].chain)

    host.subscribe(sink)
    host.start_pull(VDA, None, None)
    host.advance(60)
    assert seen == [()]


def test_concurrent_advance_and_calls_stay_consistent() -> None:
    host = SimulatedHost(device_speed=GiB)
    keys = [host.add_domain(f"vm-{n}", [SimDisk("vda", f"/i/{n}", (BASE,))])[0] for n in range(20)]
    for key in keys:
        host.start_pull(key, None, None)
    errors: list[BaseException] = []

    def observer() -> None:
        try:
            for _ in range(200):
                host.observe()
                host.refresh_jobs(keys)
        except BaseException as error:  # surfaced by the assert below
            errors.append(error)

    thread = threading.Thread(target=observer)
    thread.start()
    for _ in range(200):
        host.advance(0.01)
    thread.join()
    assert (errors, host.running_jobs(), host.bytes_copied_total()) == ([], {}, 20 * GiB)


# -- state ------------------------------------------------------------------------------------


def test_state_round_trip_preserves_chains_jobs_progress_and_faults() -> None:
    host = web_host()
    (other,) = host.add_domain("web-2", [SimDisk("vda", "/images/web-2.qcow2", (BASE,))])
    host.start_pull(VDA, None, 10 * MiB)
    host.add_foreign_job(other, JobType.COPY, end=GiB)
    host.advance(3)
    host.fail_next_start(VDA, ErrorReason.OTHER, "boom")
    copy = SimulatedHost.from_state(json.loads(json.dumps(host.to_state())))
    host.advance(7)
    copy.advance(7)
    assert copy.observe() == host.observe()
    assert copy.to_state() == host.to_state()


def test_state_of_another_version_is_rejected() -> None:
    state = web_host().to_state()
    state["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        SimulatedHost.from_state(state)
