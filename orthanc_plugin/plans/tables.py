"""Plan bundles: the references each RT object carries, the bundles, and what each rule did."""

SCHEMA = """
-- Bundles find images by SOP Instance UID in the shared received table.
CREATE INDEX IF NOT EXISTS received_sop_uid ON received(sop_instance_uid);

CREATE TABLE IF NOT EXISTS rt_objects(
    instance_id TEXT PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    modality TEXT NOT NULL,                     -- RTPLAN | RTSTRUCT | RTDOSE
    patient_id TEXT, study_uid TEXT, calling_aet TEXT,
    plan_label TEXT, plan_name TEXT, plan_date TEXT,
    references_json TEXT NOT NULL,              -- SOP Instance UIDs the object names
    recorded_at TEXT NOT NULL,
    dose_summation TEXT,                        -- RTDOSE: PLAN | BEAM | FRACTION | ...
    beam_count INTEGER                          -- RTPLAN: beams of its fraction groups
);
CREATE INDEX IF NOT EXISTS rt_objects_patient ON rt_objects(patient_id);
CREATE INDEX IF NOT EXISTS rt_objects_sop ON rt_objects(sop_instance_uid);

CREATE TABLE IF NOT EXISTS plan_bundles(
    plan_uid TEXT PRIMARY KEY,                  -- the RTPLAN's SOP Instance UID: the bundle id
    plan_instance_id TEXT NOT NULL,
    patient_id TEXT, patient_name TEXT, study_uid TEXT, calling_aet TEXT, remote_ip TEXT,
    plan_label TEXT, plan_name TEXT, plan_date TEXT,
    complete INTEGER NOT NULL DEFAULT 0,
    missing_json TEXT NOT NULL DEFAULT '[]',
    members_json TEXT NOT NULL DEFAULT '[]',    -- stored members in sending order
    first_seen_epoch REAL NOT NULL,
    completed_epoch REAL,
    updated_at TEXT NOT NULL,
    accession_number TEXT                       -- the study's, for the worklist's search
);
CREATE INDEX IF NOT EXISTS plan_bundles_patient ON plan_bundles(patient_id);
CREATE INDEX IF NOT EXISTS plan_bundles_received ON plan_bundles(first_seen_epoch);

-- One row per (rule, bundle, outcome): a plan-complete rule fires once per complete bundle,
-- and acts once on a bundle still incomplete after complete_within.
CREATE TABLE IF NOT EXISTS plan_rule_runs(
    rule TEXT NOT NULL, plan_uid TEXT NOT NULL,
    outcome TEXT NOT NULL,      -- fired | not-matched | forwarded-incomplete | held
    at TEXT NOT NULL, missing_json TEXT, jobs INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(rule, plan_uid, outcome)
);

-- Computed DVHs of complete bundles (GET plans/{id}), valid while the members are the same.
CREATE TABLE IF NOT EXISTS plan_dvh(
    plan_uid TEXT PRIMARY KEY, members_sha256 TEXT NOT NULL, dvh_json TEXT NOT NULL,
    computed_at TEXT NOT NULL
);
"""
