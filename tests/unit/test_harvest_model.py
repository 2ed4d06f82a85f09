import pytest

from orthanc_plugin.harvest.model import (
    HarvestError,
    ItemLevel,
    ItemState,
    RateLimiter,
    RetryPolicy,
    SelectionKind,
    after_move,
    after_query,
    check_series_count,
    parse_count,
    parse_definition,
    resume_state,
    safe_file_stem,
    start_state,
    zip_name,
)

POLICY = RetryPolicy(max_attempts=3, delay_seconds=2, max_delay_seconds=5)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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


# -- rate limiter ----------------------------------------------------------------------------------

def _send_times(limiter: RateLimiter, clock: FakeClock, count: int, think: float = 0.0) -> list[float]:
    """Simulate one worker: reserve, wait the answer, send, think, repeat."""
    times = []
    for _ in range(count):
        clock.now += limiter.reserve()
        times.append(clock.now)
        clock.now += think
    return times


def _max_in_window(times: list[float], window: float) -> int:
    best = 0
    for i, start in enumerate(times):
        best = max(best, sum(1 for t in times[i:] if t < start + window))
    return best


@pytest.mark.parametrize(("per_minute", "burst"), [(60, 1), (700, 1), (10, 4), (3, 3), (1, 1)])
def test_no_60_second_window_exceeds_the_cap(per_minute: int, burst: int) -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute, burst, clock)
    times = _send_times(limiter, clock, per_minute * 3)
    assert _max_in_window(times, 60.0) <= per_minute
    # and no request waits longer than the cap needs: the burst, then one per refilled token
    assert times[-1] - times[0] == pytest.approx((len(times) - limiter.burst) / limiter.rate_per_second)


def test_the_first_request_goes_at_once_then_spacing_is_even() -> None:
    clock = FakeClock()
    limiter = RateLimiter(61, 1, clock)
    assert limiter.reserve() == 0.0
    assert limiter.reserve() == pytest.approx(1.0)
    assert limiter.reserve() == pytest.approx(2.0)   # booked behind the previous reservation


def test_idle_time_refills_only_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(121, 2, clock)
    limiter.reserve()
    limiter.reserve()
    clock.now += 3600
    assert [limiter.reserve(), limiter.reserve()] == [0.0, 0.0]
    assert limiter.reserve() > 0


def test_lowering_the_cap_applies_to_the_next_request() -> None:
    clock = FakeClock()
    limiter = RateLimiter(601, 1, clock)
    limiter.reserve()
    limiter.configure(61)
    assert limiter.reserve() == pytest.approx(1.0)


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
