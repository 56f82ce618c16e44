"""`python -m kubetune_testbed.nodeagent`: run the node agent until SIGTERM.

Started by the local cluster (kubetune_testbed.cluster); the pod network (its
bridge) must exist already.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from .agent import Agent
from .network import PodNetwork


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--network-index", type=int, required=True, help="N of the bridge ktbrN / 10.244.N.0/24")
    parser.add_argument("--node-name", default="local-node-0")
    parser.add_argument("--gpus", type=int, default=8, help="the Node's nvidia.com/gpu capacity")
    parser.add_argument("--kubelet-version", default="v0.0.0")
    parser.add_argument("--serving-cert", default="node-agent-serving", help="stem of the TLS pair in <run>/pki")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s",
                        stream=sys.stdout)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    agent = Agent(args.kubeconfig, args.run_dir.resolve(), PodNetwork(args.network_index), args.node_name,
                  args.gpus, args.kubelet_version, args.serving_cert)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
