"""Reception first, without Orthanc: when a background REST call waits, for how long, who never
waits, what the lead publishes, and what GET stats sums (orthanc_plugin/reception.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from orthanc_plugin.config import ConfigError
from orthanc_plugin.reception import (
    ARRIVAL_FILE,
    PASS_SHARE,
    POLL_SECONDS,
    ArrivalBeacon,
    ReceptionGate,
    ReceptionSettings,
    arrival_age,
    hold_seconds,
    read_reception_settings,
    summary,
)

SETTINGS = ReceptionSettings(enabled=True, quiet_seconds=0.75, max_pause_seconds=5.0)


class FakeTime:
    """A clock that only moves when someone sleeps; instances "arrive" at given times."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.last_arrival: float | None = None
        self.slept: list[float] = []
        # While set, each sleep is an instant at which another instance arrives (a long burst).
        self.burst_until = float("-inf")

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.slept.append(seconds)
        self.now += seconds
        if self.now < self.burst_until:
            self.last_arrival = self.now

    def age(self, _: Path) -> float | None:
        return None if self.last_arrival is None else self.now - self.last_arrival


def make_gate(tmp_path: Path, fake: FakeTime, settings: ReceptionSettings = SETTINGS,
              ) -> ReceptionGate:
    return ReceptionGate.for_worker(settings, tmp_path, 1, age=fake.age, clock=lambda: fake.now,
                                    sleep=fake.sleep)


# -- the decision ----------------------------------------------------------------------------------
def test_no_hold_without_a_recent_arrival() -> None:
    assert hold_seconds(None, 0.0, SETTINGS) == 0
    assert hold_seconds(0.75, 0.0, SETTINGS) == 0
    assert hold_seconds(30.0, 0.0, SETTINGS) == 0


def test_a_recent_arrival_holds_in_short_steps_until_quiet() -> None:
    assert hold_seconds(0.0, 0.0, SETTINGS) == POLL_SECONDS
    # Never past the moment the burst counts as ended, nor past the longest pause.
    assert hold_seconds(0.74, 0.0, SETTINGS) == pytest.approx(0.01)
    assert hold_seconds(0.0, 4.99, SETTINGS) == pytest.approx(0.01)


def test_the_longest_pause_lets_the_call_go() -> None:
    assert hold_seconds(0.0, 5.0, SETTINGS) == 0


def test_disabled_never_holds() -> None:
    assert hold_seconds(0.0, 0.0, ReceptionSettings(enabled=False)) == 0


# -- the gate --------------------------------------------------------------------------------------
def test_background_call_waits_for_the_burst_to_end_then_goes(tmp_path: Path) -> None:
    fake = FakeTime()
    gate = make_gate(tmp_path, fake)
    fake.last_arrival = fake.now - 0.1
    with gate.for_action("overlay"):
        gate.before_request()
    assert fake.now - fake.last_arrival >= SETTINGS.quiet_seconds
    assert sum(fake.slept) == pytest.approx(0.65)
    assert gate.counters.held_calls == 1
    assert gate.counters.held_seconds == pytest.approx(0.65)
    assert gate.counters.pass_windows == 0


def test_forwarding_and_unmarked_threads_never_wait(tmp_path: Path) -> None:
    fake = FakeTime()
    gate = make_gate(tmp_path, fake)
    fake.last_arrival = fake.now
    with gate.for_action("forward"):
        gate.before_request()
    gate.before_request()  # the intake, the routes: not marked
    assert fake.slept == []
    assert gate.counters.held_calls == 0


def test_a_quiet_gateway_lets_background_calls_through(tmp_path: Path) -> None:
    fake = FakeTime()
    gate = make_gate(tmp_path, fake)
    with gate.background():
        gate.before_request()            # nothing ever arrived
        fake.last_arrival = fake.now - 2.0
        gate.before_request()            # the last burst ended long ago
    assert fake.slept == []


def test_an_endless_reception_slows_background_work_but_never_stops_it(tmp_path: Path) -> None:
    fake = FakeTime()
    gate = make_gate(tmp_path, fake)
    fake.last_arrival = fake.now
    fake.burst_until = float("inf")
    with gate.background():
        gate.before_request()
        assert sum(fake.slept) == pytest.approx(SETTINGS.max_pause_seconds)
        assert gate.counters.pass_windows == 1
        # A pass window: the next calls go at once for a tenth of the pause ...
        held = len(fake.slept)
        gate.before_request()
        fake.now += SETTINGS.max_pause_seconds * PASS_SHARE * 0.9
        gate.before_request()
        assert len(fake.slept) == held
        # ... then the thread is held again.
        fake.now += SETTINGS.max_pause_seconds * PASS_SHARE
        fake.last_arrival = fake.now
        gate.before_request()
    assert gate.counters.pass_windows == 2
    assert gate.counters.held_calls == 2


