"""A guest that really writes, without any OS: a boot sector looping BIOS int 13h writes.

SeaBIOS boots the 512-byte sector at LBA 0 of the disk (`<boot dev='hd'/>`); it fills 32 KiB
of memory with 0x5a and writes it with int 13h AH=43h (EDD extended write, 64 sectors at a
time) over LBA 2048 .. 2048 + 32768 (16 MiB from the 1 MiB mark), then again from the start,
waiting 20 ms (int 15h AH=86h) between writes: about 0.7 MB/s under TCG here. On a full file
system QEMU pauses it (`paused (I/O error)`, `domblkerror`: no space), which is what a guard on
free space must prevent. The qcow2 grows to ~17 MiB during the first pass and then only
rewrites its clusters.

The sector, assembled with GNU as (`as --32`, `ld -m elf_i386 -Ttext 0x7c00 --oformat
binary`) from:

    .code16
        cli; xor %ax,%ax; mov %ax,%ds; mov %ax,%es; mov %ax,%ss; mov $0x7c00,%sp; sti
        mov %dl, drive                      # the BIOS boot drive
        mov $0x8000,%di; mov $0x5a,%al; mov $0x8000,%cx; cld; rep stosb
    again:
        mov $dap,%si; mov $0x43,%ah; xor %al,%al; mov drive,%dl; int $0x13
        mov $0x86,%ah; mov $0,%cx; mov $20000,%dx; int $0x15
        addl $64, lba; cmpl $(2048 + 32768), lba; jb again
        movl $2048, lba; jmp again
    dap:   .byte 0x10, 0; .word 64; .word 0x8000, 0
    lba:   .long 2048; .long 0
    drive: .byte 0x80
        .org 510; .word 0xaa55
"""

from __future__ import annotations

from pathlib import Path

from harness.qemu_images import run

WRITTEN_REGION = 16 * 1024 * 1024  # bytes the guest keeps rewriting
_CODE = bytes.fromhex(
    "fa31c08ed88ec08ed0bc007cfb88165f7cbf0080b05ab90080fcf3aabe4f7cb44330c08a165f7ccd13b486"
    "b90000ba204ecd15668306577c4066813e577c0088000072d866c706577c00080000ebcd10004000008000"
    "00000800000000000080"
)


def boot_sector() -> bytes:
    return _CODE.ljust(510, b"\x00") + b"\x55\xaa"


def create_writer_image(folder: Path, name: str = "writer", size_mib: int = 64) -> Path:
    """A qcow2 whose first sector is the writing boot sector."""
    image = folder / f"{name}.qcow2"
    sector = folder / f"{name}-sector.bin"
    sector.write_bytes(boot_sector())
    run("qemu-img", "create", "-q", "-f", "qcow2", image, f"{size_mib}M")
    run("qemu-io", "-c", f"write -s {sector} 0 512", image)
    sector.unlink()
    image.chmod(0o644)
    return image
