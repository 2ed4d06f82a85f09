"""Transfer syntaxes a destination may ask for, by the names sites write.

Lossless by default: a lossy syntax is only ever used when a destination names it, since a
compressed copy that lost detail must never reach a planning system by a default.
"""

from __future__ import annotations

from dataclasses import dataclass

AS_RECEIVED = "as-received"


@dataclass(frozen=True)
class Syntax:
    name: str
    uid: str
    title: str
    lossy: bool = False
    # Orthanc's own transcoder (DCMTK) writes it; JPEG 2000 it cannot (no free DCMTK codec), so
    # the worker encodes that one with pydicom and OpenJPEG.
    by_orthanc: bool = True


SYNTAXES: dict[str, Syntax] = {syntax.name: syntax for syntax in (
    Syntax("explicit-little", "1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    Syntax("implicit-little", "1.2.840.10008.1.2", "Implicit VR Little Endian"),
    Syntax("jpeg-ls-lossless", "1.2.840.10008.1.2.4.80", "JPEG-LS lossless"),
    Syntax("jpeg-lossless", "1.2.840.10008.1.2.4.70", "JPEG lossless (process 14 SV1)"),
    Syntax("rle", "1.2.840.10008.1.2.5", "RLE lossless"),
    Syntax("jpeg2000-lossless", "1.2.840.10008.1.2.4.90", "JPEG 2000 lossless",
           by_orthanc=False),
    # Lossy: only when written by name.
    Syntax("jpeg-baseline", "1.2.840.10008.1.2.4.50", "JPEG baseline (lossy)", lossy=True),
    Syntax("jpeg-ls-near-lossless", "1.2.840.10008.1.2.4.81", "JPEG-LS near-lossless (lossy)",
           lossy=True),
    Syntax("jpeg2000", "1.2.840.10008.1.2.4.91", "JPEG 2000 (lossy)", lossy=True,
           by_orthanc=False),
)}
NAMES = (AS_RECEIVED, *SYNTAXES)
TITLES_BY_UID = {syntax.uid: syntax.title for syntax in SYNTAXES.values()}


def syntax_named(name: str) -> Syntax | None:
    """None for as-received; KeyError for a name that is not one of NAMES."""
    if name == AS_RECEIVED:
        return None
    return SYNTAXES[name]


def title_of(uid: str) -> str:
    return TITLES_BY_UID.get(uid, uid)
