"""A domain's disks and backing chains, read from its live XML (`virDomainGetXMLDesc(0)`).

Only the live XML of a running or paused domain carries the probed chain (`<backingStore>`);
the XML of a shut-off domain lists only what its definition says, usually no chain at all.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from exporter.core.model import Disk

_INDEXED_TARGET = re.compile(r"^(?P<target>[^\[]+)\[\d+\]$")


@dataclass(frozen=True)
class DiskXml:
    disk: Disk  # without job
    mirror: bool  # a copy or active-commit job runs (<mirror> child): worth a blockJobInfo


class ParsedDisks:
    """Each domain's disks as of its last live XML: an XML read again unchanged, as most are
    from one reconcile to the next, is not parsed again (the parse is a third of a full
    reconcile's CPU on a big host: bench/RESULTS.md). Mutable; owned by one LibvirtHost."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, tuple[DiskXml, ...]]] = {}  # uuid -> (xml, disks)

    def of(self, uuid: str, xml: str) -> tuple[DiskXml, ...]:
        last = self._last.get(uuid)
        if last is not None and last[0] == xml:
            return last[1]
        disks = parse_disks(xml)
        self._last[uuid] = (xml, disks)
        return disks

    def last(self, uuid: str) -> tuple[DiskXml, ...] | None:
        """The domain's disks as of its last XML, or None when never read."""
        last = self._last.get(uuid)
        return last[1] if last is not None else None

    def keep_only(self, uuids: set[str]) -> None:
        """Forget the domains that are gone (memory only: a stale entry is never used, its XML
        would have to be equal)."""
        for uuid in self._last.keys() - uuids:
            del self._last[uuid]


def normalise_target(name: str) -> str:
    """`vda[3]` (libvirt's image index notation) -> `vda`; plain targets stay as they are."""
    match = _INDEXED_TARGET.match(name)
    return match.group("target") if match else name


def parse_disks(xml: str) -> tuple[DiskXml, ...]:
    disks: list[DiskXml] = []
    for element in ET.fromstring(xml).findall("./devices/disk"):
        target = element.find("target")
        dev = target.get("dev") if target is not None else None
        if not dev:
            continue
        source = element.find("source")
        kind = element.get("type")
        disk = Disk(
            target=dev,
            source=source_string(kind, source),
            chain=_chain(element),
            readonly=element.find("readonly") is not None,
            transient=element.find("transient") is not None,
            local_file=kind in ("file", None) and source is not None and bool(source.get("file")),
        )
        disks.append(DiskXml(disk, mirror=element.find("mirror") is not None))
    return tuple(disks)


def _chain(disk: ET.Element) -> tuple[str, ...]:
    """Nested <backingStore> elements, nearest first; an empty one ends the chain."""
    chain: list[str] = []
    store = disk.find("backingStore")
    while store is not None and store.find("source") is not None:
        kind = store.get("type")
        chain.append(source_string(kind, store.find("source")) or f"[{kind or 'unknown'}]")
        store = store.find("backingStore")
    return tuple(chain)


def source_string(kind: str | None, source: ET.Element | None) -> str | None:
    """A path for local images, a URL for network ones, None when there is nothing to name."""
    if source is None:
        return None
    if kind == "network":
        return _network_url(source)
    if kind == "volume":
        pool, volume = source.get("pool"), source.get("volume")
        return f"{pool}/{volume}" if pool and volume else None
    for attribute in ("file", "dev", "dir"):
        value = source.get(attribute)
        if value:
            return value
    return None


def _network_url(source: ET.Element) -> str | None:
    protocol = source.get("protocol")
    if not protocol:
        return None
    name = source.get("name") or ""
    host = source.find("host")
    if host is None:
        return f"{protocol}:///{name}"
    if host.get("transport") == "unix":
        return f"{protocol}+unix:///{name}?socket={host.get('socket', '')}"
    address = host.get("name", "")
    port = host.get("port")
    authority = f"{address}:{port}" if port else address
    return f"{protocol}://{authority}/{name}"
