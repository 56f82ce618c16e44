"""Hangs: a training process that stops making progress reports where it is stuck, then exits.

The watchdog alone (plain threads, seconds), then two torchrun 'nodes' on gloo where one rank's
training loop blocks for good (the KUBETUNE_TEST_STALL_AT_STEP fault hook): both ranks' watchdogs
fire; the blocked rank stores its own stack, its peer stores the collective it waits in, and each
writes a "Hang: ..." termination message, which the operator reads as a hang.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from conftest import launch, torchrun_nodes, write_config, write_jsonl

from kubetune_trainer.callbacks import StepMetrics
from kubetune_trainer.errors import EXIT_HANG
from kubetune_trainer.watchdog import Watchdog, diagnostics_key


class Fired:
    """What a watchdog did when it fired: the stored report, the termination line, the exit code."""

    def __init__(self) -> None:
        self.reports: dict[str, str] = {}
        self.lines: list[str] = []
        self.codes: list[int] = []
        self.done = threading.Event()

    def report(self, key: str, text: str) -> None:
        self.reports[key] = text

    def exit(self, code: int) -> None:
        self.codes.append(code)
        self.done.set()


def watchdog(fired: Fired, startup: float, progress: float) -> Watchdog:
    return Watchdog(startup_seconds=startup, progress_seconds=progress, rank=3, attempt=2, report=fired.report,
                    terminate=fired.lines.append, exit=fired.exit, where="s3://b/ckpt/").start()


def step(n: int) -> StepMetrics:
    return StepMetrics(step=n, total_steps=100, epoch=0.0, loss=1.0, learning_rate=1e-4, grad_norm=None,
                       tokens_per_second=None, samples_per_second=1.0, eta_seconds=0.0)


def test_steps_keep_the_watchdog_quiet_and_a_missing_one_fires_it() -> None:
    fired = Fired()
    dog = watchdog(fired, startup=1.0, progress=0.6)
    for n in range(1, 6):  # 1.5 s of steps, each within the deadline
        time.sleep(0.3)
        dog.on_step_end(step(n))
    assert not fired.codes
    assert fired.done.wait(5), "no step for longer than the deadline: it fires"
    assert fired.codes == [EXIT_HANG]
    [line] = fired.lines
    assert line.startswith("Hang: no step for 1 s at step 5 (rank 3)")
    assert line.endswith("stacks in s3://b/ckpt/diagnostics/attempt-2/rank-3.txt")
    text = fired.reports[diagnostics_key(2, 3)]
    # The training thread's stack (this test, sleeping or waiting) is in the report.
    assert "test_steps_keep_the_watchdog_quiet_and_a_missing_one_fires_it" in text
    assert "spec.runPolicy.progressDeadlineSeconds" in text


def test_the_startup_deadline_covers_the_time_before_the_first_step() -> None:
    fired = Fired()
    dog = watchdog(fired, startup=0.5, progress=60)
    assert fired.done.wait(5)
    assert fired.lines[0].startswith("Hang: startup not done for 1 s at step 0 (rank 3)")
    assert "spec.runPolicy.startupDeadlineSeconds" in fired.reports[diagnostics_key(2, 3)]
    disarmed = Fired()
    dog = watchdog(disarmed, startup=0.5, progress=0.5)
    dog.disarm()
    assert not disarmed.done.wait(1.5), "a disarmed watchdog stays quiet"


def test_a_blocked_rank_and_its_waiting_peer_both_report_and_exit_as_hung(tiny_model_dir: Path,
                                                                        tmp_path: Path) -> None:
    root = tmp_path / "pvc"
    for claim in ("models", "data", "work"):
        (root / claim).mkdir(parents=True)
    (root / "models" / "tiny").symlink_to(tiny_model_dir)
    write_jsonl(root / "data" / "train.jsonl", [{"text": f"record {i} of the training data, a line"} for i in range(64)])
    manifest = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "hang"},
                "spec": {"model": {"uri": "pvc://models/tiny"},
                         "dataset": {"train": "pvc://data/train.jsonl", "format": "text"},
                         "training": {"maxSteps": 20, "microBatchSize": 1, "globalBatchSize": 2,
                                      "maxSeqLength": 32, "precision": "fp32", "logEverySteps": 1},
                         "resources": {"nodes": 2, "gpusPerNode": 0},
                         "runPolicy": {"progressDeadlineSeconds": 10},
                         "output": {"uri": "pvc://work/model"}}}
    config = write_config(tmp_path / "job.json", manifest)
    logs = [tmp_path / f"termination-{rank}.log" for rank in range(2)]
    envs = []
    for rank, log in enumerate(logs):
        log.touch()
        envs.append({"KUBETUNE_PVC_ROOT": str(root), "KUBETUNE_SCRATCH_DIR": str(tmp_path / f"scratch-{rank}"),
                     "KUBETUNE_TERMINATION_LOG": str(log), "KUBETUNE_ATTEMPT": "4",
                     "KUBETUNE_TEST_STALL_AT_STEP": "3", "KUBETUNE_TEST_STALL_RANK": "1"})
    started = time.monotonic()
    run = launch(torchrun_nodes(config), envs=envs, timeout=300)
    took = time.monotonic() - started
    assert all(rc not in (0, None) for rc in run.returncodes), run.output[-4000:]
    assert took < 200, f"the watchdogs took {took:.0f} s to end a run blocked at step 3"

    stacks = root / "work" / "model" / "checkpoints" / "diagnostics" / "attempt-4"
    blocked, waiting = logs[1].read_text(), logs[0].read_text()
    # The blocked rank: its own stack, in the hook that blocks the loop.
    assert blocked.startswith("Hang: no step for 1") and "at step 3 (rank 1)" in blocked, blocked
    assert blocked.endswith("stacks in pvc://work/model/checkpoints/diagnostics/attempt-4/rank-1.txt")
    assert "in on_step_end" in (stacks / "rank-1.txt").read_text()
    # Its peer: stuck in a collective, which it names.
    assert "(rank 0, waiting in torch.distributed." in waiting, waiting
    report = (stacks / "rank-0.txt").read_text()
    assert "waiting in: torch.distributed." in report and "Thread MainThread" in report
    assert sorted(e["rank"] for e in run.of("hang")) == [0, 1], "each rank logs its hang as a JSON line"
