"""The whole gateway with its state on PostgreSQL (RtGateway.PostgreSQL), a real server started by
the tests: a plan arrives from the TPS, is tracked complete, forwarded whole to the archive by a
plan-complete rule, and every record (received instances, the plan, the jobs, the transfers, the
audit's events) is in PostgreSQL; no SQLite state file is made; health answers 200."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.integration.conftest import keep_logs
from tests.integration.helpers import running_peers, sop_uids, study_sop_uids
from tests.support.orthanc import OrthancProcess, storescu, wait_until
from tests.support.postgres import PostgresServer
from tests.support.rtset import RtSet, make_rt_set, write_datasets

RULES = """
rules:
  - name: plans to the archive
    on: plan-complete
    match: {calling_aet: TPS}
    actions:
      - forward: [ARCHIVE]
"""


@pytest.fixture(scope="module")
def site(workdir: Path, postgres_server: PostgresServer
         ) -> Iterator[tuple[OrthancProcess, OrthancProcess, str]]:
    conninfo = postgres_server.create_database()
    with running_peers(workdir, "ARCHIVE") as peers:
        gateway = OrthancProcess(workdir / "gateway", "RTGATEWAY", plugin=True, rules=RULES,
                                 modalities={"ARCHIVE": peers["ARCHIVE"]},
                                 gateway_settings={"PostgreSQL": conninfo, "NodeName": "node-a"})
        gateway.start()
        try:
            yield gateway, peers["ARCHIVE"], conninfo
        finally:
            gateway.stop()
            keep_logs(gateway, "gateway-on-postgres")


def rows(conninfo: str, sql: str) -> list[dict[str, object]]:
    with psycopg.connect(conninfo, row_factory=dict_row) as connection:
        return connection.execute(sql).fetchall()


def test_a_plan_is_tracked_forwarded_and_recorded_in_postgresql(
        site: tuple[OrthancProcess, OrthancProcess, str], tmp_path: Path) -> None:
    gateway, archive, conninfo = site
    rtset = make_rt_set(patient_id="PGNODE1", plan_label="ADP1", n_slices=6)
    storescu(write_datasets(rtset.all(), tmp_path / "in"), gateway.dicom_port, calling="TPS")
    study_uid = str(rtset.ct[0].StudyInstanceUID)
    expected = sop_uids(rtset.all())
    wait_until(lambda: study_sop_uids(archive, study_uid) == expected, 90,
               "the whole plan at the archive")
    # The records, in PostgreSQL.
    received = rows(conninfo, "SELECT COUNT(*) AS n FROM received WHERE state <> 'new'")
    assert received[0]["n"] == len(expected)
    plans = rows(conninfo, "SELECT plan_label, complete FROM plan_bundles")
    assert plans == [{"plan_label": "ADP1", "complete": 1}]
    wait_until(lambda: rows(conninfo, "SELECT COUNT(*) AS n FROM jobs WHERE state <> 'done'"
                            )[0]["n"] == 0, 60, "every job done")
    jobs = rows(conninfo, "SELECT claimed_by, fence FROM jobs")
    assert jobs and all(str(job["claimed_by"]).startswith("node-a/") for job in jobs)
    assert all(int(str(job["fence"])) >= 1 for job in jobs)
    delivered = rows(conninfo, "SELECT COALESCE(SUM(instances), 0) AS n FROM transfers "
                               "WHERE status = 'success'")
    assert delivered[0]["n"] == len(expected)
    assert rows(conninfo, "SELECT 1 FROM audit_events WHERE event = 'gateway-started'")
    # Nothing in an SQLite state file: the PostgreSQL server holds the state.
    assert not gateway.gateway_db.exists()
    health = gateway.get("/rt-gateway/health")
    assert health.status_code == 200, health.text
    assert health.json()["database_writable"] is True


# The outage: longer than a claim's renewal interval, shorter than its lease.
OUTAGE_SECONDS = 30


def test_postgresql_stopped_for_30_s_nothing_lost_nothing_twice_no_restart(
        site: tuple[OrthancProcess, OrthancProcess, str], tmp_path: Path,
        postgres_server: PostgresServer) -> None:
    gateway, archive, conninfo = site
    first_plan = make_rt_set(patient_id="PGOUT1", plan_label="ADP2", n_slices=6)
    during = make_rt_set(patient_id="PGOUT2", plan_label="ADP3", n_slices=6)
    # A plan is on its way when PostgreSQL stops; another arrives while it is down.
    storescu(write_datasets(first_plan.all(), tmp_path / "first"), gateway.dicom_port,
             calling="TPS")
    # The outage counts from the stop, not from the first 503: counted from the 503 it could
    # outlast a claim's lease on a slow machine, and test something else than it says.
    stopped_at = time.monotonic()
    postgres_server.pause()
    try:
        storescu(write_datasets(during.all(), tmp_path / "during"), gateway.dicom_port,
                 calling="TPS")   # Orthanc keeps receiving: its own index is not PostgreSQL
        # A list, not the response: a 503 response is falsy (requests' `ok`).
        answer = wait_until(lambda: [r for r in [gateway.get("/rt-gateway/health")]
                                     if r.status_code == 503], 60,
                            "health answering 503 while PostgreSQL is down")[0]
        assert any("database" in problem for problem in answer.json()["problems"]), answer.text
        while time.monotonic() - stopped_at < OUTAGE_SECONDS:
            assert gateway.process is not None and gateway.process.poll() is None
            time.sleep(1)
    finally:
        postgres_server.resume()
    for rtset in (first_plan, during):
        arrived_whole_and_counted_once(archive, conninfo, rtset)
    wait_until(lambda: gateway.get("/rt-gateway/health").status_code == 200, 60,
               "health 200 again")
    # The same Orthanc process throughout.
    assert gateway.process is not None and gateway.process.poll() is None


def arrived_whole_and_counted_once(archive: OrthancProcess, conninfo: str, rtset: RtSet) -> None:
    """Every instance of the plan at the archive, one success transfer row's worth each, and
    each instance marked sent once."""
    study_uid = str(rtset.ct[0].StudyInstanceUID)
    expected = sop_uids(rtset.all())
    wait_until(lambda: study_sop_uids(archive, study_uid) == expected, 120,
               f"the plan of {rtset.ct[0].PatientID} whole at the archive")

    def counted() -> object:
        return rows(conninfo, "SELECT COALESCE(SUM(instances), 0) AS n FROM transfers WHERE "
                    f"status = 'success' AND study_uid = '{study_uid}'")[0]["n"]

    wait_until(lambda: counted() == len(expected), 60, "one success row's worth per instance")
    items = rows(conninfo, "SELECT i.instance_id, COUNT(*) AS n FROM job_items i JOIN jobs j "
                 f"ON j.id = i.job_id WHERE j.study_uid = '{study_uid}' AND i.state = 'sent' "
                 "GROUP BY i.instance_id")
    assert len(items) == len(expected) and all(item["n"] == 1 for item in items)