def test_the_marking_ends_with_its_block_and_is_per_thread(tmp_path: Path) -> None:
    fake = FakeTime()
    gate = make_gate(tmp_path, fake)
    fake.last_arrival = fake.now
    other_waited: list[bool] = []

    def other_thread() -> None:
        before = len(fake.slept)
        gate.before_request()
        other_waited.append(len(fake.slept) > before)

    with gate.background():
        thread = threading.Thread(target=other_thread, name="rtgw-sender-0")
        thread.start()
        thread.join()
    gate.before_request()
    assert other_waited == [False]
    assert fake.slept == []


def test_the_lead_s_harvest_threads_are_background_by_name(tmp_path: Path) -> None:
    fake = FakeTime()
    gate = make_gate(tmp_path, fake)
    fake.last_arrival = fake.now
    thread = threading.Thread(target=gate.before_request, name="rtgw-harvest-0")
    thread.start()
    thread.join()
    assert gate.counters.held_calls == 1


def test_disabled_gate_never_holds(tmp_path: Path) -> None:
    fake = FakeTime()
    gate = make_gate(tmp_path, fake, ReceptionSettings(enabled=False))
    fake.last_arrival = fake.now
    with gate.background():
        gate.before_request()
        assert not gate.arriving()
    assert fake.slept == []


def test_counters_are_published_and_continue_after_a_worker_restart(tmp_path: Path) -> None:
    fake = FakeTime()
    gate = make_gate(tmp_path, fake)
    fake.last_arrival = fake.now
    with gate.background():
        gate.before_request()
    assert (tmp_path / "reception-1.json").exists()
    again = make_gate(tmp_path, fake)
    assert again.counters.held_calls == 1
    shown = summary(tmp_path, SETTINGS)
    assert shown["held_calls"] == 1
    assert shown["by_worker"]["1"]["held_calls"] == 1


# -- the lead's beacon and what the workers read -----------------------------------------------------
def test_only_a_dicom_peer_s_instances_publish_an_arrival(tmp_path: Path) -> None:
    now = [50.0]
    beacon = ArrivalBeacon(tmp_path / ARRIVAL_FILE, clock=lambda: now[0])
    # The gateway's own stores (overlay series, anonymized copies) come back through REST.
    assert not beacon.noted("RestApi")
    assert not beacon.noted("Plugins")
    assert not (tmp_path / ARRIVAL_FILE).exists()
    assert beacon.noted("DicomProtocol")
    assert (tmp_path / ARRIVAL_FILE).exists()
    # At most one touch per 100 ms while a series arrives.
    now[0] += 0.05
    assert not beacon.noted("DicomProtocol")
    now[0] += 0.06
    assert beacon.noted("DicomProtocol")


def test_arrival_age_reads_the_file_time(tmp_path: Path) -> None:
    path = tmp_path / ARRIVAL_FILE
    assert arrival_age(path) is None
    path.touch()
    age = arrival_age(path)
    assert age is not None and age < 5
    old = time.time() - 30
    os.utime(path, (old, old))
    assert arrival_age(path) == pytest.approx(30, abs=1)
    # Touched "in the future" (the clock stepped back): no arrival, rather than held work.
    future = time.time() + 3600
    os.utime(path, (future, future))
    assert arrival_age(path) is None


def test_summary_shows_settings_and_whether_instances_arrive(tmp_path: Path) -> None:
    (tmp_path / "reception-1.json").write_text(
        '{"held_calls": 3, "held_seconds": 1.5, "pass_windows": 0}')
    (tmp_path / "reception-2.json").write_text(
        '{"held_calls": 2, "held_seconds": 0.5, "pass_windows": 1}')
    (tmp_path / "reception-3.json").write_text("not json")
    (tmp_path / ARRIVAL_FILE).touch()
    shown = summary(tmp_path, SETTINGS)
    assert (shown["held_calls"], shown["held_seconds"], shown["pass_windows"]) == (5, 2.0, 1)
    assert shown["instances_arriving"] is True
    assert shown["enabled"] is True and shown["quiet_seconds"] == 0.75
    assert set(shown["by_worker"]) == {"1", "2"}


# -- the setting -----------------------------------------------------------------------------------
def test_settings_default_on() -> None:
    assert read_reception_settings({}) == ReceptionSettings(True, 0.75, 5.0)
    assert read_reception_settings({"ReceptionFirst": {"Enabled": False}}).enabled is False
    assert read_reception_settings(
        {"ReceptionFirst": {"QuietSeconds": 2, "MaxPauseSeconds": 30}}
    ) == ReceptionSettings(True, 2.0, 30.0)


@pytest.mark.parametrize(("section", "named"), [
    ("yes", "RtGateway.ReceptionFirst: expected an object"),
    ({"Enabled": "yes"}, "RtGateway.ReceptionFirst.Enabled"),
    ({"QuietSeconds": 0}, "RtGateway.ReceptionFirst.QuietSeconds"),
    ({"MaxPauseSeconds": True}, "RtGateway.ReceptionFirst.MaxPauseSeconds"),
    ({"QuietSecond": 1}, "unknown setting(s) QuietSecond"),
])
def test_bad_settings_are_refused_with_their_path(section: object, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        read_reception_settings({"ReceptionFirst": section})
