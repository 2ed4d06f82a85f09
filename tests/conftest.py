"""Fixtures shared by every test folder: a real PostgreSQL (tests/support/postgres.py), started
once per session and only when a test asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresServer, running_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # No skip when PostgreSQL is missing: running_postgres raises with what to install.
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_conninfo(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database of its own for one test."""
    conninfo = postgres_server.create_database()
    yield conninfo
    postgres_server.drop_database(conninfo)
