"""`python -m kubetune_operator`: run the FineTuneJob operator against the current cluster."""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from . import settings as settings_module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kubetune_operator", description=__doc__,
        epilog=settings_module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--standalone", action="store_true",
                        help="run without peering (no other replica is coordinated with)")
    args = parser.parse_args(argv)
    config = settings_module.Settings.from_env()
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from . import handlers  # noqa: F401  (registers the handlers)

    standalone = args.standalone or not config.peering
    kopf.run(
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        standalone=standalone,
        peering_name=None if standalone else config.peering,
        priority=config.priority,
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
