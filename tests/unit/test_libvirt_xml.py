"""The live-XML parser on XML captured from libvirt 9.0 (trimmed to the disk elements)."""

from __future__ import annotations

from exporter.hosts.libvirt.domain_xml import DiskXml, ParsedDisks, normalise_target, parse_disks

LIVE = """<domain type='qemu' id='1'><name>web-1</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
  <source file='/img/top.qcow2' index='3'/>
  <backingStore type='file' index='4'><format type='qcow2'/><source file='/img/mid.qcow2'/>
    <backingStore type='file' index='5'><format type='qcow2'/><source file='/img/base.qcow2'/>
      <backingStore/></backingStore></backingStore>
  <target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><source file='/img/plain.qcow2' index='2'/><backingStore/>
  <target dev='vdb' bus='virtio'/><readonly/></disk>
<disk type='file' device='cdrom'><driver name='qemu'/><target dev='hdc' bus='ide'/><readonly/>
</disk>
<disk type='file' device='disk'><source file='/img/nbdtop.qcow2' index='2'/>
  <backingStore type='network' index='3'><source protocol='nbd' name='exp' tls='no'>
    <host name='127.0.0.1' port='10899'/></source></backingStore>
  <target dev='vdc' bus='virtio'/><transient/></disk>
<disk type='file' device='disk'><source file='/img/copy.qcow2'/><mirror type='file'/>
  <target dev='vdd' bus='virtio'/></disk>
</devices></domain>"""


def _disks() -> dict[str, DiskXml]:
    return {d.disk.target: d for d in parse_disks(LIVE)}


def test_chain_lists_backing_images_nearest_first() -> None:
    disk = _disks()["vda"].disk
    assert disk.source == "/img/top.qcow2"
    assert disk.chain == ("/img/mid.qcow2", "/img/base.qcow2")


def test_an_empty_backing_store_means_an_independent_disk() -> None:
    assert _disks()["vdb"].disk.chain == ()


def test_readonly_and_transient_flags_are_read() -> None:
    disks = _disks()
    assert disks["vdb"].disk.readonly and not disks["vdb"].disk.transient
    assert disks["vdc"].disk.transient


def test_an_empty_cdrom_has_no_source() -> None:
    assert _disks()["hdc"].disk.source is None


def test_a_network_backing_image_is_a_url() -> None:
    assert _disks()["vdc"].disk.chain == ("nbd://127.0.0.1:10899/exp",)


def test_a_mirror_marks_a_disk_with_a_job() -> None:
    disks = _disks()
    assert disks["vdd"].mirror and not disks["vda"].mirror


def test_an_indexed_target_is_normalised_to_the_target() -> None:
    assert (normalise_target("vda[3]"), normalise_target("sdb")) == ("vda", "sdb")


_METADATA = (
    "<metadata><inventory xmlns='urn:inventory'><devices><disk name='not-a-disk'>"
    "<target dev='vdz'/></disk></devices></inventory></metadata>"
)
_TARGETS = ["vda", "vdb", "hdc", "vdc", "vdd"]


def test_a_disk_using_a_namespace_declared_on_the_domain_is_read() -> None:
    xml = LIVE.replace("<domain ", "<domain xmlns:x='urn:x' ").replace(
        "<target dev='vdb' bus='virtio'/>", "<target dev='vdb' bus='virtio'/><x:note/>"
    )
    assert [d.disk.target for d in parse_disks(xml)] == _TARGETS


def test_devices_and_disks_in_metadata_before_the_devices_are_not_the_domains() -> None:
    xml = LIVE.replace("<devices>", _METADATA + "<devices>", 1)
    assert [d.disk.target for d in parse_disks(xml)] == _TARGETS


def test_devices_and_disks_in_metadata_after_the_devices_are_not_the_domains() -> None:
    xml = LIVE.replace("</domain>", _METADATA + "</domain>")
    assert [d.disk.target for d in parse_disks(xml)] == _TARGETS


def test_a_domain_without_disks_has_none() -> None:
    assert parse_disks("<domain type='qemu'><name>d</name><devices/></domain>") == ()


def test_an_unchanged_xml_is_not_parsed_again() -> None:
    parsed = ParsedDisks()
    first = parsed.of("uuid-1", LIVE)
    assert parsed.of("uuid-1", str(LIVE + " ")[:-1]) is first  # equal text, another string


def test_a_changed_xml_is_parsed_again() -> None:
    parsed = ParsedDisks()
    parsed.of("uuid-1", LIVE)
    rebased = LIVE.replace("/img/mid.qcow2", "/img/other.qcow2")
    assert parsed.of("uuid-1", rebased) == parse_disks(rebased) != parse_disks(LIVE)


def test_domains_gone_are_forgotten() -> None:
    parsed = ParsedDisks()
    first = parsed.of("uuid-1", LIVE)
    parsed.keep_only(set())
    assert parsed.of("uuid-1", LIVE) is not first
