"""Import folder, pure parts: globs, completeness, what a file holds, Orthanc's instance ID, settings."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest

from orthanc_plugin.config import ConfigError
from orthanc_plugin.importer.model import (
    EXCLUDED,
    NOT_INCLUDED,
    TOO_YOUNG,
    NotImportable,
    SkipCounts,
    Stability,
    inspect_dicom,
    orthanc_instance_id,
    read_settings,
    skip_reason,
    too_young,
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


FILTERS = {"Include": ["**/*.dcm", "**/*.zip"], "Exclude": ["**/tmp/**", "*.part"]}


def test_double_star_spans_folders_single_star_stays_in_one_name() -> None:
    settings = read_settings(FILTERS, Path("/cfg"), Path("/q"))
    def reason(relative: str) -> str | None:
        return skip_reason(relative, settings.include, settings.exclude)
    assert reason("ct1.dcm") is None                    # "**/" spans no folder too
    assert reason("a/b/ct1.dcm") is None
    assert reason("a/b/c/d/e/set.zip") is None
    assert reason("a/tmp/ct2.dcm") == EXCLUDED
    assert reason("tmp/ct2.dcm") == EXCLUDED
    assert reason("a/tmp/deeper/ct2.dcm") == EXCLUDED
    assert reason("a/tmpfiles/ct2.dcm") is None          # a whole name, not a prefix
    assert reason("a/b/ct1.dcm.part") == EXCLUDED        # no "/": any name at any depth
    assert reason("notes.txt") == NOT_INCLUDED
    assert reason("a/b/CT1.DCM") == NOT_INCLUDED          # case-sensitive
    assert reason("a/tmp/notes.txt") == EXCLUDED          # one reason per file: excluded wins
    assert reason("a/.hidden.dcm") == EXCLUDED            # the built-in excludes stay
    anchored = ("a/*.dcm",)
    assert skip_reason("a/x.dcm", anchored, ()) is None
    assert skip_reason("a/b/x.dcm", anchored, ()) == NOT_INCLUDED   # "*" does not cross "/"
    assert skip_reason("b/a/x.dcm", anchored, ()) == NOT_INCLUDED   # "/" anchors at the folder
    assert skip_reason("ct[0-9].dcm", ("ct[0-9].dcm",), ()) == NOT_INCLUDED
    assert skip_reason("ct7.dcm", ("ct[0-9].dcm",), ()) is None
    assert skip_reason("ctx.dcm", ("ct[!0-9].dcm",), ()) is None


def test_a_pattern_that_names_a_folder_covers_what_is_inside() -> None:
    assert skip_reason("scans/2024/ct.dcm", ("**",), ("scans/2024",)) == EXCLUDED
    assert skip_reason("x/scans/2024/ct.dcm", ("**",), ("scans/2024",)) is None
    assert skip_reason("x/y/tmp/ct.dcm", ("**",), ("tmp/",)) == EXCLUDED
    assert skip_reason("site/a/ct.dcm", ("site",), ()) is None
    assert skip_reason("other/a/ct.dcm", ("site",), ()) == NOT_INCLUDED


def test_default_include_takes_everything_not_excluded() -> None:
    default = read_settings({}, Path("/cfg"), Path("/q"))
    assert default.minimum_age_seconds == 0.0
    for relative in ("notes.txt", "a/b/c/ct1.dcm", "no-extension"):
        assert skip_reason(relative, default.include, default.exclude) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [({"Include": "**/*.dcm"}, r"Import\.Include: expected a list of glob patterns"),
     ({"Exclude": {"a": 1}}, r"Import\.Exclude: expected a list"),
     ({"Include": ["*.dcm", ""]}, r"Import\.Include\[1\]: empty pattern"),
     ({"Exclude": ["  "]}, r"Import\.Exclude\[0\]: empty pattern"),
     ({"Exclude": [3]}, r"Import\.Exclude\[0\]: expected a glob pattern"),
     ({"Include": ["/srv/in/*.dcm"]}, r"Import\.Include\[0\]: '/srv/in/\*\.dcm' is absolute"),
     ({"Include": ["a\\*.dcm"]}, r"Import\.Include\[0\]: .*separate folders with \"/\""),
     ({"Exclude": ["[z-a].dcm"]}, r"Import\.Exclude\[0\]: .*not a valid glob"),
     ({"MinimumAgeSeconds": -1}, r"Import\.MinimumAgeSeconds: expected a number >= 0, got -1"),
     ({"MinimumAgeSeconds": "60"}, r"Import\.MinimumAgeSeconds: expected a number"),
     ({"MinimumAgeSeconds": True}, r"Import\.MinimumAgeSeconds: expected a number"),
     ({"MinimumAgeSeconds": float("nan")}, r"Import\.MinimumAgeSeconds: expected a number")],
)
def test_bad_filters_are_refused_at_load_with_the_key_and_the_reason(raw: dict,
                                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_settings(raw, Path("/cfg"), Path("/q"))


def test_minimum_age_is_read_and_a_file_younger_than_it_is_too_young() -> None:
    settings = read_settings({"MinimumAgeSeconds": 60}, Path("/cfg"), Path("/q"))
    assert settings.minimum_age_seconds == 60.0
    mtime = int(1000 * 1e9)
    assert too_young(mtime, 1059.9, 60.0)
    assert not too_young(mtime, 1060.0, 60.0)
    assert not too_young(mtime, 999.0, 0.0)  # 0: no minimum, stability alone decides as before


def test_skip_counts_count_a_file_once_per_reason_and_not_at_every_poll() -> None:
    counts = SkipCounts()
    def walk(*skipped: tuple[str, str], finish: bool = True) -> None:
        counts.begin()
        for reason, relative in skipped:
            counts.skip(reason, relative)
        if finish:
            counts.end(now=1.0)
    walk((EXCLUDED, "tmp/a"), (EXCLUDED, "tmp/b"), (NOT_INCLUDED, "n.txt"), (TOO_YOUNG, "y"))
    walk((EXCLUDED, "tmp/a"), (EXCLUDED, "tmp/b"), (NOT_INCLUDED, "n.txt"), (TOO_YOUNG, "y"))
    snapshot = counts.snapshot()
    assert snapshot["last_walk"] == {EXCLUDED: 2, NOT_INCLUDED: 1, TOO_YOUNG: 1, "outside": 0}
    assert snapshot["total"] == {EXCLUDED: 2, NOT_INCLUDED: 1, TOO_YOUNG: 1, "outside": 0}
    assert snapshot["walks"] == 2
    walk((EXCLUDED, "tmp/a"), (EXCLUDED, "tmp/c"))          # y taken, n.txt gone, tmp/c new
    snapshot = counts.snapshot()
    assert snapshot["last_walk"] == {EXCLUDED: 2, NOT_INCLUDED: 0, TOO_YOUNG: 0, "outside": 0}
    assert snapshot["total"] == {EXCLUDED: 3, NOT_INCLUDED: 1, TOO_YOUNG: 1, "outside": 0}
    walk((EXCLUDED, "tmp/x"), finish=False)                 # cut short: counts nothing
    assert counts.snapshot()["total"][EXCLUDED] == 3 and counts.snapshot()["walks"] == 3
    walk((NOT_INCLUDED, "n.txt"))                            # back again: a new arrival
    assert counts.snapshot()["total"] == {EXCLUDED: 3, NOT_INCLUDED: 2, TOO_YOUNG: 1, "outside": 0}


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
