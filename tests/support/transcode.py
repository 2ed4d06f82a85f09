"""Compressed copies of CT slices, the way real archives send them: DCMTK's dcmcjpeg (JPEG
baseline, extended, lossless), dcmcjpls (JPEG-LS), dcmcrle (RLE), and pydicom with
pylibjpeg-openjpeg for JPEG 2000 (DCMTK has no free JPEG 2000 codec)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless

# name -> storescu's option that proposes it (and the uncompressed ones, for the other files)
PROPOSE = {"jpeg-baseline": "-xy", "jpeg-extended": "-xx", "jpeg-lossless": "-xs",
           "jpeg-ls": "-xt", "jpeg2000": "-xv", "rle": "-xr"}
# name -> (DICOM transfer syntax UID, how the copy is made)
SYNTAXES = {
    # +un: the same SOP Instance UID after lossy compression, so the structure set still refers
    # to these images (a planning system contours the images it was sent).
    "jpeg-baseline": ("1.2.840.10008.1.2.4.50", ["dcmcjpeg", "+eb", "+un"]),
    "jpeg-extended": ("1.2.840.10008.1.2.4.51", ["dcmcjpeg", "+ee", "+un"]),
    "jpeg-lossless": ("1.2.840.10008.1.2.4.70", ["dcmcjpeg", "+e1"]),
    "jpeg-ls": ("1.2.840.10008.1.2.4.80", ["dcmcjpls"]),
    "jpeg2000": (str(JPEG2000Lossless), []),
    "rle": ("1.2.840.10008.1.2.5", ["dcmcrle"]),
}


def _fit_bits(path: Path, bits: int) -> None:
    """JPEG baseline takes 8-bit and extended 12-bit samples: the CT is stored unsigned in that
    many bits first (as scanners that send such CT do), rescaled so HU stay right."""
    ds = dcmread(path)
    pixels = ds.pixel_array.astype(np.int32)
    low, high = int(pixels.min()), int(pixels.max())
    scale = max(1.0, (high - low) / ((1 << bits) - 1))
    stored = np.rint((pixels - low) / scale).astype(np.uint16)
    intercept = float(ds.get("RescaleIntercept", 0)) + low * float(ds.get("RescaleSlope", 1))
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = f"{scale * float(ds.get('RescaleSlope', 1)):.6g}"
    ds.PixelRepresentation = 0
    ds.BitsStored, ds.HighBit = bits, bits - 1
    if bits <= 8:
        ds.BitsAllocated = 8
        ds.PixelData = stored.astype(np.uint8).tobytes()
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def transcode(files: list[Path], name: str, folder: Path) -> list[Path]:
    """Copies of `files` in the transfer syntax `name`, in `folder`."""
    uid, command = SYNTAXES[name]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for source in files:
        target = folder / source.name
        if name == "jpeg2000":
            ds = dcmread(source)
            ds.compress(uid, encoding_plugin="pylibjpeg", generate_instance_uid=False)
            ds.save_as(target, enforce_file_format=True)
        else:
            staged = source
            if name in ("jpeg-baseline", "jpeg-extended"):
                staged = folder / (source.stem + ".fit.dcm")
                staged.write_bytes(source.read_bytes())
                _fit_bits(staged, 8 if name == "jpeg-baseline" else 12)
            subprocess.run([*command, str(staged), str(target)], check=True, capture_output=True)
            if staged != source:
                staged.unlink()
        assert str(dcmread(target, stop_before_pixels=True).file_meta.TransferSyntaxUID) == uid
        out.append(target)
    return out
