"""Error codes and messages as provoked on libvirt 9.0 map to their reasons."""

from __future__ import annotations

import libvirt
import pytest

from exporter.core.model import ErrorReason
from exporter.hosts.libvirt.errors import classify

CASES = [
    (42, 10, "Domain not found: no domain with matching name 'x'", ErrorReason.DOMAIN_NOT_FOUND),
    (55, 20, "Requested operation is not valid: domain is not running",
     ErrorReason.DOMAIN_NOT_RUNNING),
    (8, 10, "invalid argument: disk 'vdz' not found in domain", ErrorReason.DISK_NOT_FOUND),
    (8, 10, "invalid argument: disk vda does not have an active block job", ErrorReason.NO_JOB),
    (8, 18, "invalid argument: could not find image '/x' beneath '/t' in chain for 'vda'",
     ErrorReason.BASE_NOT_IN_CHAIN),
    (84, 10, "Operation not supported: disk 'vda' already in active block job",
     ErrorReason.DISK_BUSY),
    (1, 10, "internal error: unable to execute QEMU command 'block-job-set-speed': Job "
     "'pull-vda-libvirt-1-format' in state 'concluded' cannot accept command verb 'set-speed'",
     ErrorReason.NO_JOB),
    (1, 7, "internal error: client socket is closed", ErrorReason.CONNECTION),
    (38, 7, "Failed to connect socket to '/nonexistent/sock'", ErrorReason.CONNECTION),
    (6, 20, "invalid connection pointer in virConnectListAllDomains", ErrorReason.CONNECTION),
    (1, 0, "internal error: argument key 'device' must not have null value", ErrorReason.OTHER),
    (55, 10, "Requested operation is not valid: can't keep relative backing relationship",
     ErrorReason.OTHER),
]  # fmt: skip


@pytest.mark.parametrize(("code", "domain", "message", "reason"), CASES)
def test_libvirt_error_maps_to_its_reason(
    code: int, domain: int, message: str, reason: ErrorReason
) -> None:
    assert classify(code, domain, message) is reason


def test_system_error_outside_rpc_is_not_a_connection_error() -> None:
    message = "cannot open file '/x': Permission denied"
    assert classify(libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_QEMU, message) is (
        ErrorReason.OTHER
    )
