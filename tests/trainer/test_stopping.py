"""A graceful stop: SIGTERM to one node's launcher stops every rank after the same step, commits it,
and the next start resumes there without losing a step.

Two 'nodes' (one torchrun each, under the pod's launcher, as the operator's pods run them) on
pvc:// claims. Only node 1 gets the signal, as when one worker pod is deleted or its node drained:
rank 0 learns of it from the step's all-reduce.
"""

from __future__ import annotations

import signal
from pathlib import Path

from conftest import (
    PYTHON,
    Launched,
    launch,
    torchrun_nodes,
    wait_for_event,
    write_config,
    write_jsonl,
)

SENTENCES = ["the cat sat on the mat.", "a dog ran in the park.", "my bird can sing a song."]
STEPS, EVERY = 16, 10


def test_sigterm_to_one_node_stops_both_at_one_step_with_a_commit_and_the_restart_loses_nothing(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "pvc"
    for claim in ("models", "data", "work"):
        (root / claim).mkdir(parents=True)
    (root / "models" / "tiny").symlink_to(tiny_model_dir)
    write_jsonl(root / "data" / "train.jsonl", [{"text": " ".join([SENTENCES[i % 3]] * 4)} for i in range(64)])
    manifest = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "stop"},
                "spec": {"model": {"uri": "pvc://models/tiny"},
                         "dataset": {"train": "pvc://data/train.jsonl", "format": "text"},
                         "method": {"gradientCheckpointing": False},
                         "training": {"maxSteps": STEPS, "learningRate": 1e-2, "microBatchSize": 2,
                                      "maxSeqLength": 32, "precision": "fp32", "logEverySteps": 1},
                         "deepspeed": {"zeroStage": 2}, "resources": {"nodes": 2, "gpusPerNode": 0},
                         "checkpoint": {"everySteps": EVERY, "keepLast": 3},
                         "output": {"uri": "pvc://work/model"}}}
    config = write_config(tmp_path / "job.json", manifest)
    messages = [tmp_path / f"termination-{n}.log" for n in range(2)]
    for m in messages:
        m.touch()
    envs = [{"KUBETUNE_PVC_ROOT": str(root), "KUBETUNE_SCRATCH_DIR": str(tmp_path / f"scratch-{n}"),
             "KUBETUNE_TERMINATION_LOG": str(messages[n])} for n in range(2)]
    launcher = [str(PYTHON), "-m", "kubetune_trainer.launch"]
    first = Launched([launcher + command for command in torchrun_nodes(config)], envs=envs)
    try:
        wait_for_event(first, lambda e: e["event"] == "step" and e["step"] >= 2, 240, "step 2")
        first.procs[1].send_signal(signal.SIGTERM)  # the kubelet's SIGTERM to node 1's first process
    finally:
        run = first.wait(timeout=120)
    stopped = run.of("stopped")
    assert len(stopped) == 1, run.output[-4000:]
    step = stopped[0]["step"]
    assert 2 <= step < EVERY, stopped  # the step after the signal, not a periodic checkpoint
    assert [e["step"] for e in run.of("step")][-1] == step  # nothing trained past it
    assert all(rc not in (0, -signal.SIGKILL) for rc in run.returncodes), run.returncodes
    committed = root / "work" / "model" / "checkpoints" / f"step-{step:08d}" / "manifest.json"
    assert committed.is_file(), "the stop's checkpoint is committed"
    assert messages[1].read_text() == f"Stopped at step {step} by SIGTERM: checkpoint step-{step:08d} committed"
    assert messages[0].read_text() == (f"Stopped at step {step} by another rank's SIGTERM: "
                                       f"checkpoint step-{step:08d} committed")

    second = launch(torchrun_nodes(config), envs=envs)
    assert all(rc == 0 for rc in second.returncodes), second.output[-4000:]
    assert second.of("resumed")[0]["step"] == step  # not one step lost
    assert [e["step"] for e in second.of("step")] == list(range(step + 1, STEPS + 1))
