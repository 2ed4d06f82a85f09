"""Plan bundles from references, whatever the arrival order."""

from __future__ import annotations

import itertools

import pytest
from pydicom.dataset import Dataset

from orthanc_plugin.plans.model import Bundle, RtObject, StoredInstance, build_bundles
from orthanc_plugin.plans.references import references_of, rt_object
from tests.support.rtset import RtSet, add_plan, make_rt_set

ORDER = ["CT", "RTSTRUCT", "RTPLAN", "RTDOSE"]


def stored_of(ds: Dataset) -> StoredInstance:
    return StoredInstance(
        instance_id="id-" + str(ds.SOPInstanceUID), sop_instance_uid=str(ds.SOPInstanceUID),
        modality=str(ds.Modality), series_uid=str(ds.SeriesInstanceUID),
        instance_number=int(ds.InstanceNumber),
    )


def bundles_after(arrived: list[Dataset]) -> list[Bundle]:
    rt = [rt_object(ds) for ds in arrived if ds.Modality != "CT"]
    stored = {str(ds.SOPInstanceUID): stored_of(ds) for ds in arrived}
    return build_bundles(rt, stored)


@pytest.fixture(scope="module")
def rtset() -> RtSet:
    return make_rt_set("PERM", plan_label="ADP1", n_slices=6, rows=32, columns=32)


def test_references_follow_the_chain(rtset: RtSet) -> None:
    assert references_of(rtset.rtplan) == (str(rtset.rtstruct.SOPInstanceUID),)
    assert rtset.rtdose is not None
    assert references_of(rtset.rtdose) == (str(rtset.rtplan.SOPInstanceUID),)
    assert list(references_of(rtset.rtstruct)) == [str(ds.SOPInstanceUID) for ds in rtset.ct]
    assert references_of(rtset.ct[0]) == ()


def test_images_named_only_by_contours_count_too(rtset: RtSet) -> None:
    rtstruct = rtset.rtstruct.copy()
    del rtstruct.ReferencedFrameOfReferenceSequence
    # Each contour names its slice; BODY is drawn on every slice.
    assert set(references_of(rtstruct)) == {str(ds.SOPInstanceUID) for ds in rtset.ct}


@pytest.mark.parametrize("order", list(itertools.permutations(ORDER)))
def test_bundle_is_complete_only_at_the_end_whatever_the_order(
    rtset: RtSet, order: tuple[str, ...]
) -> None:
    groups = {"CT": rtset.ct, "RTSTRUCT": [rtset.rtstruct], "RTPLAN": [rtset.rtplan],
              "RTDOSE": [rtset.rtdose]}
    arrived: list[Dataset] = []
    for step, modality in enumerate(order):
        arrived += groups[modality]
        bundles = bundles_after(arrived)
        if "RTPLAN" not in order[: step + 1]:
            assert bundles == []
            continue
        (bundle,) = bundles
        assert bundle.complete is (step == len(order) - 1)
        absent = set(ORDER) - set(order[: step + 1])
        text = " ".join(bundle.missing)
        for modality_absent in absent:
            if modality_absent == "CT" and "RTSTRUCT" not in order[: step + 1]:
                continue  # the images are not known before the structure set names them
            assert ("referenced images" if modality_absent == "CT" else modality_absent) in text
    (bundle,) = bundles_after(arrived)
    modalities = [member.modality for member in bundle.members]
    assert modalities == sorted(modalities, key=ORDER.index)
    assert len(bundle.members) == len(rtset.ct) + 3


def test_ct_in_several_associations_completes_with_the_last_slice(rtset: RtSet) -> None:
    assert rtset.rtdose is not None
    arrived = [rtset.rtdose, rtset.rtplan, rtset.rtstruct, *rtset.ct[:2]]
    (bundle,) = bundles_after(arrived)
    assert bundle.missing == (f"4 of 6 referenced images (first {rtset.ct[2].SOPInstanceUID})",)
    arrived += rtset.ct[2:5]
    assert not bundles_after(arrived)[0].complete
    arrived.append(rtset.ct[5])
    assert bundles_after(arrived)[0].complete


def test_two_plans_share_ct_and_structure_set_across_studies() -> None:
    base = make_rt_set("ETHOS", plan_label="SCHED", n_slices=4, rows=16, columns=16)
    adp_plan, adp_dose = add_plan(base, "ADP1", study_uid="1.2.3.999")
    assert adp_dose is not None and base.rtdose is not None
    bundles = {b.plan_label: b for b in bundles_after(
        [adp_dose, adp_plan, base.rtdose, base.rtplan, base.rtstruct, *base.ct])}
    assert set(bundles) == {"SCHED", "ADP1"}
    assert all(b.complete for b in bundles.values())
    assert bundles["ADP1"].dose_uids == (str(adp_dose.SOPInstanceUID),)
    assert str(base.rtplan.SOPInstanceUID) not in {m.sop_instance_uid for m in bundles["ADP1"].members}
    shared = set(bundles["ADP1"].instance_ids) & set(bundles["SCHED"].instance_ids)
    assert len(shared) == 4 + 1  # the CT slices and the structure set


def test_plan_without_structure_set_reference_is_incomplete() -> None:
    plan = RtObject("1.1", "RTPLAN", (), "P")
    (bundle,) = build_bundles([plan], {"1.1": StoredInstance("a", "1.1", "RTPLAN")})
    assert not bundle.complete
    assert "references no structure set" in bundle.missing[0]


def test_expected_doses() -> None:
    objects = [RtObject("p", "RTPLAN", ("s",)), RtObject("s", "RTSTRUCT", ()),
               RtObject("d1", "RTDOSE", ("p",)), RtObject("d2", "RTDOSE", ("p",))]
    stored = {uid: StoredInstance(uid, uid, m.modality) for uid, m in
              ((o.sop_instance_uid, o) for o in objects)}
    assert build_bundles(objects, stored, expected_doses=2)[0].complete
    del stored["d2"]
    assert build_bundles(objects, stored, expected_doses=2)[0].missing == (
        "RTDOSE (1 of 2 expected)",)


def test_per_beam_doses_are_all_expected() -> None:
    """A plan whose doses are per beam (DoseSummationType BEAM) is complete with one per beam."""
    from orthanc_plugin.plans.model import RtObject, StoredInstance, build_bundles

    plan = RtObject("plan", "RTPLAN", ("ss",), "P1", beam_count=3)
    structure = RtObject("ss", "RTSTRUCT", ())
    doses = [RtObject(f"d{n}", "RTDOSE", ("plan",), dose_summation="BEAM") for n in range(3)]
    stored = {uid: StoredInstance(f"id-{uid}", uid, kind) for uid, kind in (
        ("plan", "RTPLAN"), ("ss", "RTSTRUCT"), ("d0", "RTDOSE"), ("d1", "RTDOSE"),
        ("d2", "RTDOSE"))}
    two = {k: v for k, v in stored.items() if k != "d2"}
    (partial,) = build_bundles([plan, structure, *doses[:2]], two)
    assert partial.missing == ("RTDOSE (2 of 3 per-beam doses)",)
    (whole,) = build_bundles([plan, structure, *doses], stored)
    assert whole.complete and len(whole.dose_uids) == 3
