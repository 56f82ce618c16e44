"""`python -m kubetune_testbed up|down|status`: the local cluster from the command line (`make up/down/status`).

    python -m kubetune_testbed up|down|status [--run-dir DIR] [--fake-nodes N] [--gpus-per-node N]
                                              [--node-gpus N] [--no-node-agent]

Each flag has an environment variable as its default: KUBETUNE_LOCAL_RUN_DIR
(default .local/ in the repository), KUBETUNE_FAKE_NODES (2),
KUBETUNE_FAKE_NODE_GPUS (8), KUBETUNE_LOCAL_NODE_GPUS (8) and
KUBETUNE_NODE_AGENT=0 for a cluster without the node agent.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .cluster import ClusterError, LocalCluster, default_run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune_testbed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--run-dir", type=Path, default=default_run_dir())
    parser.add_argument("--fake-nodes", type=int, default=int(os.environ.get("KUBETUNE_FAKE_NODES", "2")))
    parser.add_argument("--gpus-per-node", type=int, default=int(os.environ.get("KUBETUNE_FAKE_NODE_GPUS", "8")))
    parser.add_argument("--node-gpus", type=int, default=int(os.environ.get("KUBETUNE_LOCAL_NODE_GPUS", "8")),
                        help="nvidia.com/gpu capacity of the node agent's node")
    parser.add_argument("--no-node-agent", action="store_true", default=os.environ.get("KUBETUNE_NODE_AGENT") == "0",
                        help="start no node agent (no root needed; only kwok's fake nodes)")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.run_dir, args.fake_nodes, args.gpus_per_node, not args.no_node_agent, args.node_gpus)
    try:
        if args.command == "up":
            cluster.up()
        elif args.command == "down":
            cluster.down()
        else:
            return 0 if cluster.status() else 1
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
