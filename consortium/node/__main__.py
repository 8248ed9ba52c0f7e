"""`python -m consortium.node --config FILE`: run one validator until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import psycopg
import structlog
from prometheus_client import start_http_server

from consortium.config import ConfigError, Genesis, ValidatorConfig
from consortium.storage.rows import StoreError


def configure_logging(level: str = "info") -> None:
    """Structured logs: one JSON object per line on stdout (the process manager keeps them)."""
    logging.basicConfig(format="%(message)s", stream=sys.stdout,
                        level=getattr(logging, level.upper()))
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout), cache_logger_on_first_use=True)


async def run(config: ValidatorConfig) -> bool:
    """Serve until SIGTERM; False when the validator stopped because of a fatal error."""
    from consortium.node.validator import Validator
    from consortium.storage.reads import LedgerReader
    from consortium.storage.store import LedgerStore

    genesis = Genesis.load(config.genesis)
    store = await LedgerStore.open(config.dsn, chain_id=genesis.chain_id_bytes,
                                   replica_id=config.replica_id)
    try:
        reads = await LedgerReader.open(config.dsn)
    except BaseException:
        await store.close()
        raise
    validator = Validator(config, genesis, store, reads)
    await validator.serve_forever()
    return not validator.failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="consortium validator",
                                 description="Run one validator until SIGTERM.")
    ap.add_argument("--config", required=True, type=Path, help="the validator's config.json")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    args = ap.parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = ValidatorConfig.load(args.config)
        if not config.dsn:
            raise ConfigError(f"{args.config}: no database DSN (start it with `consortium up`)")
        host, _, port = config.listen_metrics.rpartition(":")
        start_http_server(int(port), addr=host)
        if not asyncio.run(run(config)):
            return 1  # the supervisor restarts us; recovery starts from the database
    except ConfigError as exc:
        print(f"consortium validator: {exc}", file=sys.stderr)
        return 2
    except (StoreError, psycopg.OperationalError) as exc:  # e.g. a twin, or no database
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"consortium validator: {first_line}", file=sys.stderr)
        return 2
    except OSError as exc:  # a port in use
        print(f"consortium validator: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
