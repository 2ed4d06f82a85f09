"""bench/cluster: what sharing one PostgreSQL between gateway nodes costs and buys (issue 25).
Prints JSON; `bench/record.py cluster FILE` keeps it. Three parts, chosen on the command line:

- claims: the queue's claim rate. --workers processes (4), each with its own connection and
  claimant name as a node's worker has, drain one queue of --jobs pending one-instance jobs
  (the real JobQueue and lease store of orthanc_plugin/jobs), on an SQLite file and on a real
  PostgreSQL (tests/support/postgres.py: initdb, fsync off; SQLite in WAL with synchronous=NORMAL
  as the gateway opens it: neither waits for the disk at a commit). A claim's life in the store
  is measured whole: claim, mark its items sent, settle. Claims per second over the round's wall
  time, median of --rounds rounds with quartiles, the engines alternating first; the per-round
  ratio PostgreSQL/SQLite. Client-side counts of statements and transactions per claim (every
  statement the worker's connection sends, BEGIN and COMMIT included: SQLite's trace callback,
  a counting psycopg cursor), CPU per claim of the workers and, on PostgreSQL, of the server
  (its processes in /proc). An empty claim (PostgreSQL: another worker holds the destination's
  advisory lock, queue.py `_deciding_alone`) is retried at once: this measures what the store
  allows, not the sender's wait between looks (jobs/workers.py). --targets: the jobs spread over
  that many destinations (claims for one destination decide one at a time on PostgreSQL).
- relay: the same C-STORE relay (--slices CT instances, --senders storescu at once through the
  HAProxy front of deploy/several-nodes/haproxy.cfg, a forward rule `on: instance` to a plain
  Orthanc) through one node and through two nodes on one PostgreSQL (tests/support/nodes.py:
  Orthanc's index and the gateway's state on the server, one shared storage folder). Seconds
  until the receiver has every instance, ratio two/one per round; CPU seconds per instance of
  each node (Orthanc and its worker processes, /proc), of the PostgreSQL server, and its
  transactions per instance (pg_stat_database, index and state).
- deid: the same with bench/deid's de-identification rule (full profile, `on: stable-study`),
  one patient per sender so that the nodes can share the work (one study is one job, which one
  node runs); seconds until every copy is stored (the gateway's own mappings), the stable age
  included in both.

On this 2-core machine two nodes cannot be faster than one: they share the cores with each
other, with PostgreSQL, HAProxy, the senders and the receiver. What would scale on more cores
is read from the per-instance figures: a node's CPU per instance (what one core per node buys)
and PostgreSQL's CPU and transactions per instance (what the one shared server must carry for
every node). A bench never asserts times; ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from pydicom.uid import generate_uid

from bench import deid as deid_bench
from bench import relay as relay_bench
from orthanc_plugin.audit.tables import SCHEMA as AUDIT_SCHEMA
from orthanc_plugin.config import RetryPolicySettings
from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.db_engine import POSTGRESQL, SQLITE, StateDatabase
from orthanc_plugin.db_postgres import PgConnection, PostgresDatabase
from orthanc_plugin.jobs.queue import JobQueue, JobSpec
from orthanc_plugin.jobs.tables import SCHEMA as JOBS_SCHEMA
from tests.support.cluster_nodes import gateway_node
from tests.support.haproxy import dicom_front
from tests.support.orthanc import OrthancProcess, storescu
from tests.support.postgres import PostgresServer, running_postgres

PARTS = ("claims", "relay", "deid")
ENGINES = (SQLITE, POSTGRESQL)
# No backoff: a job that failed would wait out nothing (none fails here).
POLICY = RetryPolicySettings(max_attempts=3, base_delay_seconds=0, max_delay_seconds=0)
# spawn: a worker shares no connection or lock with this process (fork would copy them).
SPAWN = multiprocessing.get_context("spawn")
# Between measurements the nodes index what they received once quiet (bench/relay.py).
SETTLE_SECONDS = relay_bench.SETTLE_SECONDS


# -- claims ---------------------------------------------------------------------------------------

class Tally:
    """Statements and transactions this process's counted connection sent."""

    statements = 0
    transactions = 0

    @classmethod
    def saw(cls, sql: str) -> None:
        cls.statements += 1
        if sql.lstrip()[:5].upper() == "BEGIN":
            cls.transactions += 1


