"""LibvirtHost against a real libvirtd 9.0 + QEMU (qemu:///system), small TCG domains."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
from conftest import HostUnderTest
from harness.libvirt_lab import DiskSpec, Lab
from harness.libvirtd import URI
from harness.own_names import unique_name
from harness.qemu_images import (
    MIB,
    Chain,
    backing_file_name,
    create_chain,
    flatten,
    same_content,
)
from harness.waiting import next_item, wait_for

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
from exporter.hosts.libvirt.event_loop import shared_loop
from exporter.hosts.libvirt.host import LibvirtHost

SLOW = 1 * MIB  # a 32 MiB pull at this speed lasts ~32 s: long enough to act on it mid-way


def _domain_with_chain(
    domains: Lab, folder: Path, depth: int = 1, relative: bool = False
) -> tuple[DiskKey, Chain]:
    chain = create_chain(folder, depth=depth, relative=relative)
    dom = domains.start("pull", [DiskSpec("vda", chain.top)])
    return DiskKey(dom.name(), "vda"), chain


def _disk(ut: HostUnderTest, key: DiskKey) -> Disk:
    return ut.host.observe().disks()[key][1]


def _job(ut: HostUnderTest, key: DiskKey) -> BlockJob | None:
    return ut.host.refresh_jobs([key])[key]


def _job_event(ut: HostUnderTest, key: DiskKey, timeout: float = 30.0) -> HostEvent | None:
    return next_item(ut.events, lambda e: isinstance(e, JobEvent) and e.key == key, timeout)


def _wait_chain(ut: HostUnderTest, key: DiskKey, chain: tuple[str, ...]) -> bool:
    return wait_for(lambda: _disk(ut, key).chain == chain, timeout=30)


def _raises(reason: ErrorReason, call: Callable[..., object], *args: object) -> HostError:
    with pytest.raises(HostError) as caught:
        call(*args)
    assert caught.value.reason is reason, caught.value
    assert caught.value.message  # libvirt's own words are kept
    return caught.value


# -- observe ---------------------------------------------------------------------------------


def test_observe_reports_disk_source_and_chain_nearest_first(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, chain = _domain_with_chain(domains, image_folder, depth=2)
    domain, disk = libvirt_host.host.observe().disks()[key]
    assert domain.state is DomainState.PAUSED
    assert disk.source == str(chain.top)
    assert disk.chain == chain.backing
    assert disk.job is None


def test_observe_reports_independent_and_readonly_disks(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    plain = create_chain(image_folder, name="plain", depth=0).base
    shared = create_chain(image_folder, name="ro", depth=0).base
    dom = domains.start("plain", [DiskSpec("vda", plain), DiskSpec("vdb", shared, readonly=True)])
    disks = libvirt_host.host.observe().disks()
    assert disks[DiskKey(dom.name(), "vda")][1].chain == ()
    assert disks[DiskKey(dom.name(), "vdb")][1].readonly


def test_observe_reports_a_defined_domain_as_shutoff(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    chain = create_chain(image_folder)
    name = domains.define("off", [DiskSpec("vda", chain.top)])
    domain, disk = libvirt_host.host.observe().disks()[DiskKey(name, "vda")]
    assert domain.state is DomainState.SHUTOFF
    assert disk.source == str(chain.top)
    assert disk.job is None


def test_observe_reports_a_running_pull(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, _ = _domain_with_chain(domains, image_folder)
    libvirt_host.host.start_pull(key, None, SLOW)
    job = _disk(libvirt_host, key).job
    assert job is not None
    assert (job.type, job.bandwidth, job.end) == (JobType.PULL, SLOW, 64 * MIB)


# -- pulls -----------------------------------------------------------------------------------


def test_full_pull_empties_the_chain_and_emits_completed(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, _ = _domain_with_chain(domains, image_folder, depth=2)
    libvirt_host.host.start_pull(key, None, None)
    event = _job_event(libvirt_host, key)
    assert event == JobEvent(key, JobType.PULL, JobOutcome.COMPLETED)
    assert _disk(libvirt_host, key).chain == ()


def test_partial_pull_keeps_exactly_the_base(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, chain = _domain_with_chain(domains, image_folder, depth=2)
    libvirt_host.host.start_pull(key, str(chain.base), None)
    assert _job_event(libvirt_host, key) == JobEvent(key, JobType.PULL, JobOutcome.COMPLETED)
    assert _disk(libvirt_host, key).chain == (str(chain.base),)


def test_partial_pull_keeps_a_relative_chain_relative(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, chain = _domain_with_chain(domains, image_folder, depth=2, relative=True)
    libvirt_host.host.start_pull(key, str(chain.base), None)
    assert _job_event(libvirt_host, key) is not None
    assert backing_file_name(chain.top) == chain.base.name


def test_partial_pull_of_an_absolute_chain_succeeds(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, chain = _domain_with_chain(domains, image_folder, depth=2, relative=False)
    libvirt_host.host.start_pull(key, str(chain.base), None)
    assert _job_event(libvirt_host, key) == JobEvent(key, JobType.PULL, JobOutcome.COMPLETED)
    assert backing_file_name(chain.top) == str(chain.base)


def test_pull_keeps_the_guest_content_byte_identical(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    chain = create_chain(image_folder, depth=2)
    before = flatten(chain.top, image_folder / "before.raw")
    dom = domains.start("content", [DiskSpec("vda", chain.top)])
    key = DiskKey(dom.name(), "vda")
    libvirt_host.host.start_pull(key, str(chain.base), 16 * MIB)
    assert _job_event(libvirt_host, key) is not None
    libvirt_host.host.start_pull(key, None, None)
    assert _job_event(libvirt_host, key) is not None
    domains.stop(dom.name())
    assert same_content(before, chain.top)
    assert backing_file_name(chain.top) == ""


# -- bandwidth -------------------------------------------------------------------------------


def test_bandwidth_is_applied_in_bytes(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, _ = _domain_with_chain(domains, image_folder)
    libvirt_host.host.start_pull(key, None, 3 * MIB + 12345)
    job = _job(libvirt_host, key)
    assert job is not None
    assert job.bandwidth == 3 * MIB + 12345


def test_measured_rate_stays_within_15_percent_of_the_cap(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    cap = 4 * MIB  # the base's 32 MiB of data take ~8 s; measure 3 s in the middle
    key, _ = _domain_with_chain(domains, image_folder)
    libvirt_host.host.start_pull(key, None, cap)
    time.sleep(0.5)
    first, t0 = _job(libvirt_host, key), time.monotonic()
    time.sleep(3.0)
    second, t1 = _job(libvirt_host, key), time.monotonic()
    assert first is not None and second is not None
    rate = (second.cur - first.cur) / (t1 - t0)
    assert abs(rate - cap) <= 0.15 * cap, f"{rate / MIB:.2f} MiB/s against a 4 MiB/s cap"


def test_set_speed_changes_the_bandwidth(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, _ = _domain_with_chain(domains, image_folder)
    libvirt_host.host.start_pull(key, None, SLOW)
    libvirt_host.host.set_speed(key, 2 * MIB + 1)
    job = _job(libvirt_host, key)
    assert job is not None
    assert job.bandwidth == 2 * MIB + 1


def test_unlimited_bandwidth_reads_back_as_unlimited(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, _ = _domain_with_chain(domains, image_folder)
    libvirt_host.host.start_pull(key, None, SLOW)
    libvirt_host.host.set_speed(key, None)
    job = _job(libvirt_host, key)
    assert job is None or job.bandwidth is None  # unthrottled, it may have finished already


# -- abort, refresh --------------------------------------------------------------------------


def test_abort_stops_the_job_and_keeps_the_chain(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, chain = _domain_with_chain(domains, image_folder, depth=2)
    libvirt_host.host.start_pull(key, None, SLOW)
    libvirt_host.host.abort(key)
    assert _job_event(libvirt_host, key) == JobEvent(key, JobType.PULL, JobOutcome.CANCELED)
    assert _job(libvirt_host, key) is None
    assert _disk(libvirt_host, key).chain == chain.backing


def test_refresh_jobs_reports_none_for_a_disk_without_job(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, _ = _domain_with_chain(domains, image_folder)
    assert libvirt_host.host.refresh_jobs([key]) == {key: None}


def test_refresh_jobs_reports_none_for_a_vanished_domain(libvirt_host: HostUnderTest) -> None:
    key = DiskKey(unique_name("gone"), "vda")
    assert libvirt_host.host.refresh_jobs([key]) == {key: None}


# -- errors, each from its real cause --------------------------------------------------------


def test_unknown_domain_is_domain_not_found(libvirt_host: HostUnderTest) -> None:
    key = DiskKey(unique_name("missing"), "vda")
    _raises(ErrorReason.DOMAIN_NOT_FOUND, libvirt_host.host.start_pull, key, None, None)


def test_shut_off_domain_is_domain_not_running(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    chain = create_chain(image_folder)
    name = domains.define("off", [DiskSpec("vda", chain.top)])
    key = DiskKey(name, "vda")
    _raises(ErrorReason.DOMAIN_NOT_RUNNING, libvirt_host.host.start_pull, key, None, None)


def test_unknown_disk_is_disk_not_found(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, _ = _domain_with_chain(domains, image_folder)
    other = DiskKey(key.domain, "vdz")
    _raises(ErrorReason.DISK_NOT_FOUND, libvirt_host.host.start_pull, other, None, None)


def test_second_pull_on_a_disk_is_disk_busy(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, chain = _domain_with_chain(domains, image_folder, depth=2)
    libvirt_host.host.start_pull(key, None, SLOW)
    _raises(ErrorReason.DISK_BUSY, libvirt_host.host.start_pull, key, str(chain.base), SLOW)


def test_base_outside_the_chain_is_base_not_in_chain(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, _ = _domain_with_chain(domains, image_folder)
    stranger = str(image_folder / "elsewhere.qcow2")
    _raises(ErrorReason.BASE_NOT_IN_CHAIN, libvirt_host.host.start_pull, key, stranger, None)


def test_set_speed_without_job_is_no_job(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, _ = _domain_with_chain(domains, image_folder)
    _raises(ErrorReason.NO_JOB, libvirt_host.host.set_speed, key, MIB)


def test_abort_without_job_is_no_job(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, _ = _domain_with_chain(domains, image_folder)
    _raises(ErrorReason.NO_JOB, libvirt_host.host.abort, key)


class _FlakyConnect:
    """Really connects, or really fails (a socket that does not exist) while `broken`."""

    def __init__(self) -> None:
        self.broken = True
        self.attempts = 0

    def __call__(self, uri: str) -> libvirt.virConnect:
        self.attempts += 1
        if self.broken:
            return libvirt.open(f"{uri}?socket=/nonexistent/libvirt-sock")
        return libvirt.open(uri)


def test_unreachable_libvirtd_is_connection_and_every_call_tries_again(
    libvirt_conn: libvirt.virConnect,
) -> None:
    connect = _FlakyConnect()
    host = LibvirtHost(URI, connect=connect)
    try:
        _raises(ErrorReason.CONNECTION, host.observe)
        _raises(ErrorReason.CONNECTION, host.observe)
        assert connect.attempts == 2  # no backoff here: the controller paces its calls
        connect.broken = False
        host.observe()
        assert connect.attempts == 3
    finally:
        host.close()


# -- events ----------------------------------------------------------------------------------


def test_destroyed_domain_mid_pull_emits_no_block_job_event(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, _ = _domain_with_chain(domains, image_folder)
    libvirt_host.host.start_pull(key, None, SLOW)
    domains.stop(key.domain)
    seen: list[HostEvent] = []

    def stopped(event: HostEvent) -> bool:
        seen.append(event)
        return event == LifecycleEvent(key.domain, "stopped")

    assert next_item(libvirt_host.events, stopped, timeout=10) is not None
    assert next_item(libvirt_host.events, seen.append, timeout=1.0) is None
    assert not [e for e in seen if isinstance(e, JobEvent)]


def test_lifecycle_events_name_the_domain(
    libvirt_host: HostUnderTest, domains: Lab, image_folder: Path
) -> None:
    key, _ = _domain_with_chain(domains, image_folder)
    domains.stop(key.domain)
    wanted = LifecycleEvent(key.domain, "stopped")
    assert next_item(libvirt_host.events, lambda e: e == wanted, 10) == wanted


def _our_clients() -> set[str]:
    """Ids of this process's connections to libvirtd, as virt-admin lists them."""
    listing = subprocess.run(
        ["virt-admin", "srv-clients-list", "libvirtd"], capture_output=True, text=True, check=True
    ).stdout
    ours = set()
    for line in listing.splitlines()[2:]:
        if not line.split():
            continue
        client = line.split()[0]
        info = subprocess.run(
            ["virt-admin", "client-info", "libvirtd", client], capture_output=True, text=True
        ).stdout
        if f"unix_process_id: {os.getpid()}" in info:
            ours.add(client)
    return ours


