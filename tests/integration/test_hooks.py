"""Site hooks on real processes (issue 27, item 6): each hook runs in its own limited process on
the copy one destination receives. A hook that loops forever, one that allocates without bound
and one that changes the SOP Instance UID are each refused with their reason (the instance parked
for that destination, a quarantine row); a good hook and a plain forward of the same objects are
not held up by them."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.integration.conftest import keep_logs, require_orthanc
from tests.integration.helpers import gateway_rows, running_peers
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.rtset import make_rt_set, write_datasets

HOOKS = {
    "loops.py": "def process(ds):\n    while True:\n        pass\n",
    "hog.py": "def process(ds):\n    hoard = []\n    while True:\n"
              "        hoard.append(bytearray(50_000_000))\n",
    "new_uid.py": "from pydicom.uid import generate_uid\n\n\ndef process(ds):\n"
                  "    ds.SOPInstanceUID = generate_uid()\n    return ds\n",
    "ring.py": "def process(ds):\n    for roi in ds.StructureSetROISequence:\n"
               "        roi.ROIName = 'z_' + roi.ROIName\n    return ds\n",
}
RULES = """
rules:
  - name: loops
    on: instance
    match: {calling_aet: HOOKED, modality: RTSTRUCT}
    actions: [{hook: {script: hooks/loops.py, seconds: 2}}, {forward: BAD}]
  - name: hog
    on: instance
    match: {calling_aet: HOOKED, modality: RTSTRUCT}
    actions: [{hook: {script: hooks/hog.py, memory_mb: 300}}, {forward: BAD}]
  - name: new uid
    on: instance
    match: {calling_aet: HOOKED, modality: RTSTRUCT}
    actions: [{hook: hooks/new_uid.py}, {forward: BAD}]
  - name: ring names
    on: instance
    match: {calling_aet: HOOKED, modality: RTSTRUCT}
    actions: [{hook: hooks/ring.py}, {forward: GOOD}]
  - name: plain copy
    on: instance
    match: {calling_aet: HOOKED}
    actions: [{forward: PLAIN}]
"""


@pytest.fixture(scope="module")
def peers(workdir: Path) -> Iterator[dict[str, OrthancProcess]]:
    require_orthanc()
    with running_peers(workdir, "BAD", "GOOD", "PLAIN") as processes:
        yield processes


@pytest.fixture(scope="module")
def gateway(workdir: Path, peers: dict[str, OrthancProcess]) -> Iterator[OrthancProcess]:
    process = OrthancProcess(workdir / "gateway", "RTGATEWAY", plugin=True, rules=RULES,
                             modalities=dict(peers))
    (process.folder / "hooks").mkdir(parents=True, exist_ok=True)
    for name, text in HOOKS.items():
        (process.folder / "hooks" / name).write_text(text)
    process.start()
    yield process
    process.stop()
    keep_logs(process, "hooks-gateway")


def test_bad_hooks_are_refused_with_their_reasons_and_hold_nothing_else_up(
        gateway: OrthancProcess, peers: dict[str, OrthancProcess], tmp_path: Path) -> None:
    plan = make_rt_set("HOOK-1", "Hook^Hanna", n_slices=3)
    storescu(write_datasets(plan.all(), tmp_path), gateway.dicom_port, calling="HOOKED",
             called="RTGATEWAY")
    everything = {str(ds.SOPInstanceUID) for ds in plan.all()}
    wait_until(lambda: peers["PLAIN"].sop_instance_uids() == everything, 60, "the plain copy")
    wait_until(lambda: peers["GOOD"].instance_count() == 1, 60, "the good hook's copy")
    (good_id,) = peers["GOOD"].json("/instances")
    good = dcmread(BytesIO(peers["GOOD"].get(f"/instances/{good_id}/file").content))
    original = [str(roi.ROIName) for roi in plan.rtstruct.StructureSetROISequence]
    assert [str(roi.ROIName) for roi in good.StructureSetROISequence] == \
        ["z_" + name for name in original]
    assert good.SOPInstanceUID == plan.rtstruct.SOPInstanceUID

    def parked() -> dict[str, str]:
        return {job["rule"]: str(job["last_error"])
                for job in gateway.json("/rt-gateway/jobs", params={"state": "dead"})
                if job["patient_id"] == "HOOK-1"}

    wait_until(lambda: len(parked()) == 3, 90, "the three bad hooks' jobs parked")
    reasons = parked()
    assert "hook loops.py" in reasons["loops"] and "time" in reasons["loops"]
    assert "hook hog.py" in reasons["hog"] and "memory" in reasons["hog"]
    assert "hook new_uid.py" in reasons["new uid"] and "SOP Instance UID" in reasons["new uid"]
    assert peers["BAD"].instance_count() == 0
    quarantined = [row["reason"] for row in gateway_rows(gateway, kind="quarantine")]
    assert sum("copy for BAD not made" in reason for reason in quarantined) == 3
    # The original in Orthanc is untouched by any hook.
    (stored,) = gateway.post("/tools/find", {"Level": "Instance", "Query": {
        "SOPInstanceUID": str(plan.rtstruct.SOPInstanceUID)}}).json()
    kept = dcmread(BytesIO(gateway.get(f"/instances/{stored}/file").content))
    assert [str(roi.ROIName) for roi in kept.StructureSetROISequence] == original
