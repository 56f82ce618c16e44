"""How long a graceful stop of the quick start takes, and how many steps it loses.

After `make up`: installs the operator as `make demo` does, uploads SmolLM2-135M-Instruct and the
chat data, applies examples/quickstart.yaml with a long run and no periodic checkpoint
(checkpoint.everySteps beyond it, so only the stop can save one), waits for training, then
suspends the job, which deletes both workers with their grace period, as Kueue's eviction,
a drain or `kubectl delete pod` do. It prints, for each of `--runs` stops:

  - the time from the suspend (the pods' deletion: SIGTERM) to rank 0's `stopped` log line,
    which it prints once the checkpoint is committed, split into finishing the step and saving;
  - the step stopped at, the last step logged before the SIGTERM, and the steps lost (the
    steps trained that no checkpoint holds: 0 when the stop committed the step it was in);
  - the step the next attempt resumed from.

Usage: .venv/bin/python hack/bench_stop.py [--runs 2] [--run-dir .local]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from demo import NAMESPACE, Demo

from kubetune_testbed import attach, default_run_dir
from kubetune_trainer.logs import parse_log_lines

STEPS = 400


class StopBench(Demo):
    def apply(self) -> None:
        job = json.loads(self.kubectl("create", "--dry-run=client", "-o", "json", "-f", str(self.example)))
        job["metadata"]["namespace"] = NAMESPACE
        spec = job["spec"]
        spec["training"].update(maxSteps=STEPS, evalEverySteps=STEPS)
        spec["checkpoint"]["everySteps"] = 10 * STEPS
        self.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(job))

    def wait(self, what: str, check: Any, timeout: float = 600) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := check():
                return found
            time.sleep(0.2)
        raise SystemExit(f"timed out waiting for {what}")

    def step_now(self) -> int:
        return int(((self.job().get("status") or {}).get("progress") or {}).get("step") or 0)

    def suspend(self, value: bool) -> None:
        self.kubectl("patch", "ftj", self.qs.name, "-n", NAMESPACE, "--type=merge",
                     "-p", json.dumps({"spec": {"runPolicy": {"suspend": value}}}))

    def one_stop(self, after: int) -> dict[str, float]:
        self.wait(f"step {after}", lambda: self.step_now() >= after)
        log_before = self.kubectl("logs", "-n", NAMESPACE, f"{self.qs.name}-worker-0")
        sigterm = time.time()
        self.suspend(True)
        # The pod's log is gone with it: follow it until the process exits.
        log = self.kubectl("logs", "-n", NAMESPACE, f"{self.qs.name}-worker-0", "-f", check=False) or log_before
        events = parse_log_lines(log)
        stopped = next((e for e in events if e["event"] == "stopped"), None)
        if stopped is None:
            raise SystemExit("rank 0 logged no `stopped` line:\n" + log[-3000:])
        steps = [e for e in events if e["event"] == "step"]
        before = [e for e in steps if e["time"] <= sigterm]
        last_step = next(e for e in reversed(steps) if e["step"] == stopped["step"]) if steps else None
        self.wait("both workers gone", lambda: not self.pods(), timeout=600)
        self.suspend(False)
        resumed = self.wait("the next attempt's resume", lambda: next(
            (e for e in parse_log_lines(self.kubectl("logs", "-n", NAMESPACE, f"{self.qs.name}-worker-0",
                                                     check=False)) if e["event"] == "resumed"), None))
        return {
            "stop_step": stopped["step"], "last_logged": before[-1]["step"] if before else 0,
            "to_committed": stopped["time"] - sigterm,
            "finish_step": (last_step["time"] - sigterm) if last_step and last_step["time"] > sigterm else 0.0,
            "resumed_from": resumed["step"], "lost": stopped["step"] - resumed["step"],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=default_run_dir())
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    cluster = attach(args.run_dir)
    if cluster is None:
        print(f"no local cluster is up in {args.run_dir}: run `make up` first", file=sys.stderr)
        return 1
    bench = StopBench(cluster)
    bench.install()
    bench.upload()
    bench.prepare_namespace()
    bench.apply()
    rows = [bench.one_stop(after=3 + 6 * i) for i in range(args.runs)]
    bench.kubectl("delete", "ftj", bench.qs.name, "-n", NAMESPACE, "--wait=false")
    print("\nGraceful stop of the quick start (SmolLM2-135M-Instruct, LoRA, 2 nodes x 1 process, CPU, gloo)")
    print(f"{'run':>3} {'SIGTERM->committed':>19} {'finishing the step':>19} {'stop step':>9} "
          f"{'last logged':>11} {'resumed from':>12} {'steps lost':>10}")
    for i, r in enumerate(rows, 1):
        print(f"{i:>3} {r['to_committed']:>18.1f}s {r['finish_step']:>18.1f}s {r['stop_step']:>9} "
              f"{r['last_logged']:>11} {r['resumed_from']:>12} {r['lost']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
