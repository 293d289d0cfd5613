"""libvirt errors as HostError reasons.

The codes and messages below were provoked on libvirt 9.0 / QEMU 7.2 (see
tests/integration/test_libvirt_host.py). libvirt reuses VIR_ERR_INVALID_ARG for several
causes, so the message decides between them; the message is always kept in the HostError.

    cause                    code                      from      message contains
    unknown domain           42 NO_DOMAIN              QEMU      "Domain not found"
    domain shut off          55 OPERATION_INVALID      DOMAIN    "domain is not running"
    unknown disk target      8  INVALID_ARG            QEMU      "not found in domain"
    no job on the disk       8  INVALID_ARG            QEMU      "does not have an active block job"
    base not in the chain    8  INVALID_ARG            STORAGE   "could not find image"
    another job on the disk  84 OPERATION_UNSUPPORTED  QEMU      "already in active block job"
    socket closed            1  INTERNAL_ERROR         RPC       "client socket is closed"
    cannot connect           38 SYSTEM_ERROR           RPC       "Failed to connect socket"
    closed connection        6  INVALID_CONN           DOMAIN    "invalid connection pointer"
"""

from __future__ import annotations

import libvirt

from exporter.core.model import ErrorReason, HostError

_CONNECTION_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})
_CONNECTION_CODES = frozenset(
    {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_RPC}
)
# Message fragments, checked in order; each was seen verbatim on libvirt 9.0.
_BY_MESSAGE: tuple[tuple[str, ErrorReason], ...] = (
    ("does not have an active block job", ErrorReason.NO_JOB),
    ("no active block job", ErrorReason.NO_JOB),
    # QEMU still lists a finished job until libvirt dismisses it: it is over, not an error.
    ("in state 'concluded'", ErrorReason.NO_JOB),
    ("already in active block job", ErrorReason.DISK_BUSY),
    ("could not find image", ErrorReason.BASE_NOT_IN_CHAIN),
    ("not found in domain", ErrorReason.DISK_NOT_FOUND),
    ("is not running", ErrorReason.DOMAIN_NOT_RUNNING),
)


def classify(code: int, domain: int, message: str) -> ErrorReason:
    """The reason of a libvirt error given its code, error domain (VIR_FROM_*) and message."""
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return ErrorReason.DOMAIN_NOT_FOUND
    if code in _CONNECTION_CODES or domain in _CONNECTION_DOMAINS:
        return ErrorReason.CONNECTION
    if code == libvirt.VIR_ERR_BLOCK_COPY_ACTIVE:
        return ErrorReason.DISK_BUSY
    for fragment, reason in _BY_MESSAGE:
        if fragment in message:
            return reason
    return ErrorReason.OTHER


def host_error(error: libvirt.libvirtError) -> HostError:
    message = error.get_error_message() or str(error)
    reason = classify(error.get_error_code() or 0, error.get_error_domain() or 0, message)
    return HostError(reason, message)
