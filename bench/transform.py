"""bench/transform: what the copy a destination receives costs (issue 27, items 1-3). Prints JSON.

One gateway Orthanc (the plugin on, `on: instance` rules) and plain Orthanc receivers, storescu as
the sender, every round with fresh UIDs:
- plain / xform: a plan (--slices CT slices of --size, an RTSTRUCT of 20 ROIs with the names
  clinics write, an RTPLAN; a private group on every object) sent with calling AET PLAIN
  (forwarded to RECV_PLAIN as stored) and, in the same round, another plan with calling AET XFORM
  (`normalize: tg263`, `coerce` InstitutionName set and (0009,xxxx) removed, forwarded to
  RECV_XFORM); time from the start of storescu to the last instance held by the receiver. The
  goal: the transformed forward at most 1.2x the plain one (ratio_transform_to_plain).
- decompress: a JPEG-LS CT series through the gateway to a destination asking for Explicit VR
  Little Endian, against what a site does by hand without the gateway: dcmdjpls on each file,
  then storescu of the results to the same receiver.
- compress: an uncompressed CT series through the gateway to a destination asking for JPEG-LS
  lossless, against dcmcjpls on each file, then storescu. The DCMTK baselines start one process
  per file, as a shell loop does: that start-up is part of what the site pays, not of the codec.
The order within each pair alternates from round to round. Ratios are what to read: the machine
is shared and absolute seconds move with its load; per-round ratios (both measured seconds apart,
under the same load) and their quartiles say whether a goal is decided.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from bench.record import machine
from bench.relay import make_slices as make_series
from bench.relay import quartiles, wait_for_count
from tests.support.orthanc import OrthancProcess, storescu
from tests.support.rtset import make_rt_set, write_datasets
from tests.support.transcode import PROPOSE, SYNTAXES, transcode

RULES = """
destinations:
  RECV_EXPLICIT: {transfer_syntax: explicit-little}
  RECV_JLS: {transfer_syntax: jpeg-ls-lossless}
rules:
  - name: plain forward
    on: instance
    match: {calling_aet: PLAIN}
    actions:
      - forward: RECV_PLAIN
  - name: normalized and coerced forward
    on: instance
    match: {calling_aet: XFORM}
    actions:
      - normalize: tg263
      - coerce: {set: {InstitutionName: "Bench RT"}, remove: ["(0009,xxxx)"]}
      - forward: RECV_XFORM
  - name: decompressed forward
    on: instance
    match: {calling_aet: JLS}
    actions:
      - forward: RECV_EXPLICIT
  - name: compressed forward
    on: instance
    match: {calling_aet: RAW}
    actions:
      - forward: RECV_JLS
"""
RECEIVERS = ("RECV_PLAIN", "RECV_XFORM", "RECV_EXPLICIT", "RECV_JLS")
# What planning systems and physicians write: TG-263 names already, names the table renames
# (Brain Stem, Lt Parotid, PTV 70...), names it does not know (z_ring).
ROI_NAMES = ("BODY", "PTV 70", "PTV_56", "CTV 70", "GTV", "Brain Stem", "SpinalCord", "Lt Parotid",
             "Rt Parotid", "Left Submandibular", "Rt Submand", "Mandible", "Oral Cavity", "Larynx",
             "Esophagus", "Lt Cochlea", "R Cochlea", "Left Optic Nerve", "Rt Lens", "z_ring")
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
JPEG_LS_LOSSLESS = SYNTAXES["jpeg-ls"][0]
TRANSFORMED = "tg263 + coerce"
GOAL_TRANSFORM_TO_PLAIN = 1.2
# Between measurements: the gateway indexes what it received once quiet, and receivers delete
# what the previous measurement left; that work must not fall into the next measurement.
SETTLE_SECONDS = 2.0


def with_private_group(ds: Dataset) -> Dataset:
    """A scanner's private group and its institution, what the coercion removes and replaces."""
    block = ds.private_block(0x0009, "ACME SCANNER", create=True)
    block.add_new(0x01, "LO", "reconstruction kernel B31f")
    ds.InstitutionName = "General Hospital"
    return ds


