"""A simulated world as plain JSON-able data: what `sim://` files (`state_file`) keep.

`encode` writes every record of a world at its `now` (a job as the bytes it has done by then);
`decode` checks the version and rebuilds the records, raising ValueError, KeyError or
TypeError on anything malformed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exporter.core.model import DiskKey, DomainState, ErrorReason, HostError, JobType
from exporter.hosts.sim.records import (
    DomainRecord,
    FileSystemRecord,
    JobRecord,
    SimDisk,
    WorldParts,
    job_rate,
)

STATE_VERSION = 1


def encode(parts: WorldParts) -> dict[str, Any]:
    now = parts.now
    return {
        "version": STATE_VERSION,
        "now": now,
        "device_speed": parts.device_speed,
        "connected": parts.connected,
        "copied_total": parts.copied_total,
        "domains": [
            {
                "name": d.name,
                "uuid": d.uuid,
                "state": d.state.value,
                "disks": [
                    {
                        "target": k.target,
                        "source": k.source,
                        "chain": list(k.chain),
                        "sizes": list(k.sizes),
                        "readonly": k.readonly,
                        "transient": k.transient,
                        "copied": k.copied,
                    }
                    for k in d.disks.values()
                ],
            }
            for d in parts.domains
        ],
        "jobs": [
            {
                "domain": j.key.domain,
                "disk": j.key.disk,
                "type": j.type.value,
                "bandwidth": j.bandwidth,  # null = unlimited
                "end": j.end,
                "base": j.base,
                "started_at": j.started_at,
                "skipped": j.skipped,
                "done": j.done_at(now),
                "ready": j.ready,
            }
            for j in parts.jobs
        ],
        "fail_next_start": [
            {"domain": k.domain, "disk": k.disk, "reason": e.reason.value, "message": e.message}
            for k, e in parts.fail_next.items()
        ],
        "file_systems": [
            {"directory": f.directory, "size": f.size, "free": f.free} for f in parts.file_systems
        ],
    }


def decode(state: Mapping[str, Any]) -> WorldParts:
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"simulated host state version {state.get('version')!r} is not {STATE_VERSION}"
        )
    now = float(state["now"])
    device_speed = int(state["device_speed"])
    domains: list[DomainRecord] = []
    for d in state["domains"]:
        domain = DomainRecord(str(d["name"]), str(d["uuid"]), DomainState(d["state"]), {})
        for k in d["disks"]:
            spec = SimDisk(
                k["target"],
                k["source"],
                tuple(k["chain"]),
                tuple(int(s) for s in k["sizes"]),
                bool(k["readonly"]),
                bool(k["transient"]),
            )
            domain.add_disk(spec).copied = int(k["copied"])
        domains.append(domain)
    jobs: list[JobRecord] = []
    for j in state["jobs"]:
        bandwidth = _bandwidth(j["bandwidth"])
        jobs.append(
            JobRecord(
                key=DiskKey(j["domain"], j["disk"]),
                type=JobType(j["type"]),
                bandwidth=bandwidth,
                end=int(j["end"]),
                base=j["base"],
                started_at=float(j["started_at"]),
                skipped=float(j["skipped"]),
                done=float(j["done"]),
                anchor=now,
                rate=job_rate(bandwidth, device_speed),
                ready=bool(j["ready"]),
            )
        )
    fail_next = {
        DiskKey(f["domain"], f["disk"]): HostError(ErrorReason(f["reason"]), str(f["message"]))
        for f in state["fail_next_start"]
    }
    return WorldParts(
        now=now,
        device_speed=device_speed,
        connected=bool(state["connected"]),
        copied_total=float(state["copied_total"]),
        domains=domains,
        jobs=jobs,
        fail_next=fail_next,
        file_systems=[  # absent from files written before file systems were simulated
            FileSystemRecord(str(f["directory"]), int(f["size"]), float(f["free"]))
            for f in state.get("file_systems", [])
        ],
    )


def _bandwidth(value: Any) -> int | None:
    # Files written before null meant unlimited have libvirt's 0.
    if value is None or value == 0:
        return None
    bandwidth = int(value)
    if bandwidth < 0:
        raise ValueError(f"job bandwidth {bandwidth} is negative")
    return bandwidth
