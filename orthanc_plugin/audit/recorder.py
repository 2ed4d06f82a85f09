"""Writes the audit: evaluations, transfers and other events to the gateway database (SQLite or
PostgreSQL: SQL both engines accept), and the daily log."""

from __future__ import annotations

from collections.abc import Mapping

from orthanc_plugin.audit import counts
from orthanc_plugin.audit.clock import now_iso
from orthanc_plugin.audit.metrics import Metrics
from orthanc_plugin.audit.translog import TransactionLog
from orthanc_plugin.db_engine import DbConnection, DbRow, StateDatabase
from orthanc_plugin.jobs.records import Job
from orthanc_plugin.jobs.states import JobState

# transfers.logged: 0 not yet, 1 written, 2 waiting for the instance's description (a job decided
# at arrival, jobs/arrival.py, delivered before its patient and study were known): the line is
# written with them when the description completes the records.
LOG_AWAITS_DESCRIPTION = 2


class AuditRecorder:
    def __init__(self, db: StateDatabase, log: TransactionLog, metrics: Metrics) -> None:
        self.db = db
        self.log = log
        self.metrics = metrics

    @staticmethod
    def now() -> str:
        return now_iso()

    def evaluation(
        self,
        connection: DbConnection,
        *,
        trigger: str,
        level: str,
        resource_id: str,
        patient_id: str,
        study_uid: str,
        rule: str,
        matched: bool,
        failed_condition: str | None,
        reason: str,
        instances: int,
        new_instances: int,
        rules_sha256: str,
        source: Mapping[str, str],
        targets: tuple[str, ...] = (),
    ) -> None:
        connection.execute(
            "INSERT INTO evaluations(at, trigger, level, resource_id, patient_id, study_uid, rule,"
            " matched, failed_condition, reason, instances, new_instances, rules_sha256)"
            " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                now_iso(), trigger, level, resource_id, patient_id, study_uid, rule, int(matched),
                failed_condition, reason, instances, new_instances, rules_sha256,
            ),
        )
        counts.count_evaluation(connection, bool(matched and new_instances))
        self.metrics.count("rtgw_rule_evaluations_total")
        if matched and new_instances:
            self.metrics.count("rtgw_rule_matches_total")
            for target in targets:
                self.log.write(
                    source_ip=source.get("remote_ip"),
                    calling_aet=source.get("calling_aet"),
                    study_uid=study_uid,
                    rule=rule,
                    destination=target,
                    outcome=f"queued {new_instances} instance(s)",
                )

    @staticmethod
    def insert_transfer(
        connection: DbConnection,
        *,
        job: Job,
        attempt: int,
        status: str,
        instances: int,
        bytes_sent: int,
        started_at: str,
        error: str | None,
        orthanc_job: str | None,
        writer: str,
    ) -> int:
        """One transfer row, in the caller's transaction; its log line follows once it commits
        (log_transfer), so a row is never logged without being kept."""
        # Patient and study as the job holds them now, not as the caller read it at its claim: a
        # job decided at arrival learns them when its instance is described (jobs/arrival.py).
        # RETURNING, not cursor.lastrowid (PostgreSQL has none), read whole (SQLite finishes the
        # statement only when its rows are read).
        rows = connection.execute(
            "INSERT INTO transfers(job_id, rule, resource_id, patient_id, study_uid, target,"
            " attempt, status, instances, bytes, started_at, ended_at, error, orthanc_job,"
            " writer, logged) VALUES(?,?,?,"
            " COALESCE((SELECT patient_id FROM jobs WHERE id=?), ?),"
            " COALESCE((SELECT study_uid FROM jobs WHERE id=?), ?),"
            " ?,?,?,?,?,?,?,?,?,?,0) RETURNING id",
            (
                job.id, job.rule, job.resource_id, job.id, job.patient_id,
                job.id, job.study_uid, job.target, attempt, status, instances,
                bytes_sent, started_at, now_iso(), error, orthanc_job, writer,
            ),
        ).fetchall()
        counts.count_transfer(connection, job.target, status, instances, bytes_sent)
        return int(rows[0]["id"])

    def log_transfer(self, transfer_id: int, job_state: str, *, late: bool = False,
                     counted: bool = False) -> None:
        """The transaction-log line and the counters of a committed transfer row, then the row
        marked as logged. The line names the row ("transfer N"): a start after a crash between
        the line and the mark finds it in the log and does not write it twice. A row of a job
        decided at arrival whose instance is not described yet waits for its study
        (LOG_AWAITS_DESCRIPTION); its counters are counted now (`counted` when it is written)."""
        row = self._transfer_for_log(transfer_id)
        if row is None:
            return
        if row["awaits_description"] and self._defer_until_described(transfer_id):
            self._count(row["target"], row["status"], row["instances"], row["bytes"], late)
            return
        if row["awaits_description"]:  # described meanwhile: the row now names its study
            row = self._transfer_for_log(transfer_id) or row
        status, instances, bytes_sent = row["status"], row["instances"], row["bytes"]
        outcome = (f"{status}: {instances} instance(s), {bytes_sent} bytes, job {row['job_id']}, "
                   f"transfer {transfer_id}")
        if job_state == JobState.DEAD:
            outcome += " (parked)"
        elif job_state == JobState.PENDING and status != "success":
            outcome += " (will retry)"
        if late:
            outcome += " (logged after a restart)"
        if row["error"]:
            outcome += f": {row['error']}"
        self.log.write(
            source_ip=row["remote_ip"],
            calling_aet=row["calling_aet"],
            study_uid=row["study_uid"],
            rule=row["rule"],
            destination=row["target"],
            outcome=outcome,
        )
        self._count(row["target"], status, instances, bytes_sent, late or counted)

        def mark() -> None:
            with self.db.transaction() as connection:
                connection.execute("UPDATE transfers SET logged=1 WHERE id=?", (transfer_id,))
        self.db.durable(mark, "marking a transfer as logged")

    def _transfer_for_log(self, transfer_id: int) -> DbRow | None:
        rows = self.db.query(
            "SELECT t.*, j.remote_ip, j.calling_aet, j.awaits_description FROM transfers t "
            "LEFT JOIN jobs j ON j.id = t.job_id WHERE t.id=?", (transfer_id,))
        return rows[0] if rows else None

    def _defer_until_described(self, transfer_id: int) -> bool:
        """Marks the row as waiting for its instance's description when its job was decided at
        arrival and is still without a study; False when the description came first. One
        statement, so it and the completion (jobs/arrival.py) cannot both miss the line."""
        deferred = 0

        def mark() -> None:
            nonlocal deferred
            with self.db.transaction() as connection:
                deferred = connection.execute(
                    "UPDATE transfers SET logged=? WHERE id=? AND logged=0 AND EXISTS ("
                    "SELECT 1 FROM jobs j WHERE j.id = transfers.job_id AND j.awaits_description=1)",
                    (LOG_AWAITS_DESCRIPTION, transfer_id)).rowcount
        self.db.durable(mark, "deferring a transfer's log line")
        return deferred > 0

    def _count(self, target: str, status: str, instances: int, bytes_sent: int,
               late: bool) -> None:
        if late:  # the start's seeding (Gateway.seed_metrics) counted the row already
            return
        self.metrics.count("rtgw_instances_sent_total", instances)
        self.metrics.count("rtgw_bytes_sent_total", bytes_sent)
        self.metrics.count(f"rtgw_target_{target}_instances_sent_total", instances)
        if status != "success":
            self.metrics.count("rtgw_transfer_failures_total")
            self.metrics.count(f"rtgw_target_{target}_failures_total")

    def log_orphaned_transfers(self, *, generation: str = "", writer: str = "") -> int:
        """Transfer rows whose worker died before their log line was marked written (the worker
        named, or any worker of this node's earlier generations: each node writes its own
        transaction log): the line is written unless the log already holds it. Returns how
        many were written."""
        parameters: tuple[str | int, ...]
        if writer:
            where, parameters = "writer = ?", (writer,)
        else:
            node = generation.split("/", 1)[0] + "/" if "/" in generation else ""
            # A writer without a node ("<generation>:<pid>") wrote before nodes had names: a
            # single node's, so this node's.
            where = ("(writer IS NULL OR ((writer NOT LIKE '%/%' OR "
                     "substr(writer, 1, CAST(? AS INTEGER)) = ?) AND writer NOT LIKE ?))")
            parameters = (len(node), node, f"{generation}:%")
        rows = self.db.query(
            f"SELECT id, ended_at FROM transfers WHERE (logged=0 AND {where}) OR (logged=? AND "
            "NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = transfers.job_id AND "
            "j.awaits_description=1)) ORDER BY id", (*parameters, LOG_AWAITS_DESCRIPTION))
        written = 0
        for row in rows:
            if self.log.mentions(f"transfer {row['id']}", row["ended_at"]):
                def mark(transfer_id: int = row["id"]) -> None:
                    with self.db.transaction() as connection:
                        connection.execute("UPDATE transfers SET logged=1 WHERE id=?",
                                           (transfer_id,))
                self.db.durable(mark, "marking a transfer as logged")
                continue
            self.log_transfer(row["id"], "", late=True)
            written += 1
        return written

    def event(
        self,
        event: str,
        *,
        status: str = "",
        detail: str = "",
        rule: str = "",
        target: str = "",
        job_id: int | None = None,
        resource_id: str = "",
        patient_id: str = "",
        study_uid: str = "",
        connection: DbConnection | None = None,
    ) -> None:
        row: tuple[object, ...] = (
            now_iso(), event, status, patient_id, study_uid, resource_id, rule, target, job_id,
            detail,
        )
        sql = (
            "INSERT INTO audit_events(at, event, status, patient_id, study_uid, resource_id, rule,"
            " target, job_id, detail) VALUES(?,?,?,?,?,?,?,?,?,?)"
        )
        if job_id is not None and not study_uid:
            # A job decided at arrival may have learnt its study since its caller read it.
            sql = (
                "INSERT INTO audit_events(at, event, status, patient_id, study_uid, resource_id,"
                " rule, target, job_id, detail) VALUES(?,?,?,"
                " COALESCE(NULLIF(?, ''), (SELECT patient_id FROM jobs WHERE id=?), ''),"
                " COALESCE(NULLIF(?, ''), (SELECT study_uid FROM jobs WHERE id=?), ''),"
                " ?,?,?,?,?)"
            )
            row = (now_iso(), event, status, patient_id, job_id, study_uid, job_id,
                   resource_id, rule, target, job_id, detail)
        if connection is not None:
            connection.execute(sql, row)  # the caller's transaction: its caller retries it
            return

        def write() -> None:
            with self.db.transaction() as own:
                own.execute(sql, row)
        self.db.durable(write, f"writing the audit event {event}")

    def quarantine(
        self, connection: DbConnection, instance_id: str, reason: str, detail: str = ""
    ) -> None:
        connection.execute(
            "INSERT INTO quarantine(at, instance_id, reason, detail) VALUES(?,?,?,?)",
            (now_iso(), instance_id, reason, detail),
        )
        counts.count_quarantined(connection)
        self.event(
            "quarantined", status="quarantined", resource_id=instance_id, detail=reason,
            connection=connection,
        )
        self.metrics.count("rtgw_quarantined_total")
        self.log.write(
            source_ip=None, calling_aet=None, study_uid=None, rule=None, destination=None,
            outcome=f"quarantined instance {instance_id}: {reason}",
        )