def with_clinical_rois(rtstruct: Dataset) -> Dataset:
    """The structure set with len(ROI_NAMES) ROIs (copies of its last one), named as clinics do."""
    rois = rtstruct.StructureSetROISequence
    contours = rtstruct.ROIContourSequence
    observations = rtstruct.RTROIObservationsSequence
    while len(rois) < len(ROI_NAMES):
        number = max(int(item.ROINumber) for item in rois) + 1
        roi, contour, observation = (copy.deepcopy(items[-1])
                                     for items in (rois, contours, observations))
        roi.ROINumber = number
        contour.ReferencedROINumber = number
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        rois.append(roi)
        contours.append(contour)
        observations.append(observation)
    for item, name in zip(rois, ROI_NAMES, strict=False):
        item.ROIName = name
    return rtstruct


def make_plan(folder: Path, slices: int, size: int) -> list[Path]:
    """CT slices, then the RTSTRUCT and the RTPLAN, as a planning system sends them."""
    plan = make_rt_set(f"BENCH-{generate_uid()[-8:]}", "Bench^Transform", n_slices=slices,
                       rows=size, columns=size, study_description="Head and neck",
                       with_dose=False)
    with_clinical_rois(plan.rtstruct)
    return write_datasets([with_private_group(ds) for ds in plan.all()], folder)


def timed(receiver: OrthancProcess, count: int, send: Callable[[], None]) -> float:
    """Seconds from the start of `send` until `receiver` holds `count` instances."""
    receiver.reset_storage()
    time.sleep(SETTLE_SECONDS)
    start = time.perf_counter()
    send()
    return wait_for_count(receiver, count) - start


def to_gateway(gateway: OrthancProcess, files: list[Path], calling: str,
               options: tuple[str, ...] = ()) -> Callable[[], None]:
    def send() -> None:
        storescu(files, gateway.dicom_port, calling=calling, called="RTGATEWAY", options=options)
    return send


def dcmtk_then_storescu(tool: str, files: list[Path], folder: Path, receiver: OrthancProcess,
                        options: tuple[str, ...]) -> Callable[[], None]:
    """What a site does by hand: the DCMTK tool on each file in a loop, then one storescu."""
    def send() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for source in files:
            target = folder / source.name
            subprocess.run([tool, str(source), str(target)], check=True, capture_output=True)
            out.append(target)
        storescu(out, receiver.dicom_port, calling="SITE", called=receiver.aet, options=options)
    return send


def check(receiver: OrthancProcess, expected: str | None) -> None:
    """What the receiver holds is what was measured (outside the timing)."""
    if expected == TRANSFORMED:
        check_transformed(receiver)
    elif expected is not None:
        check_syntax(receiver, expected)


def check_syntax(receiver: OrthancProcess, uid: str) -> None:
    """One instance the receiver holds is in the syntax measured."""
    instance = receiver.json("/instances")[0]
    held = receiver.get(f"/instances/{instance}/metadata/TransferSyntax").text
    if held != uid:
        raise RuntimeError(f"{receiver.aet} holds {held}, not {uid}")