class CountingCursor(psycopg.Cursor[Any]):
    """Every statement through a PostgreSQL connection counted (PostgresDatabase sends BEGIN,
    COMMIT and the stores' SQL through its cursors), so no server extension is needed."""

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                binary: bool | None = None) -> CountingCursor:
        Tally.saw(query if isinstance(query, str) else str(query))
        return cast(CountingCursor, super().execute(query, params, prepare=prepare, binary=binary))

    def executemany(self, query: Any, params_seq: Any, *, returning: bool = False) -> None:
        rows = list(params_seq)
        Tally.statements += len(rows)
        super().executemany(query, rows, returning=returning)


def count_statements(db: StateDatabase) -> None:
    """From now on, this thread's connection counts what it sends (Tally)."""
    connection = db.connection()
    if db.dialect == SQLITE:
        cast(Any, connection).set_trace_callback(Tally.saw)
    else:
        cast(PgConnection, connection).raw.cursor_factory = CountingCursor


def open_queue_store(engine: str, location: str, schemas: Sequence[str] = ()) -> StateDatabase:
    if engine == SQLITE:
        return Database(Path(location), [META_SCHEMA, *schemas] if schemas else [])
    return PostgresDatabase(location, schemas)


def fill_queue(db: StateDatabase, jobs: int, targets: int) -> None:
    """`jobs` one-instance jobs, as an `on: instance` forward rule queues them."""
    queue = JobQueue(db, POLICY)
    with db.transaction() as connection:
        for number in range(jobs):
            queue.enqueue(connection, JobSpec(
                rule="forward all", action="forward", trigger="instance", level="instance",
                resource_id=f"i{number}", target=f"TARGET{number % targets}"), [f"i{number}"])


def claim_worker(engine: str, location: str, claimant: str, max_items: int, start: Barrier,
                 results: multiprocessing.Queue[dict[str, float]]) -> None:
    """One node's worker: claim, mark sent, settle, until nothing waits; reports its tally."""
    db = open_queue_store(engine, location)
    queue = JobQueue(db, POLICY, claimant=claimant)
    count_statements(db)
    mine = dict.fromkeys(("claims", "empty", "claim_statements", "claim_transactions",
                          "settle_statements", "settle_transactions"), 0.0)
    start.wait()
    began, cpu = time.monotonic(), time.process_time()
    while True:
        statements, transactions = Tally.statements, Tally.transactions
        claim = queue.claim(max_items)
        mine["claim_statements"] += Tally.statements - statements
        mine["claim_transactions"] += Tally.transactions - transactions
        if claim is None:
            mine["empty"] += 1
            if queue.state_counts().get("pending", 0) == 0:
                break
            continue
        mine["claims"] += 1
        statements, transactions = Tally.statements, Tally.transactions
        queue.mark_sent(claim.items, {item.instance_id: 1 for item in claim.items})
        queue.settle(claim.job_ids, None, None)
        mine["settle_statements"] += Tally.statements - statements
        mine["settle_transactions"] += Tally.transactions - transactions
    mine.update(began=began, ended=time.monotonic(), cpu=time.process_time() - cpu)
    results.put(mine)


