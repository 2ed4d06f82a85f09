"""Which engine keeps the gateway's state: the SQLite file at `RtGateway.Database` (one node, the
default), or the PostgreSQL server at `RtGateway.PostgreSQL` that several nodes share. Every store
is written against db_engine's protocols; this is the one place that picks the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orthanc_plugin.config import GatewayConfig
from orthanc_plugin.db import META_SCHEMA, Database
from orthanc_plugin.db_engine import StateDatabase


def open_state_database(config: GatewayConfig, schemas: Sequence[str],
                        report_trouble: Callable[[str], None] | None = None) -> StateDatabase:
    """The state database with these parts' tables (created when missing)."""
    if config.postgresql:
        # Imported here: a single node never loads the PostgreSQL driver.
        from orthanc_plugin.db_postgres import PostgresDatabase

        return PostgresDatabase(config.postgresql, schemas, report_trouble)
    return Database(config.database, [META_SCHEMA, *schemas], report_trouble)


def where(config: GatewayConfig) -> str:
    """The state database as the log names it (never the password)."""
    if not config.postgresql:
        return str(config.database)
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(config.postgresql)
    except Exception:  # an unparsable string: the connection will say what is wrong
        return "PostgreSQL"
    return (f"PostgreSQL {parts.get('dbname', '')} on {parts.get('host', 'localhost')}:"
            f"{parts.get('port', 5432)}")
