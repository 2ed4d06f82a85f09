"""Many plans written straight into the gateway's own plan store (its SQLite file, the table the
tracker fills), for the worklist's scale tests and bench/ui.py: thousands of plans without
thousands of DICOM transfers. Each plan has a CT series of `slices` members, an RTSTRUCT, an
RTPLAN and an RTDOSE, so an answer that carried members would grow with them."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from orthanc_plugin.plans.search import SQL_FUNCTION, fold

FAMILY = ("SMITH", "DOE", "MARTIN", "GARCIA", "MÜLLER", "NGUYEN", "ROSSI", "KOWALSKI", "DUBOIS",
          "JOHANSSON")
GIVEN = ("ANNA", "JOHN", "MARIE", "LUIS", "PETRA", "MINH", "GIULIA", "PIOTR", "CLAIRE", "ERIK")
SITES = ("BREAST_L", "BREAST_R", "PROSTATE", "LUNG_R", "HN", "BRAIN", "RECTUM", "ADP_PELVIS")


def member_uid(plan: int, member: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.{700000 + plan}.{member}"


def seed_plans(database: Path, count: int, *, slices: int = 20, prefix: str = "SEED") -> list[str]:
    """Writes `count` plans (patient SEED-00001 ...) and returns their plan ids, oldest first."""
    now = time.time()
    rows = []
    ids = []
    for n in range(count):
        plan_uid = f"1.2.826.0.1.3680043.8.498.{500000 + n}"
        members = [{"instance_id": f"{prefix}-ct-{n}-{m}", "sop_instance_uid": member_uid(n, m),
                    "modality": "CT", "series_uid": f"1.2.3.{n}.1"} for m in range(slices)]
        members += [{"instance_id": f"{prefix}-{kind}-{n}", "sop_instance_uid": member_uid(n, 9000 + k),
                     "modality": kind, "series_uid": f"1.2.3.{n}.{k + 2}"}
                    for k, kind in enumerate(("RTSTRUCT", "RTPLAN", "RTDOSE"))]
        complete = n % 7 != 3
        missing = [] if complete else ["RTDOSE (0 of 1 expected)"]
        name = f"{FAMILY[n % len(FAMILY)]}^{GIVEN[(n // len(FAMILY)) % len(GIVEN)]}^{n:05d}"
        rows.append((
            plan_uid, f"{prefix}-RTPLAN-{n}", f"{prefix}-{n:05d}", name, f"1.2.3.{n}",
            ("TPS", "ETHOS", "MOSAIQ")[n % 3], "10.0.0.1", SITES[n % len(SITES)],
            f"Plan {n}", "20261203", int(complete), json.dumps(missing), json.dumps(members),
            now - (count - n) * 60.0, now, "2026-12-03T08:00:00+00:00", f"ACC{n:06d}"))
        ids.append(plan_uid)
    with sqlite3.connect(database, timeout=60) as connection:
        # The triggers that keep the search column call the gateway's folding function.
        connection.create_function(SQL_FUNCTION, 1, fold, deterministic=True)
        connection.executemany(
            "INSERT OR REPLACE INTO plan_bundles(plan_uid, plan_instance_id, patient_id, "
            "patient_name, study_uid, calling_aet, remote_ip, plan_label, plan_name, plan_date, "
            "complete, missing_json, members_json, first_seen_epoch, completed_epoch, updated_at, "
            "accession_number) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    return ids