def reaped_cpu_seconds(pid: int) -> float:
    """CPU of a process's children that ended and were waited for (PostgreSQL's backends of
    connections closed during the round)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(server: PostgresServer) -> float:
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    return sum(deid_bench.cpu_seconds(postmaster).values()) + reaped_cpu_seconds(postmaster)


@dataclass(frozen=True)
class ClaimSettings:
    jobs: int
    workers: int
    max_items: int
    targets: int


def claims_round(engine: str, settings: ClaimSettings, server: PostgresServer,
                 work: Path) -> dict[str, float]:
    if engine == SQLITE:
        location = str(work / f"queue-{generate_uid()[-12:]}.sqlite")
    else:
        location = server.create_database()
    db = open_queue_store(engine, location, [AUDIT_SCHEMA, JOBS_SCHEMA])
    fill_queue(db, settings.jobs, settings.targets)
    db.close()
    start = SPAWN.Barrier(settings.workers)
    results: multiprocessing.Queue[dict[str, float]] = SPAWN.Queue()
    server_before = server_cpu_seconds(server)
    workers = [SPAWN.Process(target=claim_worker, args=(
        engine, location, f"node-{n}/bench:{n}", settings.max_items, start, results))
        for n in range(settings.workers)]
    for worker in workers:
        worker.start()
    tallies = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    time.sleep(0.3)     # the server reaps the workers' backends (their CPU joins the count)
    server_seconds = server_cpu_seconds(server) - server_before
    if engine == SQLITE:
        for path in Path(location).parent.glob(Path(location).name + "*"):
            path.unlink()
    else:
        server.drop_database(location)
    total = {key: sum(t[key] for t in tallies) for key in tallies[0]}
    claims = total["claims"]
    wall = max(t["ended"] for t in tallies) - min(t["began"] for t in tallies)
    return {
        "claims_per_second": claims / wall,
        "empty_claims_per_claim": total["empty"] / claims,
        "statements_per_claim": total["claim_statements"] / claims,
        "transactions_per_claim": total["claim_transactions"] / claims,
        "statements_per_settle": total["settle_statements"] / claims,
        "transactions_per_settle": total["settle_transactions"] / claims,
        "worker_cpu_ms_per_claim": 1000 * total["cpu"] / claims,
        # SQLite has no server: its work is in the workers' CPU.
        **({"server_cpu_ms_per_claim": 1000 * server_seconds / claims}
           if engine == POSTGRESQL else {}),
    }


def summary(rounds: list[dict[str, float]]) -> dict[str, Any]:
    rates = [r["claims_per_second"] for r in rounds]
    return {
        "claims_per_second_median": round(statistics.median(rates), 1),
        "claims_per_second_quartiles": [round(q, 1) for q in relay_bench.quartiles(rates)],
        "claims_per_second_all": [round(rate, 1) for rate in rates],
        **{f"{key}_median": round(statistics.median(r[key] for r in rounds), 3)
           for key in rounds[0] if key != "claims_per_second"},
    }


def claims_part(args: argparse.Namespace, server: PostgresServer, work: Path) -> dict[str, Any]:
    by_targets: dict[str, Any] = {}
    for targets in args.targets:
        settings = ClaimSettings(args.jobs, args.workers, args.max_items, targets)
        rounds: dict[str, list[dict[str, float]]] = {engine: [] for engine in ENGINES}
        for number in range(args.rounds):
            # Each engine first in every other round: neither always meets a cold cache.
            for engine in ENGINES[number % 2:] + ENGINES[:number % 2]:
                rounds[engine].append(claims_round(engine, settings, server, work))
            print(f"claims, {targets} target(s), round {number + 1}: " + ", ".join(
                f"{engine} {rounds[engine][-1]['claims_per_second']:.0f}/s" for engine in ENGINES),
                file=sys.stderr)
        paired = [p["claims_per_second"] / s["claims_per_second"]
                  for s, p in zip(rounds[SQLITE], rounds[POSTGRESQL], strict=True)]
        by_targets[str(targets)] = {
            **{engine: summary(rounds[engine]) for engine in ENGINES},
            "ratio_postgresql_to_sqlite_median_of_rounds": round(statistics.median(paired), 3),
            "ratio_postgresql_to_sqlite_quartiles_of_rounds": relay_bench.quartiles(paired),
        }
    return {"jobs": args.jobs, "workers": args.workers, "max_items_per_claim": args.max_items,
            "rounds": args.rounds, "by_targets": by_targets}


# -- relay and deid: one node and two nodes behind the front --------------------------------------

@dataclass
class Cluster:
    nodes: dict[str, OrthancProcess]
    front_port: int
    databases: list[str]        # conninfos: Orthanc's index, the gateway's state

    @property
    def first(self) -> OrthancProcess:
        return next(iter(self.nodes.values()))


@contextmanager
def running_cluster(work: Path, name: str, count: int, server: PostgresServer, rules: str,
                    modalities: dict[str, OrthancProcess | tuple[str, int]],
                    stable_age: int) -> Iterator[Cluster]:
    index_db, state_db = server.create_database(), server.create_database()
    folder = work / name
    nodes = {f"{name}-{n}": gateway_node(
        folder, f"{name}-{n}", server=server, index_db=index_db, state_db=state_db,
        shared=folder / "shared-storage", rules=rules, modalities=modalities,
        stable_age=stable_age) for n in range(count)}
    try:
        for node in nodes.values():     # one after the other: the first makes the schemas
            node.start()
        with dicom_front(folder, {n: node.dicom_port for n, node in nodes.items()}) as port:
            yield Cluster(nodes, port, [index_db, state_db])
    finally:
        for node in nodes.values():
            node.stop()


def transactions(server: PostgresServer, conninfos: Sequence[str]) -> int:
    names = [conninfo.rsplit("dbname=", 1)[1] for conninfo in conninfos]
    with psycopg.connect(server.conninfo(), autocommit=True) as admin:
        row = admin.execute("SELECT COALESCE(SUM(xact_commit + xact_rollback), 0) FROM "
                            "pg_stat_database WHERE datname = ANY(%s)", (names,)).fetchone()
    return int(row[0]) if row else 0


def send_all(batches: Sequence[Sequence[Path]], port: int) -> None:
    """Each batch by its own storescu, all at once: separate associations, which the front's
    leastconn spreads over the nodes (one association always stays on one node)."""
    with ThreadPoolExecutor(len(batches)) as pool:
        for done in [pool.submit(storescu, batch, port, calling="MODALITY", called="RTGATEWAY")
                     for batch in batches]:
            done.result()


@dataclass
class Usage:
    """What one measurement cost: CPU seconds per node and of the server, server transactions."""

    nodes: dict[str, float]
    server: float
    transactions: int


def usage_now(cluster: Cluster, server: PostgresServer) -> Usage:
    nodes = {}
    for name, node in cluster.nodes.items():
        assert node.process is not None
        nodes[name] = sum(deid_bench.cpu_seconds(node.process.pid).values())
    return Usage(nodes, server_cpu_seconds(server), transactions(server, cluster.databases))


def measured(cluster: Cluster, server: PostgresServer, run: Callable[[], float],
             instances: int) -> dict[str, Any]:
    """run() sends and waits, returning its seconds; the CPU and transactions counted until
    SETTLE_SECONDS after it (the nodes' tail of work for these instances included)."""
    time.sleep(SETTLE_SECONDS)
    before = usage_now(cluster, server)
    seconds = run()
    time.sleep(SETTLE_SECONDS)
    after = usage_now(cluster, server)
    cluster.first.reset_storage()       # the index is shared: every node's copy goes
    return {
        "seconds": seconds,
        "node_cpu_ms_per_instance": {name: 1000 * (after.nodes[name] - before.nodes[name])
                                     / instances for name in cluster.nodes},
        "server_cpu_ms_per_instance": 1000 * (after.server - before.server) / instances,
        "server_transactions_per_instance":
            (after.transactions - before.transactions) / instances,
    }


def relay_run(cluster: Cluster, target: OrthancProcess, files: list[Path],
              senders: int) -> Callable[[], float]:
    def run() -> float:
        target.reset_storage()
        start = time.perf_counter()
        send_all([files[n::senders] for n in range(senders)], cluster.front_port)
        return relay_bench.wait_for_count(target, len(files)) - start
    return run


def copies_stored(node: OrthancProcess, patient_id: str) -> int:
    answer = node.get("/rt-gateway/deid/mappings", params={"patient": patient_id})
    return len(answer.json()["copies"]) if answer.ok else 0


def deid_run(cluster: Cluster, patients: dict[str, list[Path]]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        send_all(list(patients.values()), cluster.front_port)
        waiting = dict(patients)
        deadline = time.time() + 600
        while waiting and time.time() < deadline:
            waiting = {p: files for p, files in waiting.items()
                       if copies_stored(cluster.first, p) < len(files)}
            time.sleep(0.1)
        if waiting:
            raise TimeoutError(f"copies missing for {sorted(waiting)}")
        return time.perf_counter() - start
    return run


def cluster_summary(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    seconds = {setup: [r["seconds"] for r in rows] for setup, rows in rounds.items()}
    paired = [two / one for one, two in zip(seconds["one"], seconds["two"], strict=True)]
    per_setup = {}
    for setup, rows in rounds.items():
        names = rows[0]["node_cpu_ms_per_instance"]
        per_node = {name: round(statistics.median(r["node_cpu_ms_per_instance"][name]
                                                  for r in rows), 2) for name in names}
        per_setup[setup] = {
            "seconds_median": round(statistics.median(seconds[setup]), 3),
            "seconds_all": [round(s, 3) for s in seconds[setup]],
            "node_cpu_ms_per_instance_median": per_node,
            "nodes_cpu_ms_per_instance_total_median": round(statistics.median(
                sum(r["node_cpu_ms_per_instance"].values()) for r in rows), 2),
            "server_cpu_ms_per_instance_median": round(statistics.median(
                r["server_cpu_ms_per_instance"] for r in rows), 2),
            "server_transactions_per_instance_median": round(statistics.median(
                r["server_transactions_per_instance"] for r in rows), 2),
        }
    return {
        **per_setup,
        # Above 1: two nodes took longer than one (expected on 2 cores).
        "ratio_two_to_one_seconds_median_of_rounds": round(statistics.median(paired), 3),
        "ratio_two_to_one_seconds_quartiles_of_rounds": relay_bench.quartiles(paired),
    }


def nodes_part(part: str, args: argparse.Namespace, server: PostgresServer,
               work: Path) -> dict[str, Any]:
    """relay or deid through one node and through two, the same load each round."""
    target = OrthancProcess(work / "target", "TARGET")
    rules = relay_bench.RULES.format(trigger="instance") if part == "relay" else deid_bench.RULES
    rounds: dict[str, list[dict[str, Any]]] = {"one": [], "two": []}
    target.start()
    try:
        with running_cluster(work, f"{part}-one", 1, server, rules, {"TARGET": target}, 1) as one, \
                running_cluster(work, f"{part}-two", 2, server, rules, {"TARGET": target}, 1) as two:
            setups = {"one": one, "two": two}
            for number in range(args.rounds):
                folder = work / f"{part}-round-{number}"
                order = ["one", "two"] if number % 2 == 0 else ["two", "one"]
                for setup in order:
                    rounds[setup].append(nodes_round(part, args, setups[setup], target, server,
                                                     folder / setup))
                print(f"{part}, round {number + 1}: " + ", ".join(
                    f"{setup} {rounds[setup][-1]['seconds']:.2f} s" for setup in rounds),
                    file=sys.stderr)
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        target.stop()
    return {"slices": args.slices, "size": f"{args.size}x{args.size}", "senders": args.senders,
            "rounds": args.rounds, **cluster_summary(rounds)}


def nodes_round(part: str, args: argparse.Namespace, cluster: Cluster, target: OrthancProcess,
                server: PostgresServer, folder: Path) -> dict[str, Any]:
    """Fresh UIDs for each measurement: nothing is known to either set-up already."""
    if part == "relay":
        files = relay_bench.make_slices(folder, args.slices, args.size)
        return measured(cluster, server, relay_run(cluster, target, files, args.senders),
                        len(files))
    per_patient = max(1, args.slices // args.senders)
    patients = {}
    for n in range(args.senders):
        patient_id = f"BENCH-{generate_uid()[-8:]}"
        patients[patient_id] = deid_bench.make_slices(folder / str(n), patient_id, per_patient,
                                                      args.size)
    return measured(cluster, server, deid_run(cluster, patients), per_patient * args.senders)


# -- the command -----------------------------------------------------------------------------------

def counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=list(PARTS),
                        help=f"which of {', '.join(PARTS)} to run (default: all three)")
    # Rounds on these shared machines spread widely: eight at least (bench/relay.py).
    parser.add_argument("--rounds", type=int, default=8)
    claims = parser.add_argument_group("claims")
    claims.add_argument("--jobs", type=int, default=1000, help="pending jobs per round")
    claims.add_argument("--workers", type=int, default=4, help="claiming processes")
    claims.add_argument("--max-items", type=int, default=1,
                        help="instances per claim (1: every claim takes one job)")
    claims.add_argument("--targets", type=counts, default=[1, 4],
                        help="destinations the jobs spread over, each measured (default 1,4)")
    nodes = parser.add_argument_group("relay and deid")
    nodes.add_argument("--slices", type=int, default=200, help="CT instances per measurement")
    nodes.add_argument("--size", type=int, default=512)
    nodes.add_argument("--senders", type=int, default=4,
                       help="storescu at once through the front (deid: one patient each)")
    args = parser.parse_args(argv)
    # Not argparse's choices: with nargs="*" it refuses the empty default list (Python 3.11).
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    return args


def main() -> None:
    args = arguments()
    parts = [part for part in PARTS if part in args.parts]
    work = Path(tempfile.mkdtemp(prefix="rtgw-bench-cluster-"))
    result: dict[str, Any] = {"benchmark": "cluster", "parts": parts}
    try:
        with running_postgres() as server:
            if "claims" in parts:
                result["claims"] = claims_part(args, server, work)
            for part in ("relay", "deid"):
                if part in parts:
                    result[part] = nodes_part(part, args, server, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
