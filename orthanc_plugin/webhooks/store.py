"""The webhooks' SQL: the subscriptions the triggers read, each URL's next delivery, the outcome of
an attempt, the page's counts, and pruning what was delivered long ago."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from orthanc_plugin.audit.clock import iso_at, now_iso
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.webhooks.model import Endpoint, OutboxEvent, backoff_seconds

ORIGIN_KEY = "webhooks_origin"
# The outbox's columns next_due reads from the row itself (the names come from the job).
_OUTBOX_OWN = ", ".join(f"o.{field.name}" for field in fields(OutboxEvent)
                        if field.name not in ("patient_id", "study_uid"))


class WebhookStore:
    def __init__(self, db: StateDatabase) -> None:
        self.db = db

    def subscribe(self, endpoints: Sequence[Endpoint]) -> None:
        """The configuration in force, for the triggers: replaced whole, in one transaction (every
        worker process does this at start with the same configuration; the result is the same)."""
        with self.db.transaction() as connection:
            connection.execute("DELETE FROM webhook_subscriptions")
            connection.executemany(
                "INSERT INTO webhook_subscriptions(url, event, target) VALUES(?,?,?) "
                "ON CONFLICT DO NOTHING",
                [(endpoint.url, event, target) for endpoint in endpoints
                 for event, target in endpoint.subscriptions()])

    def origin(self) -> str:
        """A random name for this database, drawn once: event ids stay unique if the database is
        ever replaced and its counter starts again."""
        with self.db.transaction() as connection:
            connection.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT DO NOTHING",
                               (ORIGIN_KEY, secrets.token_hex(4)))
            row = connection.execute("SELECT value FROM meta WHERE key=?", (ORIGIN_KEY,)).fetchone()
        return str(row["value"])

    def next_due(self, url: str, now: float) -> OutboxEvent | None:
        """The URL's oldest pending delivery with its event, if its time has come. Only the oldest:
        a receiver gets its events in order, so a later one waits behind a failing one."""
        # A job decided at arrival names its patient and study once its instance is described
        # (jobs/arrival.py): its event waits for that, then carries them. A row answers a name
        # with its first column, so the job's names, listed before o.*, fill an event written
        # before it knew them (OutboxEvent reads each column by name; the outbox's own columns
        # are named one by one, never twice: PostgreSQL's rows keep no first of two names).
        row = self.db.query(
            "SELECT d.attempts, d.next_attempt_at, "
            "COALESCE(NULLIF(o.patient_id, ''), j.patient_id, '') AS patient_id, "
            "COALESCE(NULLIF(o.study_uid, ''), j.study_uid, '') AS study_uid, "
            f"COALESCE(j.awaits_description, 0) AS job_awaits_description, {_OUTBOX_OWN} "
            "FROM webhook_deliveries d JOIN webhook_outbox o ON o.id = d.outbox_id "
            "LEFT JOIN jobs j ON j.id = o.job_id "
            "WHERE d.url=? AND d.state='pending' ORDER BY d.outbox_id LIMIT 1", (url,))
        if not row or row[0]["next_attempt_at"] > now or row[0]["job_awaits_description"]:
            return None
        return OutboxEvent(**{field.name: row[0][field.name] for field in fields(OutboxEvent)})

    def delivered(self, url: str, outbox_id: int) -> None:
        def write() -> None:
            with self.db.transaction() as connection:
                connection.execute(
                    "UPDATE webhook_deliveries SET state='delivered', attempts=attempts+1, "
                    "delivered_at=?, last_error=NULL WHERE url=? AND outbox_id=?",
                    (now_iso(), url, outbox_id))
        self.db.durable(write, "recording a webhook as delivered")

    def failed(self, url: str, outbox_id: int, error: str, now: float | None = None) -> float:
        """Records a failed attempt; returns the seconds until the next one."""
        now = time.time() if now is None else now
        with self.db.transaction() as connection:
            row = connection.execute(
                "SELECT attempts FROM webhook_deliveries WHERE url=? AND outbox_id=?",
                (url, outbox_id)).fetchone()
            attempts = (int(row["attempts"]) if row else 0) + 1
            delay = backoff_seconds(attempts)
            connection.execute(
                "UPDATE webhook_deliveries SET attempts=?, next_attempt_at=?, last_error=?, "
                "first_failed_at=COALESCE(first_failed_at, ?) WHERE url=? AND outbox_id=?",
                (attempts, now + delay, error[:500], now_iso(), url, outbox_id))
        return delay

    def pending_counts(self) -> tuple[int, int]:
        """(pending, failing): deliveries waiting, and those among them already tried."""
        row = self.db.query(
            "SELECT COUNT(*) AS pending, "
            "COALESCE(SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), 0) AS failing "
            "FROM webhook_deliveries WHERE state='pending'")[0]
        return int(row["pending"]), int(row["failing"])

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per URL: delivered, pending and failing counts, the head's last error and retry time."""
        result: dict[str, dict[str, Any]] = {}
        for row in self.db.query(
                "SELECT url, SUM(CASE WHEN state='delivered' THEN 1 ELSE 0 END) AS delivered,"
                " SUM(CASE WHEN state='pending' THEN 1 ELSE 0 END) AS pending,"
                " SUM(CASE WHEN state='pending' AND attempts > 0 THEN 1 ELSE 0 END) AS failing,"
                " MAX(delivered_at) AS last_at "
                "FROM webhook_deliveries GROUP BY url"):
            result[row["url"]] = {"delivered": int(row["delivered"] or 0),
                                  "pending": int(row["pending"] or 0),
                                  "failing": int(row["failing"] or 0),
                                  "last_delivered_at": row["last_at"]}
        for row in self.db.query(
                "SELECT d.url, d.attempts, d.last_error, d.first_failed_at, d.next_attempt_at, "
                "o.event, o.at FROM webhook_deliveries d JOIN webhook_outbox o "
                "ON o.id = d.outbox_id WHERE d.state='pending' AND d.outbox_id = (SELECT "
                "MIN(outbox_id) FROM webhook_deliveries WHERE url=d.url AND state='pending')"):
            result[row["url"]]["next"] = {
                "event": row["event"], "at": row["at"], "attempts": row["attempts"],
                "last_error": row["last_error"], "failing_since": row["first_failed_at"],
                "next_attempt_at": iso_at(row["next_attempt_at"]) if row["attempts"] else None}
        return result

    def prune(self, keep_seconds: float, now: float | None = None) -> int:
        """Deliveries done more than keep_seconds ago go, then events nobody still waits for."""
        cutoff = iso_at((time.time() if now is None else now) - keep_seconds)
        with self.db.transaction() as connection:
            gone = connection.execute(
                "DELETE FROM webhook_deliveries WHERE state='delivered' AND delivered_at < ?",
                (cutoff,)).rowcount
            connection.execute(
                "DELETE FROM webhook_outbox WHERE at < ? AND NOT EXISTS (SELECT 1 FROM "
                "webhook_deliveries d WHERE d.outbox_id = webhook_outbox.id)", (cutoff,))
        return int(gone)
