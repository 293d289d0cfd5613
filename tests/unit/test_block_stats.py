"""Chain usage from libvirt's block stats: what a pull can add to each top image."""

from exporter.core.model import QCOW2_METADATA, ChainUsage, Disk
from exporter.hosts.libvirt.block_stats import chain_usage

MIB = 1024 * 1024
VDA = Disk("vda", "/i/top.qcow2", ("/i/mid.qcow2", "/i/base.qcow2"), local_file=True)
VDB = Disk("vdb", "/i/b-top.qcow2", ("nbd://127.0.0.1:10809/base",), local_file=True)

# As libvirt 9.0 lists them: each disk's top first, then its backing images, nearest first.
STATS = {
    "block.count": 5,
    "block.0.name": "vda", "block.0.capacity": 256 * MIB, "block.0.physical": 200 * 1024,
    "block.1.name": "vda", "block.1.capacity": 256 * MIB, "block.1.physical": 8 * MIB,
    "block.2.name": "vda", "block.2.capacity": 256 * MIB, "block.2.physical": 32 * MIB,
    "block.3.name": "vdb", "block.3.capacity": 128 * MIB, "block.3.physical": 200 * 1024,
    "block.4.name": "vdb", "block.4.capacity": 128 * MIB, "block.4.physical": 128 * MIB,
}  # fmt: skip


def test_each_backing_image_counts_its_allocated_bytes_nearest_first():
    usage = chain_usage(STATS, (VDA, VDB))
    assert usage["vda"] == ChainUsage(256 * MIB, (8 * MIB, 32 * MIB), top=200 * 1024)


def test_a_full_pull_grows_the_top_by_every_backing_image_a_partial_one_by_those_above_base():
    usage = chain_usage(STATS, (VDA,))["vda"]
    assert usage.growth(VDA.chain, None) == 40 * MIB
    assert usage.growth(VDA.chain, "/i/base.qcow2") == 8 * MIB


def test_a_network_backing_image_counts_its_whole_virtual_size():
    usage = chain_usage(STATS, (VDB,))["vdb"]
    assert usage.growth(VDB.chain, None) == 128 * MIB


def test_growth_never_exceeds_what_the_top_can_still_take():
    room = 10 * MIB + 10 * MIB // QCOW2_METADATA  # the virtual size and the qcow2 tables
    assert ChainUsage(10 * MIB, (8 * MIB, 8 * MIB)).growth(("a", "b"), None) == room


def test_what_an_interrupted_pull_copied_already_is_not_counted_again():
    usage = ChainUsage(10 * MIB, (8 * MIB, 8 * MIB), top=7 * MIB)
    assert usage.growth(("a", "b"), None) == 3 * MIB + 10 * MIB // QCOW2_METADATA


def test_a_chain_that_changed_between_the_reads_is_left_out_not_guessed():
    shorter = Disk("vda", "/i/top.qcow2", ("/i/mid.qcow2",), local_file=True)
    assert chain_usage(STATS, (shorter,)) == {}


def test_an_image_without_a_size_leaves_its_disk_out():
    stats = {k: v for k, v in STATS.items() if k != "block.2.physical"}
    assert "vda" not in chain_usage(stats, (VDA, VDB))
    assert "vdb" in chain_usage(stats, (VDA, VDB))
