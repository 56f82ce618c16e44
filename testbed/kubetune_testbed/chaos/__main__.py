"""`python -m kubetune_testbed.chaos`: inject faults into real training jobs on the local cluster.

    python -m kubetune_testbed.chaos [--seed N] [--faults N] [--jobs N] [--time-limit SECONDS]
                                     [--kinds kill-trainer,delete-worker,...] [--run-dir DIR]

Needs a running local cluster (`make up`). Prints what it does, then a table;
exits 0 only when every check held. Ctrl-C stops it early and still cleans up.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from ..cluster import attach, default_run_dir
from .faults import DEFAULT_KINDS, KINDS
from .suite import Options, Suite


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown kinds {', '.join(unknown) or '(none)'}; known: {', '.join(KINDS)}")
    return kinds


def main(argv: list[str] | None = None) -> int:
    defaults = Options()
    parser = argparse.ArgumentParser(prog="python -m kubetune_testbed.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="draws the faults (default %(default)s)")
    parser.add_argument("--faults", type=int, default=defaults.faults, help="faults to inject (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=defaults.jobs,
                        help="jobs training at the same time; a finished one is replaced (default %(default)s)")
    parser.add_argument("--time-limit", type=float, default=defaults.time_limit,
                        help="seconds for everything, cleanup included (default %(default)s)")
    parser.add_argument("--kinds", type=_kinds, default=DEFAULT_KINDS,
                        help=f"comma-separated fault kinds (default: all); known: {', '.join(KINDS)}")
    parser.add_argument("--steps", type=int, default=defaults.max_steps, help="training steps per job")
    parser.add_argument("--every", type=int, default=defaults.every_steps, help="checkpoint.everySteps of each job")
    parser.add_argument("--nodes", type=int, default=defaults.nodes, help="worker pods per job")
    parser.add_argument("--run-dir", type=Path, default=default_run_dir())
    args = parser.parse_args(argv)
    cluster = attach(args.run_dir)
    if cluster is None:
        print(f"no healthy local cluster in {args.run_dir}; start one with `make up`", file=sys.stderr)
        return 2

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    options = Options(seed=args.seed, faults=args.faults, jobs=args.jobs, time_limit=args.time_limit,
                      kinds=args.kinds, nodes=args.nodes, max_steps=args.steps, every_steps=args.every)
    started = time.monotonic()
    try:
        report = Suite(cluster, options, say=lambda line: print(line, flush=True)).run()
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    took = time.monotonic() - started
    print()
    print(report.table())
    print(f"\nfinished in {took:.0f} s, cleanup included (limit {options.time_limit:.0f} s)")
    return 0 if report.ok and took <= options.time_limit else 1


if __name__ == "__main__":
    sys.exit(main())
