"""`python -m consortium.admission --config FILE`: run the admission service until SIGTERM
(what `consortium admission serve` and `consortium up` start)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from consortium.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    from consortium.admission import backends
    from consortium.admission.service import ServiceConfig, serve
    from consortium.node.__main__ import configure_logging

    ap = argparse.ArgumentParser(prog="consortium admission serve",
                                 description="Screen committed records, post signed verdicts.")
    ap.add_argument("--config", required=True, type=Path, help="the service's config.json")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    ap.add_argument("--backend", default=None, choices=["embedded", "openai", "rules"],
                    help="run this backend instead of the config's (what `consortium up "
                         "--backend` and its fallback to the rules pass)")
    args = ap.parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = ServiceConfig.load(args.config)
        if args.backend is not None:
            config = dataclasses.replace(config, backend=args.backend)
        return serve(config)
    except (ConfigError, backends.ModelUnavailable, backends.ModelIntegrityError) as exc:
        print(f"consortium admission: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"consortium admission: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