@contextlib.contextmanager
def _host_with_a_cut_connection() -> Iterator[tuple[LibvirtHost, list[HostEvent], set[str]]]:
    """A LibvirtHost whose connection libvirtd has just dropped, as a restart would; yields it,
    the events it delivers, and this process's connections from before it connected."""
    events: list[HostEvent] = []
    before = _our_clients()
    host = LibvirtHost(URI)
    try:
        host.subscribe(events.append)
        host.observe()
        (client,) = _our_clients() - before
        subprocess.run(["virt-admin", "client-disconnect", "libvirtd", client], check=True)
        yield host, events, before
    finally:
        host.close()


def test_lost_connection_emits_down_then_up_on_the_next_call(
    libvirt_conn: libvirt.virConnect,
) -> None:
    with _host_with_a_cut_connection() as (host, events, before):
        assert wait_for(lambda: ConnectionEvent(up=False, reason="eof") in events, 10)
        host.observe()  # reconnects
        assert ConnectionEvent(up=True, reason="reconnected") in events
        assert len(_our_clients() - before) == 1


def test_events_resume_after_a_reconnection(
    libvirt_conn: libvirt.virConnect, domains: Lab, image_folder: Path
) -> None:
    with _host_with_a_cut_connection() as (host, events, _):
        assert wait_for(lambda: any(isinstance(e, ConnectionEvent) for e in events), 10)
        host.observe()
        key, _chain = _domain_with_chain(domains, image_folder)
        host.start_pull(key, None, None)
        done = JobEvent(key, JobType.PULL, JobOutcome.COMPLETED)
        assert wait_for(lambda: done in events, 30)


