"""Free space per file system: measured once per file system, named by its mount point."""

import os
from pathlib import Path

from exporter.core.model import FileSystem, Unmeasured
from exporter.hosts.local_fs import LocalFileSystems


def test_two_directories_on_one_file_system_share_one_measure(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    found = LocalFileSystems().measure([str(tmp_path / "a"), str(tmp_path / "b")])
    first, second = found.values()
    assert isinstance(first, FileSystem)
    assert first is second


def test_free_space_is_what_an_unprivileged_writer_may_use(tmp_path):
    found = LocalFileSystems().measure([str(tmp_path)])[str(tmp_path)]
    st = os.statvfs(tmp_path)
    assert isinstance(found, FileSystem)
    assert found.size == st.f_blocks * st.f_frsize
    assert abs(found.free - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024  # others write too


def test_the_mount_point_is_the_highest_directory_on_the_same_device(tmp_path):
    found = LocalFileSystems().measure([str(tmp_path)])[str(tmp_path)]
    assert isinstance(found, FileSystem)
    mountpoint = Path(found.mountpoint)
    assert tmp_path.resolve().is_relative_to(mountpoint)
    assert mountpoint.stat().st_dev == tmp_path.stat().st_dev
    top = mountpoint == mountpoint.parent
    assert top or mountpoint.parent.stat().st_dev != mountpoint.stat().st_dev


def test_a_missing_directory_is_unmeasured_with_the_reason(tmp_path):
    missing = str(tmp_path / "gone")
    found = LocalFileSystems().measure([missing])[missing]
    assert isinstance(found, Unmeasured)
    assert "No such file or directory" in found.error
