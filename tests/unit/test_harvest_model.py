import pytest

from orthanc_plugin.harvest.model import (
    HarvestError,
    ItemLevel,
    ItemState,
    RetryPolicy,
    SelectionKind,
    after_move,
    after_query,
    check_series_count,
    next_slot,
    parse_count,
    parse_definition,
    resume_state,
    safe_file_stem,
    start_state,
    zip_name,
)

POLICY = RetryPolicy(max_attempts=3, delay_seconds=2, max_delay_seconds=5)


# -- definition ------------------------------------------------------------------------------------

def test_the_issue_example_parses() -> None:
    definition = parse_definition(
        {"source": "PACS", "patients": {"PatientID": "THLHP*"}, "modalities": ["CT", "rtstruct"],
         "max_requests_per_minute": 600, "concurrency": 2}, {"PACS"})
    assert definition.selection.kind is SelectionKind.QUERY
    assert definition.selection.query == (("PatientID", "THLHP*"),)
    assert definition.modalities == ("CT", "RTSTRUCT")
    assert definition.keeps_modality("ct") and not definition.keeps_modality("RTDOSE")
    assert definition.retrieves
    assert parse_definition(definition.to_json()) == definition


def test_selection_kinds_and_study_filters() -> None:
    ids = parse_definition({"source": "S", "patients": ["A", "B", "A"]})
    assert ids.selection.patient_ids == ("A", "B") and ids.selection.matches("B")
    regex = parse_definition({"source": "S", "patients": {"regex": "HV[AB][0-9]"},
                              "studies": {"StudyDate": "20200101-", "ModalitiesInStudy": ["CT"]}})
    assert regex.selection.matches("HVA1") and not regex.selection.matches("HVA12")
    assert dict(regex.study_filters) == {"StudyDate": "20200101-", "ModalitiesInStudy": "CT"}
    query = parse_definition({"source": "S", "patients": {
        "PatientName": "DOE^*", "StudyDate": "-20201231", "ModalitiesInStudy": "RTPLAN"}})
    assert query.selection.query == (("PatientName", "DOE^*"),)
    assert dict(query.study_filters) == {"StudyDate": "-20201231", "ModalitiesInStudy": "RTPLAN"}
    inventory_only = parse_definition({"source": "S", "patients": ["A"], "levels": ["patient", "study"]})
    assert not inventory_only.retrieves


@pytest.mark.parametrize(("raw", "path"), [
    ({"patients": ["A"]}, "source"),
    ({"source": "NOPE", "patients": ["A"]}, "source"),
    ({"source": "S"}, "patients"),
    ({"source": "S", "patients": []}, "patients"),
    ({"source": "S", "patients": ["A", 3]}, "patients[1]"),
    ({"source": "S", "patients": {"regex": "("}}, "patients.regex"),
    ({"source": "S", "patients": {"regex": "A", "PatientID": "B"}}, "patients"),
    ({"source": "S", "patients": {"PatientSex": "M"}}, "patients.PatientSex"),
    ({"source": "S", "patients": {"StudyDate": "2020-01-01"}}, "patients.StudyDate"),
    ({"source": "S", "patients": {"StudyDate": "20200101"}, "studies": {"StudyDate": "20200101"}},
     "studies.StudyDate"),
    ({"source": "S", "patients": ["A"], "modalities": ["C T"]}, "modalities[0]"),
    ({"source": "S", "patients": ["A"], "levels": ["patient", "series"]}, "levels"),
    ({"source": "S", "patients": ["A"], "levels": ["image"]}, "levels[0]"),
    ({"source": "S", "patients": ["A"], "concurrency": 0}, "concurrency"),
    ({"source": "S", "patients": ["A"], "max_requests_per_minute": True}, "max_requests_per_minute"),
    ({"source": "S", "patients": ["A"], "retry_delay_seconds": -1}, "retry_delay_seconds"),
    ({"source": "S", "patients": ["A"], "colour": "red"}, "colour"),
    ([], "harvest"),
])
def test_errors_name_the_field(raw: object, path: str) -> None:
    with pytest.raises(HarvestError) as caught:
        parse_definition(raw, {"S"})
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: ")


# -- request slots ---------------------------------------------------------------------------------

def _book(count: int, per_minute: int, burst: int, now: float = 1000.0,
          think: float = 0.0) -> list[float]:
    """Book `count` slots one after the other, as the store does from its rows (the last
    minute's, latest first), each caller sending at its slot and thinking before the next."""
    booked: list[float] = []
    for _ in range(count):
        recent = sorted((t for t in booked if t > now - 60), reverse=True)[:per_minute]
        at = next_slot(recent, now, per_minute, burst)
        booked.append(at)
        now = at + think
    return booked


def _max_in_window(times: list[float], window: float) -> int:
    best = 0
    for i, start in enumerate(times):
        best = max(best, sum(1 for t in times[i:] if t < start + window))
    return best


@pytest.mark.parametrize(("per_minute", "burst"), [(60, 1), (700, 1), (10, 4), (3, 3), (1, 1),
                                                   (10, 10)])
