"""Webhooks' tables, and the triggers that fill the outbox.

Each named event becomes an outbox row, and one delivery row per subscribed URL, by a trigger on
the row the gateway already writes for it, so in the same transaction: the event is kept exactly
when its fact is (a rolled-back transfer leaves no webhook; a committed one always has one, even
if the worker dies the next instant), no code on the delivery path changes, and the writer pays
one indexed look-up in a table of a few rows (nothing more when no site subscribes). The sender
reads the deliveries afterwards on its own thread; nothing waits on a receiver. The trigger SQL
stays plain (no JSON functions, no constraint it could break): a trigger that failed would fail
the write it rides on. Applied after the audit, queue and plans tables (webhooks is listed after
plans in capabilities.CAPABILITIES): a trigger needs its table to exist.

On PostgreSQL the same triggers are plpgsql functions with their row triggers (POSTGRES_TRIGGERS,
applied by db_postgres after the tables): the same conditions and the same outbox row, written in
the writer's transaction exactly as on SQLite, and the event id taken from the INSERT's RETURNING
rather than MAX(id), which another node's uncommitted event could make wrong. Each trigger is
created only when absent (as SQLite's IF NOT EXISTS); each function is replaced at every start.

    delivered          transfers row with status 'success' and instances > 0 (the target named)
    parked             jobs.state becoming 'dead' (retries exhausted, refused, poison, expiry):
                       no single audit event covers every path that parks a job, the state does
    quarantined, held-for-approval, harvest-done   audit_events rows of that name
    plan-complete      plan_bundles.completed_epoch set for the first time (the tracker records
                       no event of its own; it keeps the first completion time, so this fires
                       once per bundle)
"""

from __future__ import annotations

from orthanc_plugin.db_engine import SplitSchema

_COLUMNS = ("event, at, status, rule, target, job_id, action, resource_id, patient_id, "
            "study_uid, detail, instances, plan_uid, plan_label")

# Each trigger: its name, the write it rides on, when it fires (no subquery: PostgreSQL's WHEN
# takes none), the event subscribed to and the destination a subscription must name ('' any),
# and the outbox row (in _COLUMNS' order).
_TRIGGERS = (
    ("webhook_audit_event", "AFTER INSERT ON audit_events", "audit_events",
     "NEW.event IN ('quarantined', 'held-for-approval', 'harvest-done')",
     "NEW.event", "COALESCE(NEW.target, '')",
     "NEW.event, NEW.at, NEW.status, NEW.rule, NEW.target, NEW.job_id, "
     "(SELECT action FROM jobs WHERE id = NEW.job_id), NEW.resource_id, NEW.patient_id, "
     "NEW.study_uid, NEW.detail, NULL, NULL, NULL"),
    ("webhook_delivered", "AFTER INSERT ON transfers", "transfers",
     "NEW.status = 'success' AND NEW.instances > 0",
     "'delivered'", "NEW.target",
     "'delivered', NEW.ended_at, NEW.status, NEW.rule, NEW.target, NEW.job_id, "
     "(SELECT action FROM jobs WHERE id = NEW.job_id), NEW.resource_id, NEW.patient_id, "
     "NEW.study_uid, NULL, NEW.instances, NULL, NULL"),
    ("webhook_parked", "AFTER UPDATE OF state ON jobs", "jobs",
     "NEW.state = 'dead' AND OLD.state <> 'dead'",
     "'parked'", "NEW.target",
     "'parked', NEW.updated_at, NEW.last_status, NEW.rule, NEW.target, NEW.id, NEW.action, "
     "NEW.resource_id, NEW.patient_id, NEW.study_uid, NEW.last_error, "
     "(SELECT COUNT(*) FROM job_items WHERE job_id = NEW.id), NULL, NULL"),
    ("webhook_plan_complete_new", "AFTER INSERT ON plan_bundles", "plan_bundles",
     "NEW.completed_epoch IS NOT NULL",
     "'plan-complete'", "''",
     "'plan-complete', NEW.updated_at, 'complete', NULL, NULL, NULL, NULL, "
     "NEW.plan_instance_id, NEW.patient_id, NEW.study_uid, NULL, NULL, NEW.plan_uid, "
     "NEW.plan_label"),
    ("webhook_plan_complete", "AFTER UPDATE OF completed_epoch ON plan_bundles", "plan_bundles",
     "OLD.completed_epoch IS NULL AND NEW.completed_epoch IS NOT NULL",
     "'plan-complete'", "''",
     "'plan-complete', NEW.updated_at, 'complete', NULL, NULL, NULL, NULL, "
     "NEW.plan_instance_id, NEW.patient_id, NEW.study_uid, NULL, NULL, NEW.plan_uid, "
     "NEW.plan_label"),
)


