"""The index on PostgreSQL (several nodes, one index): its tables in a schema of their own in the
gateway's database, and the reader role the query page logs in as, which may read that schema and
nothing else (postgres_query.py runs the user's SQL as it).

At each start every worker, under the gateway's schema lock (db_postgres.SCHEMA_LOCK, so nodes
starting together make each table once):
- makes the schema, the Conquest tables (column names in lower case: model.create_statements),
  the RT tables, and the columns a new dicom.sql adds;
- creates the reader role when it is missing and the gateway's user may (CREATEROLE); otherwise a
  DBA creates it once (`CREATE ROLE rtgw_index_reader LOGIN PASSWORD '...'`), and until then a
  query answers what to run;
- grants it USAGE on the schema and SELECT on the index's tables: the schema's owner grants, no
  more privilege is needed. A role that is a superuser or a member of the gateway's own role is
  refused (it would read, or become, more than the index).

Only worker processes import it (scripts/import_rules.py).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import psycopg

from orthanc_plugin.db_engine import DbConnection, StateDatabase
from orthanc_plugin.db_postgres import SCHEMA_LOCK, postgres_ddl
from orthanc_plugin.index.model import LEVELS, TABLES, Layout, all_columns, create_statements
from orthanc_plugin.index.postgres_query import PostgresIndexReader
from orthanc_plugin.index.store import IndexStore
from orthanc_plugin.index.tables import RT_SCHEMA, index_names

# A schema's or role's name as written without quotes (validated by the configuration).
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")


@dataclass(frozen=True)
class PostgresIndexSettings:
    schema: str = "conquest"
    reader_role: str = "rtgw_index_reader"
    reader_password: str = ""    # empty: libpq's own (a ~/.pgpass line, or trust)


def open_postgres_index(db: StateDatabase, conninfo: str, layout: Layout,
                        settings: PostgresIndexSettings) -> IndexStore:
    """The index's store on the gateway's PostgreSQL (`db`, reached with `conninfo`)."""
    create_tables(db, layout, settings.schema)
    access = ReaderAccess(db, settings)
    access.problem()    # granted now when it can be: the first query need not wait for it
    reader = PostgresIndexReader(conninfo, settings.reader_role, settings.reader_password,
                                 settings.schema, index_names(layout), access.problem)
    return IndexStore(db, layout, reader, settings.schema)


def create_tables(db: StateDatabase, layout: Layout, schema: str) -> None:
    _check_identifier(schema)
    statements = [*_statements(postgres_ddl(RT_SCHEMA)), *create_statements(layout, fold_case=True)]
    with db.transaction() as connection:
        _schema_lock(connection)
        connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        # The statements name their tables without a schema: they are made in the index's.
        connection.execute(f"SET LOCAL search_path TO {schema}")
        for statement in statements:
            connection.execute(statement)
        for level in LEVELS:
            table = TABLES[level]
            present = {row["column_name"] for row in connection.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = ? AND table_name = ?", (schema, table.lower()))}
            for name in all_columns(layout, level):
                if name.lower() not in present:
                    connection.execute(f'ALTER TABLE {table} ADD COLUMN "{name.lower()}" TEXT')


class ReaderAccess:
    """Whether the reader role may read the index: tried at start and again before each query
    until it holds (a DBA may create the role while the gateway runs)."""

    def __init__(self, db: StateDatabase, settings: PostgresIndexSettings) -> None:
        _check_identifier(settings.reader_role)
        self.db = db
        self.settings = settings
        self._granted = False
        self._lock = threading.Lock()

    def problem(self) -> str | None:
        """None once the role exists and is granted the index; else what is wrong and what a DBA
        runs about it."""
        with self._lock:
            if self._granted:
                return None
            try:
                with self.db.transaction() as connection:
                    problem = self._grant(connection)
            except psycopg.Error as error:     # two nodes creating the role at once, a server away
                return f"the index reader role {self.settings.reader_role} could not be " \
                       f"prepared ({error}); tried again at the next query"
            self._granted = problem is None
            return problem

    def _grant(self, connection: DbConnection) -> str | None:
        role, schema = self.settings.reader_role, self.settings.schema
        _schema_lock(connection)
        found = connection.execute(
            "SELECT rolsuper, pg_has_role(rolname, current_user, 'MEMBER') AS owner "
            "FROM pg_roles WHERE rolname = ?", (role,)).fetchone()
        if found is None:
            may = connection.execute("SELECT rolsuper OR rolcreaterole FROM pg_roles "
                                     "WHERE rolname = current_user").fetchone()
            if not (may and may[0]):
                return (f"the index reader role {role} does not exist and the gateway's user may "
                        f"not create roles: a DBA runs CREATE ROLE {role} LOGIN PASSWORD '...' "
                        "(and sets RtGateway.Index.ReaderPassword); the gateway grants it the "
                        "index by itself")
            password = self.settings.reader_password.replace("'", "''")
            connection.execute(
                f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT "
                + (f"PASSWORD '{password}'" if password else ""))
        elif found["rolsuper"] or found["owner"]:
            return (f"the index reader role {role} is a superuser or a member of the gateway's own "
                    "role: it could read more than the index; name a role that only reads "
                    "(RtGateway.Index.ReaderRole)")
        connection.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        connection.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
        return None


def _schema_lock(connection: DbConnection) -> None:
    connection.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,)).fetchall()


def _statements(ddl: str) -> list[str]:
    return [statement.strip() for statement in ddl.split(";") if statement.strip()]


def _check_identifier(name: str) -> None:
    if not IDENTIFIER.match(name):
        raise ValueError(f"not a plain PostgreSQL name (lower case letters, digits, _): {name!r}")
