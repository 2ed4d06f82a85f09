"""Malformed requests and malformed RT objects through a real gateway: always a clear 4xx or a
per-object error inside valid JSON, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import keep_logs, require_orthanc
from tests.support.orthanc import PASSWORD, USER, OrthancProcess, storescu, wait_until
from tests.support.rtset import make_rt_set, write_datasets


def strict_json(text: str | bytes) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def gateway(workdir: Path) -> Iterator[OrthancProcess]:
    require_orthanc()
    process = OrthancProcess(workdir / "gateway", "RTGATEWAY", plugin=True, rules="rules: []\n",
                             gateway_settings={"MaxRequestBodyMB": 1})
    process.start()
    yield process
    process.stop()
    keep_logs(process, "hostile-routes-gateway")


@pytest.mark.parametrize(("path", "status", "named"), [
    ("/rt-gateway/jobs?limit=abc", 400, "limit"),
    ("/rt-gateway/jobs?limit=-1", 400, "limit"),
    ("/rt-gateway/jobs?limit=1e23", 400, "limit"),
    ("/rt-gateway/jobs?state=nope", 400, "state"),
    ("/rt-gateway/jobs/99999999999999999999999", 404, "id"),
    ("/rt-gateway/jobs/1e23", 404, "no route"),
    ("/rt-gateway/audit?limit=x", 400, "limit"),
    ("/rt-gateway/audit?nope=1", 400, "nope"),
    ("/rt-gateway/export/transfers?limit=-5", 400, "limit"),
    ("/rt-gateway/plans?max_dose_gt=inf", 400, "max_dose_gt"),
    ("/rt-gateway/plans?max_dose_gt=abc", 400, "max_dose_gt"),
    ("/rt-gateway/plans?complete=maybe", 400, "complete"),
    ("/rt-gateway/plans?format=xml", 400, "format"),
])
def test_malformed_parameters_are_named_in_a_400(
    gateway: OrthancProcess, path: str, status: int, named: str
) -> None:
    answer = gateway.get(path)
    assert answer.status_code == status, answer.text
    assert named in strict_json(answer.text)["error"]


def test_limits_are_clamped(gateway: OrthancProcess) -> None:
    assert gateway.get("/rt-gateway/jobs?limit=99999999999").status_code == 200


def test_bodies_over_the_cap_get_413(gateway: OrthancProcess) -> None:
    answer = gateway.post("/rt-gateway/rules/test", b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert answer.status_code == 413


def test_bad_json_bodies_get_400(gateway: OrthancProcess) -> None:
    for body in (b"{not json", b"\xff\xfe", b"[1, 2", b"null"):
        answer = gateway.post("/rt-gateway/plans/send", body)
        assert answer.status_code == 400, (body, answer.text)


def test_a_huge_query_answer_is_capped(gateway: OrthancProcess) -> None:
    answer = gateway.post("/rt-gateway/index/query", {"sql": "SELECT zeroblob(200000000)"})
    assert answer.status_code == 400 and "too big" in answer.json()["error"]
    answer = gateway.post("/rt-gateway/index/query",
                          {"sql": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n "
                                  "WHERE i < 100000) SELECT printf('%.900c', 'x') FROM n",
                           "max_rows": 1_000_000})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["truncated"] and "bytes" in body["truncated_reason"]
    assert len(answer.content) < 64 * 1024 * 1024
    refused = gateway.post("/rt-gateway/index/query", {"sql": "SELECT fts3_tokenizer('simple')"})
    assert refused.status_code == 400


def test_without_the_cross_site_header_a_post_is_refused(gateway: OrthancProcess) -> None:
    answer = requests.post(f"{gateway.url}/rt-gateway/rules/reload", auth=(USER, PASSWORD),
                           timeout=30)
    assert answer.status_code == 403 and "X-Requested-With" in answer.json()["error"]
    answer = requests.post(f"{gateway.url}/rt-gateway/rules/test", data='{"study": "x"}',
                           headers={"X-Requested-With": "x", "Content-Type": "text/plain"},
                           auth=(USER, PASSWORD), timeout=30)
    assert answer.status_code == 415
    answer = requests.post(f"{gateway.url}/rt-gateway/rules/reload", auth=(USER, PASSWORD),
                           headers={"X-Requested-With": "x", "Origin": "http://evil.example"},
                           timeout=30)
    assert answer.status_code == 403 and "Origin" in answer.json()["error"]


def test_malformed_dose_objects_give_a_per_plan_error_in_valid_json(
    gateway: OrthancProcess, tmp_path: Path
) -> None:
    overflow = make_rt_set("HOSTILE-DOSE-1", plan_label="OVERFLOW", n_slices=3)
    overflow.rtdose.DoseGridScaling = "-1e308"
    offsets = make_rt_set("HOSTILE-DOSE-2", plan_label="OFFSETS", n_slices=3)
    offsets.rtdose.GridFrameOffsetVector = [str(float(i)) for i in range(20_000)]
    files = write_datasets([*overflow.all(), *offsets.all()], tmp_path)
    storescu(files, gateway.dicom_port, calling="TPS")

    def both_complete() -> list[dict[str, Any]] | None:
        # Only once both are: the plans are bundled one after the other.
        complete = [p for p in gateway.json("/rt-gateway/plans")
                    if p["label"] in ("OVERFLOW", "OFFSETS") and p["complete"]]
        return complete if len(complete) == 2 else None

    plans = wait_until(both_complete, 60, "both plans complete")
    assert len(plans) == 2
    for plan in plans:
        answer = gateway.get(f"/rt-gateway/plans/{plan['id']}")
        assert answer.status_code == 200, answer.text
        detail = strict_json(answer.text)
        dvh = detail["dvh"]
        if plan["label"] == "OFFSETS":
            assert "error" in dvh, dvh
        else:
            assert "error" in dvh or "non_finite_as_null" in detail, detail
    listing = gateway.get("/rt-gateway/plans?max_dose_gt=1")
    assert listing.status_code == 200
    strict_json(listing.text)
    assert gateway.get("/rt-gateway/plans?format=csv").status_code == 200