def _subscribers(event: str, target: str) -> str:
    return f"FROM webhook_subscriptions WHERE event = {event} AND target IN ('', {target})"


def _sqlite_trigger(name: str, on: str, when: str, event: str, target: str, row: str) -> str:
    # MAX(id): the row this trigger just wrote (AUTOINCREMENT, and SQLite has one writer at a
    # time). last_insert_rowid() would change under the INSERT ... SELECT itself.
    return f"""
CREATE TRIGGER IF NOT EXISTS {name} {on}
WHEN {when} AND EXISTS (SELECT 1 {_subscribers(event, target)})
BEGIN
    INSERT INTO webhook_outbox({_COLUMNS}) VALUES({row});
    INSERT OR IGNORE INTO webhook_deliveries(outbox_id, url)
    SELECT DISTINCT (SELECT MAX(id) FROM webhook_outbox), url {_subscribers(event, target)};
END;
"""


def _postgres_trigger(name: str, on: str, table: str, when: str, event: str, target: str,
                      row: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE written BIGINT;
BEGIN
    IF EXISTS (SELECT 1 {_subscribers(event, target)}) THEN
        INSERT INTO webhook_outbox({_COLUMNS}) VALUES({row}) RETURNING id INTO written;
        INSERT INTO webhook_deliveries(outbox_id, url)
        SELECT DISTINCT written, url {_subscribers(event, target)} ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{name}'
                   AND tgrelid = '{table}'::regclass) THEN
        CREATE TRIGGER {name} {on} FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION {name}();
    END IF;
END $$;
"""


TABLES = """
CREATE TABLE IF NOT EXISTS webhook_subscriptions(
    url TEXT NOT NULL, event TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',              -- '' any destination
    PRIMARY KEY(event, target, url)
);
CREATE TABLE IF NOT EXISTS webhook_outbox(
    id INTEGER PRIMARY KEY AUTOINCREMENT,         -- the event id (AUTOINCREMENT: never reused)
    event TEXT NOT NULL, at TEXT NOT NULL, status TEXT, rule TEXT, target TEXT, job_id INTEGER,
    action TEXT, resource_id TEXT, patient_id TEXT, study_uid TEXT, detail TEXT,
    instances INTEGER, plan_uid TEXT, plan_label TEXT
);
CREATE TABLE IF NOT EXISTS webhook_deliveries(
    outbox_id INTEGER NOT NULL REFERENCES webhook_outbox(id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',        -- pending | delivered
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    first_failed_at TEXT, last_error TEXT, delivered_at TEXT,
    PRIMARY KEY(url, outbox_id)
);
-- Each URL's next delivery: the oldest pending one (in order of the event id).
CREATE INDEX IF NOT EXISTS webhook_deliveries_pending
    ON webhook_deliveries(url, outbox_id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_outbox ON webhook_deliveries(outbox_id);
"""
SQLITE_TRIGGERS = "".join(_sqlite_trigger(name, on, when, event, target, row)
                          for name, on, _, when, event, target, row in _TRIGGERS)
POSTGRES_TRIGGERS = "".join(_postgres_trigger(*trigger) for trigger in _TRIGGERS)

SCHEMA = SplitSchema(TABLES, SQLITE_TRIGGERS, POSTGRES_TRIGGERS)