def test_close_stops_the_event_thread(libvirt_conn: libvirt.virConnect) -> None:
    loop = shared_loop()  # no other host is open in this test: close() is its last release
    host = LibvirtHost(URI)
    host.observe()
    assert loop.running
    host.close()
    assert not loop.running


def test_calls_after_close_are_connection_errors(libvirt_conn: libvirt.virConnect) -> None:
    host = LibvirtHost(URI)
    host.close()
    _raises(ErrorReason.CONNECTION, host.observe)


def test_a_job_started_by_someone_else_is_found_by_the_sweep_within_its_interval(
    libvirt_conn: libvirt.virConnect, domains: Lab, image_folder: Path
) -> None:
    now = [0.0]
    host = LibvirtHost(URI, clock=lambda: now[0], job_sweep_interval=50.0)
    try:
        key, _ = _domain_with_chain(domains, image_folder)
        host.observe()  # the first observe sweeps: no job yet
        dom = libvirt_conn.lookupByName(key.domain)
        dom.blockPull(key.disk, SLOW, libvirt.VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES)
        assert host.observe().disks()[key][1].job is None  # observe reads no unknown disk
        found = False
        while not found and now[0] <= 50.0:  # the controller sweeps when the host says
            sweep = host.sweep_jobs()
            found = sweep.found
            assert sweep.next_in is not None and sweep.next_in <= 5.0
            now[0] += sweep.next_in or 5.0
        assert found
        job = host.observe().disks()[key][1].job
        assert job is not None and job.type is JobType.PULL
    finally:
        host.close()


def test_a_start_refused_as_busy_makes_the_foreign_job_visible_at_once(
    libvirt_conn: libvirt.virConnect, domains: Lab, image_folder: Path
) -> None:
    host = LibvirtHost(URI, clock=lambda: 0.0, job_sweep_interval=300.0)
    try:
        key, _ = _domain_with_chain(domains, image_folder)
        host.observe()
        dom = libvirt_conn.lookupByName(key.domain)
        dom.blockPull(key.disk, SLOW, libvirt.VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES)
        with pytest.raises(HostError) as refused:
            host.start_pull(key, None, SLOW)
        assert refused.value.reason is ErrorReason.DISK_BUSY
        assert host.observe().disks()[key][1].job is not None
    finally:
        host.close()