def test_no_60_second_window_exceeds_the_cap(per_minute: int, burst: int) -> None:
    times = _book(per_minute * 3, per_minute, burst)
    assert times == sorted(times)
    assert _max_in_window(times, 60.0) <= per_minute
    # and no request waits longer than the cap needs, less its minute's margin
    assert times[-1] - times[0] <= 60 * (len(times) - 1) / max(per_minute - 1, 1) + 1e-6


def test_the_first_request_goes_at_once_then_spacing_is_even() -> None:
    assert next_slot([], 1000.0, 61) == 1000.0
    assert _book(3, 61, 1) == pytest.approx([1000.0, 1001.0, 1002.0])


def test_a_burst_goes_at_once_then_waits_its_share() -> None:
    assert _book(3, 121, 2) == pytest.approx([1000.0, 1000.0, 1001.0])


def test_slots_booked_ahead_by_others_are_queued_behind() -> None:
    # Another node booked the next two seconds: this request comes after them.
    assert next_slot([1002.0, 1001.0], 1000.0, 61) == pytest.approx(1003.0)


def test_a_full_window_waits_for_its_oldest_request_to_be_a_minute_old() -> None:
    # Five requests in the last five seconds (booked under a higher cap, since lowered to five):
    # the next goes when the fifth-latest (at 995) is 60 s old, whatever the spacing allows.
    recent = [999.0, 998.0, 997.0, 996.0, 995.0]
    assert next_slot(recent, 1000.0, 5) == pytest.approx(1055.0)


def test_lowering_the_cap_applies_to_the_next_request() -> None:
    assert next_slot([1000.0], 1000.0, 601) == pytest.approx(1000.1)
    assert next_slot([1000.0], 1000.0, 61) == pytest.approx(1001.0)


# -- state machine ---------------------------------------------------------------------------------

def test_levels_start_in_their_own_busy_state() -> None:
    assert start_state(ItemLevel.SERIES) is ItemState.MOVING
    assert start_state(ItemLevel.STUDY) is ItemState.QUERYING


def test_a_cut_resumes_in_flight_work_and_keeps_settled_work() -> None:
    assert resume_state(ItemState.MOVING) is ItemState.PENDING
    assert resume_state(ItemState.QUERYING) is ItemState.PENDING
    for settled in (ItemState.DONE, ItemState.COMPLETE, ItemState.INCOMPLETE, ItemState.FAILED,
                    ItemState.SKIPPED, ItemState.PENDING):
        assert resume_state(settled) is settled


def test_query_failures_back_off_then_fail() -> None:
    assert after_query(True, 1, POLICY).state is ItemState.DONE
    first = after_query(False, 1, POLICY, "connection refused")
    assert (first.state, first.retry_in_seconds, first.error) == (ItemState.PENDING, 2, "connection refused")
    assert after_query(False, 2, POLICY).retry_in_seconds == 4
    last = after_query(False, 3, POLICY, "connection refused")
    assert last.state is ItemState.FAILED and "after 3 attempt(s)" in (last.error or "")


def test_a_series_is_complete_only_when_the_count_matches() -> None:
    assert after_move(True, 8, 8, 1, POLICY).state is ItemState.COMPLETE
    short = after_move(True, 8, 5, 1, POLICY)
    assert short.state is ItemState.PENDING and short.error == "5 of 8 instance(s) stored"
    assert after_move(True, 8, 5, 3, POLICY).state is ItemState.INCOMPLETE
    assert after_move(False, 8, 0, 3, POLICY, "association refused").state is ItemState.FAILED
    # a failed C-MOVE whose images did all arrive (the answer was lost) is still complete
    assert after_move(False, 8, 8, 1, POLICY).state is ItemState.COMPLETE


def test_series_count_check() -> None:
    assert check_series_count(3, 3).complete
    assert not check_series_count(3, 2).complete
    assert check_series_count(None, 1).complete
    assert not check_series_count(None, 0).complete
    assert parse_count("12") == 12 and parse_count("") is None and parse_count(None) is None


# -- names -----------------------------------------------------------------------------------------

def test_zip_names() -> None:
    assert zip_name("THLHP001", 7) == "THLHP001__seriesCount7.zip"
    assert zip_name("THLHP001", 7, "-") == "THLHP001-seriesCount7.zip"
    with pytest.raises(ValueError):
        zip_name("A", 1, "/")


@pytest.mark.parametrize("patient_id", ["../../etc", "A/B", "..", ".hidden", "", "A\\B", "a b:c"])
def test_unsafe_patient_ids_stay_one_plain_name(patient_id: str) -> None:
    stem = safe_file_stem(patient_id)
    assert "/" not in stem and "\\" not in stem and not stem.startswith(".")
    assert stem not in ("", ".", "..")


def test_ids_that_clean_up_alike_get_different_names() -> None:
    assert safe_file_stem("A/B") != safe_file_stem("A_B")
    assert safe_file_stem("A_B") == "A_B"
