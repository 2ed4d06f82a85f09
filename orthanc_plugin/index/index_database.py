"""Where the index lives, picked as the gateway's state is (state_database.py): its own SQLite
file beside the gateway database (one node, `RtGateway.Index.Database`), or a schema of the
gateway's PostgreSQL when `RtGateway.PostgreSQL` is set, so every node writes and reads one index.
"""

from __future__ import annotations

from typing import Any

from orthanc_plugin.config import SECTION, ConfigError, GatewayConfig, resolve_path
from orthanc_plugin.db_engine import StateDatabase
from orthanc_plugin.index.model import Layout
from orthanc_plugin.index.store import IndexStore

PLAIN_NAME = "lower case letters, digits and _, starting with a letter or _"


def open_index_store(config: GatewayConfig, db: StateDatabase, settings: dict[str, Any],
                     layout: Layout) -> IndexStore:
    """`db`: the gateway's state database; `settings`: RtGateway.Index."""
    if config.postgresql:
        # Imported here: a single node never loads the PostgreSQL driver.
        from orthanc_plugin.index.postgres_store import (
            IDENTIFIER,
            PostgresIndexSettings,
            open_postgres_index,
        )

        defaults = PostgresIndexSettings()
        chosen = PostgresIndexSettings(
            schema=_text(settings, "Schema", defaults.schema),
            reader_role=_text(settings, "ReaderRole", defaults.reader_role),
            reader_password=_text(settings, "ReaderPassword", defaults.reader_password))
        for key, value in (("Schema", chosen.schema), ("ReaderRole", chosen.reader_role)):
            if not IDENTIFIER.match(value):
                raise ConfigError(f"{SECTION}.Index.{key}: expected {PLAIN_NAME}, got {value!r}")
        return open_postgres_index(db, config.postgresql, layout, chosen)
    default = config.database.parent / "conquest.sqlite"
    path = resolve_path(config.config_dir, str(settings.get("Database", default)))
    return IndexStore(path, layout)


def _text(settings: dict[str, Any], key: str, default: str) -> str:
    value = settings.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{SECTION}.Index.{key}: expected a string")
    return value
