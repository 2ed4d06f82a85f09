import math

import pytest

from orthanc_plugin.forwarding.model import (
    FailureKind,
    classify_failure,
    delivered_before_failure,
)
from orthanc_plugin.jobs.send_order import OutgoingInstance, order_for_sending


def test_plan_is_sent_images_first_then_structure_plan_dose() -> None:
    items = [
        OutgoingInstance("d", "RTDOSE"),
        OutgoingInstance("p", "RTPLAN"),
        OutgoingInstance("ct2", "CT", "s1", 2),
        OutgoingInstance("s", "RTSTRUCT"),
        OutgoingInstance("ct1", "CT", "s1", 1),
    ]
    assert [i.instance_id for i in order_for_sending(items)] == ["ct1", "ct2", "s", "p", "d"]


def test_receiver_refusal_is_told_apart_from_a_network_failure() -> None:
    refused = classify_failure('C-STORE SCU to AET "X" has failed with DIMSE status 0xA700')
    assert refused.kind is FailureKind.REFUSED and refused.status == "0xA700"
    down = classify_failure('DicomAssociation - connecting to AET "X": Connection refused')
    assert down.kind is FailureKind.RETRYABLE
    assert classify_failure("x", http_status=404).kind is FailureKind.UNKNOWN_TARGET


def test_delivered_count_is_exact_from_whole_percent_progress_up_to_40() -> None:
    for size in range(1, 41):
        for delivered in range(size):
            exact = 100 * delivered / size
            # Orthanc 1.10 rounds to the nearest whole percent (iround); others truncate.
            for progress in (math.floor(exact + 0.5), int(exact)):
                assert delivered_before_failure(progress, size) == delivered, (size, delivered)


def test_refusal_at_fourth_of_forty_is_not_counted_delivered() -> None:
    # The measured bug: 3/40 = 7.5 % is reported as 8 %, and ceil() took slice 4 as delivered.
    assert delivered_before_failure(8, 40) == 3
    with pytest.raises(ValueError):
        delivered_before_failure(50, 41)


def test_storage_commitment_settings_are_checked() -> None:
    from orthanc_plugin.config import ConfigError
    from orthanc_plugin.forwarding.commitment import read_settings

    settings = read_settings({"StorageCommitment": {"Modalities": ["ARCHIVE"],
                                                    "TimeoutSeconds": 60}})
    assert settings.wanted("ARCHIVE") and not settings.wanted("OTHER")
    assert settings.timeout_seconds == 60 and settings.check_every_seconds == 2
    assert not read_settings({}).modalities
    for bad in ({"Modalities": "ARCHIVE"}, {"Modalities": [""]}, {"TimeoutSeconds": 0},
                {"CheckEverySeconds": True}, {"Batch": "x"}, ["ARCHIVE"]):
        with pytest.raises(ConfigError, match="StorageCommitment"):
            read_settings({"StorageCommitment": bad})
