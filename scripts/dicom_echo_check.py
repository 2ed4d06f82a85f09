"""The bytes of a DICOM verification for a TCP health check (HAProxy's `tcp-check`): an
A-ASSOCIATE-RQ proposing the Verification SOP class in Implicit VR Little Endian, whose answer
must be an A-ASSOCIATE-AC (PDU type 02), then an A-RELEASE-RQ answered by an A-RELEASE-RP (06).

A port that accepts TCP but whose Orthanc no longer answers DICOM (stuck, or refusing
associations) fails this check; a plain TCP check would still pass it.

Usage: python scripts/dicom_echo_check.py [CALLING_AE] [CALLED_AE]: prints the `tcp-check`
lines of deploy/several-nodes/haproxy.cfg (tests/unit/test_deploy.py checks they match).
"""

from __future__ import annotations

import struct
import sys

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
RELEASE_RQ = bytes.fromhex("050000000004" + "00000000")


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16, b" ")[:16]


def associate_rq(calling: str = "HEALTHCHECK", called: str = "ANY-SCP") -> bytes:
    context = _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, VERIFICATION.encode())
                    + _item(0x40, IMPLICIT_LITTLE.encode()))
    user = _item(0x50, _item(0x51, struct.pack(">I", 16384)))
    body = (struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT.encode()) + context + user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def tcp_check_lines(calling: str = "HEALTHCHECK", called: str = "ANY-SCP") -> list[str]:
    return [
        "tcp-check connect",
        f"tcp-check send-binary {associate_rq(calling, called).hex()}",
        "tcp-check expect rbinary ^02",        # A-ASSOCIATE-AC, not a reject (03) or abort (07)
        f"tcp-check send-binary {RELEASE_RQ.hex()}",
        "tcp-check expect rbinary ^06",        # A-RELEASE-RP
    ]


if __name__ == "__main__":
    print("\n".join(tcp_check_lines(*sys.argv[1:3])))