def check_transformed(receiver: OrthancProcess) -> None:
    """The structure set at RECV_XFORM carries the TG-263 names and the coerced institution."""
    (rtstruct,) = receiver.post("/tools/find", {"Level": "Instance",
                                                "Query": {"Modality": "RTSTRUCT"}}).json()
    ds = dcmread(BytesIO(receiver.get(f"/instances/{rtstruct}/file").content))
    names = {str(item.ROIName) for item in ds.StructureSetROISequence}
    if ds.get("InstitutionName") != "Bench RT" or "Brainstem" not in names:
        raise RuntimeError(f"RECV_XFORM got an untransformed structure set: "
                           f"{ds.get('InstitutionName')}, {sorted(names)}")
    if any(element.tag.group == 0x0009 for element in ds):
        raise RuntimeError("RECV_XFORM got the private group (0009,xxxx)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    began = time.perf_counter()

    work = Path(tempfile.mkdtemp(prefix="rtgw-bench-transform-"))
    receivers = {name: OrthancProcess(work / name.lower(), name) for name in RECEIVERS}
    gateway = OrthancProcess(work / "gateway", "RTGATEWAY", plugin=True, rules=RULES,
                             modalities=dict(receivers), stable_age=1)
    processes = [*receivers.values(), gateway]
    recv_plain, recv_xform, recv_explicit, recv_jls = (receivers[name] for name in RECEIVERS)
    times: dict[str, list[float]] = {k: [] for k in (
        "plain", "xform", "gateway_decompress", "dcmtk_decompress", "gateway_compress",
        "dcmtk_compress")}
    plan_count = args.slices + 2
    try:
        for process in processes:
            process.start()
        for round_number in range(args.rounds):
            folder = work / f"round-{round_number}"
            plain_files = make_plan(folder / "plain", args.slices, args.size)
            xform_files = make_plan(folder / "xform", args.slices, args.size)
            jls_files = transcode(make_series(folder / "to-decompress", args.slices, args.size),
                                  "jpeg-ls", folder / "jls")
            raw_files = make_series(folder / "to-compress", args.slices, args.size)
            # (what, receiver, instances, how sent, what the receiver must then hold)
            pairs = [
                [("plain", recv_plain, plan_count, to_gateway(gateway, plain_files, "PLAIN"),
                  None),
                 ("xform", recv_xform, plan_count, to_gateway(gateway, xform_files, "XFORM"),
                  TRANSFORMED)],
                [("gateway_decompress", recv_explicit, args.slices,
                  to_gateway(gateway, jls_files, "JLS", (PROPOSE["jpeg-ls"],)), EXPLICIT_LITTLE),
                 ("dcmtk_decompress", recv_explicit, args.slices,
                  dcmtk_then_storescu("dcmdjpls", jls_files, folder / "dcmdjpls", recv_explicit,
                                      ()), EXPLICIT_LITTLE)],
                [("gateway_compress", recv_jls, args.slices,
                  to_gateway(gateway, raw_files, "RAW"), JPEG_LS_LOSSLESS),
                 ("dcmtk_compress", recv_jls, args.slices,
                  dcmtk_then_storescu("dcmcjpls", raw_files, folder / "dcmcjpls", recv_jls,
                                      (PROPOSE["jpeg-ls"],)), JPEG_LS_LOSSLESS)],
            ]
            # Each pair's order alternates: the one measured first in a round (after the data
            # was made, or after the other pair's background work) would be biased.
            for pair in pairs:
                for name, receiver, count, send, expected in (pair if round_number % 2 == 0
                                                              else pair[::-1]):
                    times[name].append(timed(receiver, count, send))
                    check(receiver, expected)
            # The gateway keeps what it received; a round's data is not the next round's work.
            gateway.reset_storage()
            shutil.rmtree(folder)
            print(f"round {round_number + 1}/{args.rounds}: "
                  + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), file=sys.stderr)
        orthanc_version = gateway.json("/system").get("Version")
    finally:
        for process in processes:
            process.stop()
    median = {key: statistics.median(values) for key, values in times.items()}

    def per_round(mine: str, baseline: str) -> list[float]:
        return [round(a / b, 3) for a, b in zip(times[mine], times[baseline], strict=True)]

    by_round = {"transform_to_plain": per_round("xform", "plain"),
                "gateway_to_dcmtk_decompress": per_round("gateway_decompress", "dcmtk_decompress"),
                "gateway_to_dcmtk_compress": per_round("gateway_compress", "dcmtk_compress")}
    about = machine()
    result = {
        "benchmark": "transform",
        "machine": {"cores": about["cores"], "orthanc": about["orthanc"],
                    "orthanc_rest_version": orthanc_version, "commit": about["commit"],
                    "tree_clean": about["tree_clean"]},
        "slices": args.slices,
        "size": f"{args.size}x{args.size}",
        "plan_instances": plan_count,
        "roi_count": len(ROI_NAMES),
        "rounds": args.rounds,
        "seconds_median": {k: round(v, 3) for k, v in median.items()},
        "seconds_quartiles": {k: quartiles(v) for k, v in times.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        # Issue 27's goal: normalization and coercion cost at most 20 % over a plain forward.
        "ratio_transform_to_plain": round(median["xform"] / median["plain"], 3),
        "ratio_gateway_to_dcmtk_decompress": round(
            median["gateway_decompress"] / median["dcmtk_decompress"], 3),
        "ratio_gateway_to_dcmtk_compress": round(
            median["gateway_compress"] / median["dcmtk_compress"], 3),
        # The same ratios round by round (the two measured seconds apart, under the same load),
        # their medians and quartiles: the machine's drift between rounds falls out of them.
        "ratios_by_round": by_round,
        "ratio_median_of_rounds": {k: round(statistics.median(v), 3) for k, v in by_round.items()},
        "ratio_quartiles_of_rounds": {k: quartiles(v) for k, v in by_round.items()},
        "goals": {"transform_to_plain": GOAL_TRANSFORM_TO_PLAIN},
        "goal_met_transform_to_plain": median["xform"] / median["plain"] <= GOAL_TRANSFORM_TO_PLAIN,
        "bench_seconds": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
