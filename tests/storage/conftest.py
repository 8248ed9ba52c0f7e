"""Real PostgreSQL for the storage tests.

A fresh database with a random name is created for the test session (per xdist worker) and
dropped at the end, whatever the outcome. Each test gets it emptied (`dsn`), or, for migration
and outage tests, a database of its own that has never seen the schema (`fresh_dsn`).

The server is reached through CONSORTIUM_TEST_PG_ADMIN_DSN (default: the local trust-auth
cluster). If no server answers, the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

ADMIN_DSN = os.environ.get("CONSORTIUM_TEST_PG_ADMIN_DSN",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
TABLES = ("consensus_log", "checkpoint", "access_log", "verdicts", "review_votes", "member_votes",
          "proposals", "record_subjects", "entries", "envelopes", "blocks", "meta")
"""Every table of the format-2 schema (migration 6) that holds rows a test leaves behind."""


def dsn_for(database: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()
                                             if v is not None})


def _create_database() -> str:
    name = f"consortium_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {ADMIN_DSN}: {exc}")
    return name


def _drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        # An outage test may leave connections refused; DROP ... WITH (FORCE) needs none.
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true")
                      .format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                      .format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def session_dsn() -> Iterator[str]:
    name = _create_database()
    try:
        yield dsn_for(name)
    finally:
        _drop_database(name)


@pytest.fixture
def dsn(session_dsn: str) -> str:
    """The session database, emptied of every row (the schema stays, if present)."""
    with psycopg.connect(session_dsn, autocommit=True) as conn:
        present = [t for t in TABLES
                   if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone() != (None,)]
        if present:
            conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in present)))
    return session_dsn


@pytest.fixture
def fresh_dsn() -> Iterator[str]:
    """A brand-new, empty database for this test alone."""
    name = _create_database()
    try:
        yield dsn_for(name)
    finally:
        _drop_database(name)
