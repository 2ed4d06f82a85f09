from pathlib import Path

import pytest

from orthanc_plugin.api.router import Router, json_response
from orthanc_plugin.audit.translog import TransactionLog
from orthanc_plugin.config import ConfigError, parse_config


def test_defaults_work_without_the_section(tmp_path: Path) -> None:
    config = parse_config({"StorageDirectory": "store", "SaveJobs": False}, tmp_path)
    assert config.rules_file == tmp_path / "lua-free-rules.yaml"
    assert config.database == tmp_path / "store" / "rt-gateway" / "gateway.sqlite"
    assert config.workers == 2 and config.retry.max_attempts == 8


def test_section_values_and_relative_paths(tmp_path: Path) -> None:
    config = parse_config(
        {"RtGateway": {"RulesFile": "r.yaml", "Database": "/abs/g.sqlite", "Workers": 4,
                       "Retry": {"MaxAttempts": 3}},
         "DicomModalities": {"B": [], "A": []}, "SaveJobs": False},
        tmp_path,
    )
    assert config.rules_file == tmp_path / "r.yaml"
    assert config.database == Path("/abs/g.sqlite")
    assert config.workers == 4 and config.retry.max_attempts == 3
    assert config.known_modalities == ("A", "B")


def test_invalid_setting_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"RtGateway.Workers"):
        parse_config({"RtGateway": {"Workers": "many"}, "SaveJobs": False}, tmp_path)


def test_save_jobs_on_is_refused_unless_allowed(tmp_path: Path) -> None:
    # Orthanc's default: after a crash it resumes its store jobs and sends again (measured).
    with pytest.raises(ConfigError, match=r'"SaveJobs": false'):
        parse_config({}, tmp_path)
    assert parse_config({"SaveJobs": True, "RtGateway": {"AllowSaveJobs": True}}, tmp_path)
    workers = parse_config({"SaveJobs": False, "HttpPort": 8099,
                            "RegisteredUsers": {"b": "x", "a": "y"}}, tmp_path).worker
    assert workers.orthanc_url == "http://127.0.0.1:8099"
    assert (workers.http_user, workers.http_password) == ("a", "y")


def test_router_dispatches_and_reports_405_and_404() -> None:
    router = Router()
    router.add("GET", r"jobs/(?P<id>\d+)", lambda r: json_response({"id": r.params["id"]}))
    assert router.dispatch("GET", "/rt-gateway/jobs/7", {}, b"").body == b'{\n  "id": "7"\n}'
    assert router.dispatch("POST", "/rt-gateway/jobs/7", {}, b"").status == 405
    assert router.dispatch("GET", "/rt-gateway/nothing", {}, b"").status == 404


def test_transaction_log_writes_one_clean_line_per_event(tmp_path: Path) -> None:
    log = TransactionLog(tmp_path)
    log.write(source_ip="10.0.0.1", calling_aet="FOLLOW", study_uid="1.2", rule="r\tx",
              destination="ARCHIVE", outcome="success")
    files = list(tmp_path.glob("transactions-*.log"))
    lines = files[0].read_text().splitlines()
    assert lines[0].startswith("time\tsource_ip")
    assert lines[1].split("\t")[1:] == ["10.0.0.1", "FOLLOW", "1.2", "r x", "ARCHIVE", "success"]
