"""Keyed pseudonyms: new UIDs, patient IDs and date offsets derived from the originals with HMAC.

A keyed hash instead of a stored random map: the same original gives the same result in every
object, in any order, days apart and across restarts, without a lookup on the hot path; the secret
keeps anyone without it from recomputing (and so reversing by guessing) the mapping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

UID_ROOT = "2.25."
MAX_UID_LENGTH = 64
# Dates move back between 1 and 10 years: far enough that the real date cannot be guessed by
# adding a small constant, close enough that ages and seasons stay plausible.
MIN_OFFSET_DAYS = 365
MAX_OFFSET_DAYS = 3650
SECRET_BYTES = 32


def new_secret() -> str:
    return secrets.token_hex(SECRET_BYTES)


class Pseudonymizer:
    def __init__(self, secret: str | bytes) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        if len(secret) < 16:
            raise ValueError("the de-identification secret must be at least 16 bytes")
        self._secret = secret

    def _digest(self, purpose: str, value: str) -> bytes:
        message = f"{purpose}\x00{value}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """2.25.<128-bit integer>: at most 44 characters, never a leading zero (PS3.5 B.2)."""
        number = int.from_bytes(self._digest("uid", original.strip())[:16], "big")
        uid = f"{UID_ROOT}{number}"
        assert len(uid) <= MAX_UID_LENGTH
        return uid

    def patient_id(self, original: str, pattern: str) -> str:
        """The pattern with {hash} replaced by 10 base32 characters (50 bits) of the keyed hash."""
        token = base64.b32encode(self._digest("patient", original.strip())[:10]).decode()[:10]
        return pattern.replace("{hash}", token)[:64]

    def date_offset_days(self, original_patient_id: str) -> int:
        value = int.from_bytes(self._digest("dates", original_patient_id.strip())[:4], "big")
        return -(MIN_OFFSET_DAYS + value % (MAX_OFFSET_DAYS - MIN_OFFSET_DAYS + 1))
