"""Import folder, pure parts: globs, completeness, what a file holds, Orthanc's instance ID, settings."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest

from orthanc_plugin.config import ConfigError
from orthanc_plugin.importer.model import (
    NotImportable,
    Stability,
    inspect_dicom,
    orthanc_instance_id,
    read_settings,
    wanted,
)
from tests.support.rtset import make_rt_set, write_malformed


def test_globs_match_the_relative_path_or_the_name_and_dot_files_are_left_alone() -> None:
    default = read_settings({}, Path("/cfg"), Path("/q"))
    assert wanted("a/b/ct1.dcm", default.include, default.exclude)
    assert wanted("set.zip", default.include, default.exclude)
    assert not wanted("a/.ct1.dcm.tmp", default.include, default.exclude)
    assert not wanted(".hidden/ct1.dcm", default.include, default.exclude)
    assert not wanted("a/ct1.dcm.part", default.include, default.exclude)
    only_dcm = read_settings({"Include": ["*.dcm", "*.zip"], "Exclude": ["skip/*"]}, Path("/c"),
                             Path("/q"))
    assert wanted("x/y.dcm", only_dcm.include, only_dcm.exclude)
    assert not wanted("x/y.txt", only_dcm.include, only_dcm.exclude)
    assert not wanted("skip/y.dcm", only_dcm.include, only_dcm.exclude)


def test_a_file_is_ready_only_when_unchanged_between_two_looks_and_old_enough() -> None:
    stability = Stability(stable_seconds=2.0)
    written = 1000.0
    mtime = int(written * 1e9)
    assert not stability.ready("f", 10, mtime, written + 5)        # first look
    assert not stability.ready("f", 20, mtime + 1, written + 6)    # still growing
    assert not stability.ready("f", 20, mtime + 1, written + 1)    # unchanged, written too recently
    assert stability.ready("f", 20, mtime + 1, written + 6)
    stability.keep_only(set())
    assert not stability.ready("f", 20, mtime + 1, written + 7)    # forgotten: looks again


def test_orthanc_instance_id_has_orthancs_shape() -> None:
    identifier = orthanc_instance_id("P", "1.2", "1.2.3", "1.2.3.4")
    parts = identifier.split("-")
    assert len(parts) == 5 and all(len(p) == 8 for p in parts)
    assert identifier != orthanc_instance_id("Q", "1.2", "1.2.3", "1.2.3.4")


def test_inspect_refuses_what_is_not_a_complete_instance(tmp_path: Path) -> None:
    truncated, noise, no_uid = write_malformed(tmp_path)
    with pytest.raises(NotImportable, match="truncated"):
        inspect_dicom(truncated.read_bytes())
    with pytest.raises(NotImportable, match="not a DICOM file"):
        inspect_dicom(noise.read_bytes())
    with pytest.raises(NotImportable, match="no SOPInstanceUID"):
        inspect_dicom(no_uid.read_bytes())
    ct = make_rt_set("IMP-1", n_slices=1).ct[0]
    buffer = BytesIO()
    ct.save_as(buffer, enforce_file_format=True)
    assert inspect_dicom(buffer.getvalue()) == orthanc_instance_id(
        "IMP-1", str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID), str(ct.SOPInstanceUID))


@pytest.mark.parametrize(
    ("raw", "key"),
    [({"Folder": 3}, "Folder"), ({"Include": "*.dcm"}, "Include"), ({"Recursive": "yes"}, "Recursive"),
     ({"PollSeconds": -1}, "PollSeconds")],
)
def test_bad_settings_name_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"RtGateway.Import.{key}"):
        read_settings(raw, Path("/cfg"), Path("/q"))


def test_settings_resolve_against_the_configuration_folder() -> None:
    settings = read_settings({"Folder": "incoming", "ClearAfterImport": True}, Path("/cfg"),
                             Path("/q/import"))
    assert settings.folder == Path("/cfg/incoming") and settings.clear_after_import
    assert settings.quarantine == Path("/q/import")
    assert read_settings({}, Path("/cfg"), Path("/q")).folder is None
