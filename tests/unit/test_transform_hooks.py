"""Site hooks run for real: each test starts the hook process (python -I hook_child.py) on a small
RT object and checks what run_hook returns or why it refuses."""

from __future__ import annotations

import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from orthanc_plugin.transform import hooks
from orthanc_plugin.transform.hooks import (
    HookLimits,
    HookRefused,
    hook_outcome,
    referenced_uids,
    run_hook,
)
from tests.support.rtset import RtSet, make_rt_set

FAST = HookLimits(seconds=5.0, memory_mb=512)


@pytest.fixture(scope="module")
def rtset() -> RtSet:
    # Small grid and few slices: the hook's own work stays negligible next to its start-up.
    return make_rt_set("P-HOOK", "Hook^Harry", n_slices=4, rows=16, columns=16, with_dose=False)


def encode(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def parse(data: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(data), force=False)


def script(folder: Path, body: str, name: str = "hook.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def refusal(path: Path, data: bytes, limits: HookLimits = FAST, **kwargs: bool) -> HookRefused:
    with pytest.raises(HookRefused) as caught:
        run_hook(path, data, limits, **kwargs)
    return caught.value


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening TCP socket; after the hook, accept() tells whether anything connected."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    yield server
    server.close()


def was_contacted(server: socket.socket) -> bool:
    # The kernel completes the handshake into the backlog without accept(), so a connection
    # that was made (even closed since) is there to accept.
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


CONNECT = """
    import socket

    def process(ds):
        socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
        return None
"""


# --- changes that pass -----------------------------------------------------------------------


def test_renaming_an_roi_returns_a_parseable_object_with_the_new_name(
    tmp_path: Path, rtset: RtSet
) -> None:
    hook = script(tmp_path, """
        def process(ds):
            print("renaming")  # must end up in the log tail, not in the result
            for roi in ds.StructureSetROISequence:
                if roi.ROIName == "PTV":
                    roi.ROIName = "PTV_60"
            return ds
    """)
    data = encode(rtset.rtstruct)
    result = parse(run_hook(hook, data, FAST))
    names = [str(roi.ROIName) for roi in result.StructureSetROISequence]
    assert names == ["BODY", "PTV_60", "Rectum"]
    assert result.SOPInstanceUID == rtset.rtstruct.SOPInstanceUID
    assert result.file_meta.MediaStorageSOPInstanceUID == rtset.rtstruct.SOPInstanceUID


def test_returning_none_passes_the_input_bytes_on(tmp_path: Path, rtset: RtSet) -> None:
    hook = script(tmp_path, """
        def process(ds):
            return None
    """)
    data = encode(rtset.rtstruct)
    assert run_hook(hook, data, FAST) == data


def test_none_after_changing_in_place_is_refused_not_dropped(tmp_path: Path, rtset: RtSet) -> None:
    hook = script(tmp_path, """
        def process(ds):
            ds.StructureSetLabel = "CHANGED"
    """)
    refused = refusal(hook, encode(rtset.rtstruct))
    assert refused.kind == "invalid"
    assert "returned None but changed the dataset" in refused.reason


# --- limits ----------------------------------------------------------------------------------


def test_endless_loop_is_refused_for_the_time_limit(tmp_path: Path, rtset: RtSet) -> None:
    hook = script(tmp_path, """
        def process(ds):
            while True:
                pass
    """)
    refused = refusal(hook, encode(rtset.rtstruct), HookLimits(seconds=1.0))
    assert refused.kind == "time"
    assert "time limit" in refused.reason


def test_a_hook_that_waits_is_stopped_by_the_wall_clock(tmp_path: Path, rtset: RtSet) -> None:
    # Sleeping uses no CPU, so RLIMIT_CPU never fires: only the parent's deadline ends it.
    hook = script(tmp_path, """
        import time

        def process(ds):
            time.sleep(60)
    """)
    refused = refusal(hook, encode(rtset.rtstruct), HookLimits(seconds=1.0))
    assert refused.kind == "time"
    assert "time limit of 1 s exceeded" in refused.reason


def test_a_program_left_running_neither_holds_up_the_answer_nor_survives(
    tmp_path: Path, rtset: RtSet, isolation: str
) -> None:
    """In a network namespace a hook may start a program: the answer does not wait for it and it
    dies with the hook. Under the Python guard alone starting a program is refused (a child
    program would have the network), with the reason."""
    pid_file = tmp_path / "sleeper.pid"
    hook = script(tmp_path, f"""
        import subprocess

        def process(ds):
            # Inherits stderr: the parent must not wait for that pipe to close.
            sleeper = subprocess.Popen(["sleep", "30"])
            open({str(pid_file)!r}, "w").write(str(sleeper.pid))
    """)
    data = encode(rtset.rtstruct)
    if isolation == "guard" or hooks.network_isolation() == hooks.ISOLATION_GUARD:
        refused = refusal(hook, data, HookLimits(seconds=5.0))
        assert refused.kind == "crash"
        assert "network access is not allowed" in refused.reason
        assert not pid_file.exists()
        return
    assert run_hook(hook, data, HookLimits(seconds=5.0)) == data
    pid = int(pid_file.read_text())
    assert wait_until_gone(pid), f"sleep {pid} outlived its hook"


def wait_until_gone(pid: int) -> bool:
    # Killed by the process-group kill; a zombie waiting for a reaper counts as gone.
    for _ in range(200):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.01)
    return False


def test_unbounded_allocation_is_refused_for_memory(tmp_path: Path, rtset: RtSet) -> None:
    hook = script(tmp_path, """
        def process(ds):
            hoard = []
            while True:
                hoard.append(bytearray(16 * 1024 * 1024))
    """)
    refused = refusal(hook, encode(rtset.rtstruct), HookLimits(seconds=5.0, memory_mb=256))
    assert refused.kind == "memory"
    assert "memory limit of 256 MB" in refused.reason


def test_an_output_far_larger_than_the_input_is_refused(tmp_path: Path, rtset: RtSet) -> None:
    hook = script(tmp_path, """
        def process(ds):
            ds.add_new(0x00091010, "OB", b"x" * (8 * 1024 * 1024))
            return ds
    """)
    refused = refusal(hook, encode(rtset.rtstruct))
    assert refused.kind == "invalid"
    assert "exceeds the limit" in refused.reason


# --- validation ------------------------------------------------------------------------------

NEW_UID = """
    from pydicom.uid import generate_uid

    def process(ds):
        ds.SOPInstanceUID = generate_uid()
        return ds
"""


def test_a_changed_sop_instance_uid_is_refused(tmp_path: Path, rtset: RtSet) -> None:
    refused = refusal(script(tmp_path, NEW_UID), encode(rtset.rtstruct))
    assert refused.kind == "invalid"
    assert "SOP Instance UID changed" in refused.reason


def test_a_changed_sop_instance_uid_passes_when_the_rule_declares_it(
    tmp_path: Path, rtset: RtSet
) -> None:
    result = parse(run_hook(script(tmp_path, NEW_UID), encode(rtset.rtstruct), FAST,
                            allow_uid_change=True))
    assert result.SOPInstanceUID != rtset.rtstruct.SOPInstanceUID
    # The file meta follows the dataset, or the receiver would store it under the old UID.
    assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID


def test_dropping_the_referenced_frame_of_reference_sequence_is_refused(
    tmp_path: Path, rtset: RtSet
) -> None:
    hook = script(tmp_path, """
        def process(ds):
            del ds.ReferencedFrameOfReferenceSequence
            return ds
    """)
    refused = refusal(hook, encode(rtset.rtstruct))
    assert refused.kind == "invalid"
    assert "references lost" in refused.reason


def test_repointing_the_plan_at_another_structure_set_is_refused(
    tmp_path: Path, rtset: RtSet
) -> None:
    hook = script(tmp_path, """
        from pydicom.uid import generate_uid

        def process(ds):
            ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID = generate_uid()
            return ds
    """)
    refused = refusal(hook, encode(rtset.rtplan))
    assert "references lost" in refused.reason
    assert str(rtset.rtstruct.SOPInstanceUID) in refused.reason


def test_referenced_uids_walks_nested_sequences(rtset: RtSet) -> None:
    struct_refs = referenced_uids(rtset.rtstruct)
    assert {str(ct.SOPInstanceUID) for ct in rtset.ct} <= struct_refs
    assert rtset.frame_of_reference_uid in struct_refs
    assert str(rtset.ct[0].SeriesInstanceUID) in struct_refs  # RTReferencedSeriesSequence
    assert str(rtset.rtstruct.SOPInstanceUID) not in struct_refs  # its own identity
    assert str(rtset.rtstruct.SOPInstanceUID) in referenced_uids(rtset.rtplan)


# --- refusals and crashes --------------------------------------------------------------------


def test_refuse_from_the_script_carries_its_reason(tmp_path: Path, rtset: RtSet) -> None:
    hook = script(tmp_path, """
        from orthanc_plugin.transform.hook_api import Refuse

        def process(ds):
            raise Refuse("not for this site")
    """)
    outcome = hook_outcome(hook, encode(rtset.rtstruct), FAST)
    assert outcome.data is None
    assert outcome.kind == "refused"
    assert outcome.refused is not None and outcome.refused.endswith("not for this site")


def test_a_crash_is_refused_with_the_exceptions_last_line(tmp_path: Path, rtset: RtSet) -> None:
    hook = script(tmp_path, """
        def process(ds):
            raise ValueError("no ROI called Ring in " + str(ds.Modality))
    """)
    refused = refusal(hook, encode(rtset.rtstruct))
    assert refused.kind == "crash"
    assert refused.reason.endswith("ValueError: no ROI called Ring in RTSTRUCT")


def test_the_gateway_itself_is_not_importable_from_a_hook(tmp_path: Path, rtset: RtSet) -> None:
    hook = script(tmp_path, """
        import orthanc_plugin.config

        def process(ds):
            return None
    """)
    refused = refusal(hook, encode(rtset.rtstruct))
    assert "ModuleNotFoundError" in refused.reason


# --- network ---------------------------------------------------------------------------------


@pytest.fixture(params=["best", "guard"])
def isolation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each network test twice: with what this machine gives, and with the Python guard alone
    (the fallback where no namespace can be made)."""
    if request.param == "guard":
        monkeypatch.setattr(hooks, "NAMESPACE_ATTEMPTS", ())
    return str(request.param)


def test_a_hook_cannot_connect_out(
    tmp_path: Path, rtset: RtSet, listener: socket.socket, isolation: str
) -> None:
    hook = script(tmp_path, CONNECT.format(port=listener.getsockname()[1]))
    refused = refusal(hook, encode(rtset.rtstruct))
    assert refused.kind == "crash"
    assert not was_contacted(listener)


def test_the_guard_is_not_bypassed_through_the_low_level_socket_module(
    tmp_path: Path, rtset: RtSet, listener: socket.socket, isolation: str
) -> None:
    hook = script(tmp_path, f"""
        import _socket

        def process(ds):
            s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
            s.connect(("127.0.0.1", {listener.getsockname()[1]}))
    """)
    refused = refusal(hook, encode(rtset.rtstruct))
    assert "network access is not allowed" in refused.reason
    assert not was_contacted(listener)


def test_a_program_started_by_the_hook_has_no_network_either(
    tmp_path: Path, rtset: RtSet, listener: socket.socket, isolation: str
) -> None:
    # A child program is outside the Python guard: the namespace stops it where there is one,
    # otherwise the guard refuses to start it.
    hook = script(tmp_path, f"""
        import subprocess, sys

        def process(ds):
            code = "import socket; socket.create_connection(('127.0.0.1', {listener.getsockname()[1]}))"
            subprocess.run([sys.executable, "-c", code], check=True, timeout=3)
    """)
    refused = refusal(hook, encode(rtset.rtstruct))
    assert refused.kind == "crash"
    assert not was_contacted(listener)


def test_network_allowed_lets_the_same_hook_connect(
    tmp_path: Path, rtset: RtSet, listener: socket.socket
) -> None:
    # The control for the tests above: the listener does see a hook that may connect.
    hook = script(tmp_path, CONNECT.format(port=listener.getsockname()[1]))
    data = encode(rtset.rtstruct)
    assert run_hook(hook, data, HookLimits(seconds=5.0, network=True)) == data
    assert was_contacted(listener)


def test_network_isolation_reports_a_known_mode() -> None:
    assert hooks.network_isolation() in (
        hooks.ISOLATION_USER_NET, hooks.ISOLATION_NET, hooks.ISOLATION_GUARD,
    )


# --- concurrency -----------------------------------------------------------------------------


def test_two_hooks_at_once_do_not_interfere(tmp_path: Path, rtset: RtSet) -> None:
    label = script(tmp_path, """
        import time

        def process(ds):
            time.sleep(0.3)  # overlap with the other run
            ds.StructureSetLabel = "FROM_A"
            return ds
    """, name="label.py")
    plan = script(tmp_path, """
        import time

        def process(ds):
            time.sleep(0.3)
            ds.RTPlanLabel = "FROM_B"
            return ds
    """, name="plan.py")
    inputs = {"a": (label, encode(rtset.rtstruct)), "b": (plan, encode(rtset.rtplan))}
    results: dict[str, bytes | BaseException] = {}

    def run(key: str) -> None:
        path, data = inputs[key]
        try:
            results[key] = run_hook(path, data, FAST)
        except BaseException as error:
            results[key] = error

    threads = [threading.Thread(target=run, args=(key,)) for key in inputs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    a, b = results["a"], results["b"]
    assert isinstance(a, bytes) and isinstance(b, bytes), results
    struct, plan_ds = parse(a), parse(b)
    assert struct.StructureSetLabel == "FROM_A" and struct.Modality == "RTSTRUCT"
    assert plan_ds.RTPlanLabel == "FROM_B" and plan_ds.Modality == "RTPLAN"
