"""Disk images made with qemu-img / qemu-io: qcow2 chains, overlays, raw bases, and content.

QEMU runs as libvirt-qemu: every image is made world-readable (0644), and belongs in a folder
it can enter (see libvirt_lab.make_image_folder).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
BASE_PATTERN = 0xAB
MID_PATTERN = 0xCD


@dataclass(frozen=True)
class Chain:
    """qcow2 images, base first and top last; `backing` is the chain as libvirt reports it."""

    images: tuple[Path, ...]

    @property
    def top(self) -> Path:
        return self.images[-1]

    @property
    def base(self) -> Path:
        return self.images[0]

    @property
    def backing(self) -> tuple[str, ...]:
        return tuple(str(p) for p in reversed(self.images[:-1]))


def run(*command: str | Path) -> str:
    """stdout of `command`; its stderr in the error when it fails."""
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed: {done.stderr.strip()}")
    return done.stdout


def create_overlay(backing: Path | str, image: Path, backing_format: str = "qcow2") -> Path:
    """A qcow2 overlay `image` over `backing` (a path, a name relative to it, or a URL)."""
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", backing, image)
    image.chmod(0o644)
    return image


def create_chain(
    folder: Path,
    name: str = "disk",
    depth: int = 1,
    size_mib: int = 64,
    fill_mib: int = 32,
    relative: bool = False,
) -> Chain:
    """A base holding `fill_mib` MiB of BASE_PATTERN, then `depth` qcow2 overlays.

    With depth >= 2 the first overlay also holds 8 MiB of MID_PATTERN after the base's data,
    so a partial pull down to the base copies something and a wrong base shows in the content.
    `relative`: overlays name their backing file relative to the folder.
    """
    base = folder / f"{name}-base.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", base, f"{size_mib}M")
    if fill_mib:
        run("qemu-io", "-c", f"write -P {BASE_PATTERN:#x} 0 {fill_mib}M", base)
    base.chmod(0o644)
    images = [base]
    for level in range(1, depth + 1):
        below = images[-1]
        image = create_overlay(below.name if relative else below, folder / f"{name}-{level}.qcow2")
        if level == 1 and depth >= 2:
            run("qemu-io", "-c", f"write -P {MID_PATTERN:#x} {fill_mib}M 8M", image)
        images.append(image)
    return Chain(tuple(images))


def create_raw_base(
    folder: Path, name: str = "base", size_mib: int = 64, fill_mib: int = 32
) -> Path:
    """A raw image holding `fill_mib` MiB of BASE_PATTERN (what qemu-nbd serves)."""
    base = folder / f"{name}.raw"
    run("qemu-img", "create", "-q", "-f", "raw", base, f"{size_mib}M")
    if fill_mib:
        run("qemu-io", "-f", "raw", "-c", f"write -P {BASE_PATTERN:#x} 0 {fill_mib}M", base)
    base.chmod(0o644)
    return base


def backing_file_name(image: Path) -> str:
    """The backing file name as written in the qcow2 header (relative or absolute)."""
    for line in run("qemu-img", "info", "-U", image).splitlines():  # header only: safe
        if line.startswith("backing file:"):
            return line.split(":", 1)[1].split(" (actual path")[0].strip()
    return ""


def flatten(image: Path, out: Path) -> Path:
    """The guest-visible content of `image` as a raw file, for a later compare."""
    run("qemu-img", "convert", "-O", "raw", image, out)
    return out


def same_content(a: Path, b: Path) -> bool:
    """`qemu-img compare`; only meaningful once no QEMU has the images open (stop_domain)."""
    done = subprocess.run(
        ["qemu-img", "compare", str(a), str(b)], capture_output=True, text=True, check=False
    )
    if done.returncode not in (0, 1):
        raise RuntimeError(f"qemu-img compare {a} {b}: {done.stderr.strip()}")
    return done.returncode == 0
