"""Hostile requests against pure logic: the cross-site check, parameter parsing, JSON that stays
JSON, and the bounds of the read-only index query."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from orthanc_plugin.api.cross_site import cross_site_refusal
from orthanc_plugin.api.router import Request, Router, json_response
from orthanc_plugin.index.query import QueryError, run_query

HOST = {"host": "pacs.example:8042"}
OK = {**HOST, "x-requested-with": "page", "content-type": "application/json"}


@pytest.mark.parametrize(("headers", "has_body", "status"), [
    (OK, True, None),
    ({**OK, "origin": "http://pacs.example:8042"}, True, None),
    ({**OK, "referer": "http://pacs.example:8042/rt-gateway/ui/"}, True, None),
    ({**OK, "sec-fetch-site": "same-origin"}, True, None),
    ({**OK, "origin": "http://evil.example"}, True, 403),
    ({**OK, "origin": "null"}, True, 403),                       # sandboxed frame, file://
    ({**OK, "origin": "http://pacs.example:8043"}, True, 403),   # another port is another origin
    ({**OK, "referer": "http://evil.example/x"}, True, 403),
    ({**OK, "sec-fetch-site": "cross-site"}, True, 403),
    ({**OK, "sec-fetch-site": "same-site"}, True, 403),
    ({**HOST, "content-type": "application/json"}, True, 403),   # no custom header: a form
    ({**OK, "content-type": "text/plain"}, True, 415),
    ({**OK, "content-type": "application/x-www-form-urlencoded"}, True, 415),
    ({**OK, "content-type": "multipart/form-data; boundary=x"}, True, 415),
    ({**HOST, "x-requested-with": "page"}, False, None),         # no body: no content type needed
    ({"x-requested-with": "p", "origin": "http://pacs.example:8042"}, False, 403),  # no Host
])
def test_cross_site_check(headers: dict[str, str], has_body: bool, status: int | None) -> None:
    refusal = cross_site_refusal(headers, has_body)
    assert (refusal[0] if refusal else None) == status


def test_a_route_may_take_text_besides_json() -> None:
    headers = {**OK, "content-type": "text/plain; charset=utf-8"}
    assert cross_site_refusal(headers, True, ("text/plain",)) is None


def test_router_refuses_a_cross_site_post_before_the_handler_runs() -> None:
    called: list[str] = []
    router = Router()
    router.add("POST", "things", lambda request: called.append("x") or json_response({}))
    refused = router.dispatch("POST", "/rt-gateway/things", {}, b'{"a": 1}',
                              {**HOST, "content-type": "text/plain"})
    assert refused.status == 403 and called == []
    assert b"X-Requested-With" in refused.body
    assert router.dispatch("POST", "/rt-gateway/things", {}, b'{"a": 1}', OK).status == 200
    assert called == ["x"]


def request(**query: str) -> Request:
    return Request("GET", "x", query, b"", {"id": "99999999999999999999999"})


@pytest.mark.parametrize("text", ["abc", "1e23", "1.5", "0x10", "", " 7 ", "-1"])
def test_whole_number_parameters(text: str) -> None:
    parse = request(limit=text).int_param
    if text in ("", " 7 "):
        assert parse("limit", 5, minimum=1, maximum=100) == (5 if text == "" else 7)
        return
    with pytest.raises(Exception) as caught:
        parse("limit", 5, minimum=1, maximum=100)
    assert getattr(caught.value, "status", None) == 400 and "limit" in str(caught.value)


def test_limits_are_clamped_and_huge_ids_name_nothing() -> None:
    assert request(limit="99999999999").int_param("limit", 5, minimum=1, maximum=100) == 100
    with pytest.raises(Exception) as caught:
        request().id_param()
    assert getattr(caught.value, "status", None) == 404


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1e999", "x"])
def test_numbers_must_be_finite(text: str) -> None:
    with pytest.raises(Exception) as caught:
        request(max_dose_gt=text).float_param("max_dose_gt")
    assert getattr(caught.value, "status", None) == 400


def test_json_answers_stay_json_with_the_places_of_non_finite_numbers() -> None:
    answer = json_response({"dose": {"max": -1e308 * 10, "mean": 2.0}, "curve": [1.0, float("nan")]})

    def strict(constant: str) -> None:  # what browsers' JSON.parse does with Infinity and NaN
        raise ValueError(constant)

    body = json.loads(answer.body, parse_constant=strict)
    assert body["dose"] == {"max": None, "mean": 2.0} and body["curve"] == [1.0, None]
    assert body["non_finite_as_null"]["paths"] == ["dose.max", "curve[1]"]


@pytest.fixture
def index(tmp_path: Path) -> Path:
    path = tmp_path / "index.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t(a TEXT)")
        connection.executemany("INSERT INTO t VALUES(?)", [("x" * 1000,) for _ in range(5000)])
    return path


def test_a_huge_value_is_refused_by_sqlite(index: Path) -> None:
    with pytest.raises(QueryError, match="too big"):
        run_query(index, "SELECT zeroblob(200000000)")


def test_the_answer_stops_at_its_byte_cap_and_says_so(index: Path) -> None:
    result = run_query(index, "SELECT a FROM t", max_rows=10_000, max_result_bytes=100_000)
    assert result.truncated and result.truncated_reason == "more than 100000 bytes"
    assert 90 <= len(result.rows) <= 100
    rows = run_query(index, "SELECT a FROM t", max_rows=10)
    assert rows.truncated and rows.truncated_reason == "more than 10 rows"


@pytest.mark.parametrize("sql", [
    "SELECT fts3_tokenizer('simple')",
    "SELECT load_extension('/tmp/x.so')",
    "PRAGMA journal_mode",
    "PRAGMA writable_schema=ON",
    "ATTACH '/etc/passwd' AS p",
    "DELETE FROM t",
])
def test_internals_and_writes_are_refused(index: Path, sql: str) -> None:
    with pytest.raises(QueryError):
        run_query(index, sql)


def test_describing_a_table_is_allowed(index: Path) -> None:
    assert run_query(index, "PRAGMA table_info(t)").rows[0][1] == "a"


def test_trusted_origins_let_a_reverse_proxy_rewrite_host() -> None:
    from orthanc_plugin.api.cross_site import read_trusted_origins

    trusted = read_trusted_origins(["https://PACS.example.org", "http://10.0.0.5:8080/"])
    behind_proxy = {"host": "127.0.0.1:8042", "x-requested-with": "page",
                    "content-type": "application/json", "origin": "https://pacs.example.org"}
    assert cross_site_refusal(behind_proxy, True) is not None            # refused by default
    assert cross_site_refusal(behind_proxy, True, (), trusted) is None
    evil = {**behind_proxy, "origin": "https://evil.example"}
    assert cross_site_refusal(evil, True, (), trusted) is not None
    for bad in (["pacs.example.org"], ["https://pacs.example.org/app"], "https://x", [1]):
        with pytest.raises(ValueError):
            read_trusted_origins(bad)
