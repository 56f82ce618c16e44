"""Local DeepSpeed checkpoints that resume exactly: weights, optimizer, scheduler, data, RNG.

Each rank saves into a folder of its own, so that what a rank wrote is exactly
what it uploads (streaming.py), whether or not other ranks share its disk:

    <rank dir>/step-00000500/                  the shards DeepSpeed has this rank write
    <rank dir>/step-00000500/rng-rank00001.pt  this rank's python/numpy/torch RNG states

With frozen parameters (LoRA) only the trained ones are saved; the frozen ones are
the base model's, loaded again from the model source before resuming.

Resuming loads from one folder holding this rank's files plus the ones every
rank reads (resume.py downloads them). The loop's position (step, epoch, step in
epoch) and the run's config travel in DeepSpeed's `client_state`. RNG states
differ per rank (dropout is seeded per rank), hence the per-rank files.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kubetune_trainer.data.sampler import DataPosition
from kubetune_trainer.distributed import DistEnv, barrier
from kubetune_trainer.errors import TrainerError
from kubetune_trainer.manifest import step_folder

CLIENT_KEY = "kubetune"


@dataclass(frozen=True)
class TrainState:
    """How far training got; everything the loop needs to continue."""

    step: int = 0
    """Optimizer steps completed."""
    position: DataPosition = field(default_factory=DataPosition)
    """Where the next step's data starts."""
    stopped_early: bool = False
    """Early stopping ended training at this step: a restart trains no further."""
    selection: dict[str, Any] | None = None
    """The best step and early-stopping patience so far (selection.MetricTracker.state())."""


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_file(folder: Path, rank: int) -> Path:
    return folder / f"rng-rank{rank:05d}.pt"


def has_frozen_parameters(engine: Any) -> bool:
    return any(not p.requires_grad for p in engine.module.parameters())


def save_checkpoint(engine: Any, directory: str, state: TrainState, env: DistEnv,
                    config: dict[str, Any]) -> Path:
    """Write this rank's part of the checkpoint of `state` into `directory` (this rank's own
    folder; call on every rank); returns the step folder."""
    tag = step_folder(state.step)
    folder = Path(directory) / tag
    folder.mkdir(parents=True, exist_ok=True)
    client_state = {CLIENT_KEY: {"step": state.step, "position": asdict(state.position), "config": config,
                                 "stopped_early": state.stopped_early, "selection": state.selection}}
    # Frozen weights (LoRA's base model) come back from the model source on resume: a checkpoint
    # holds only what training changes, megabytes instead of the whole model.
    engine.save_checkpoint(directory, tag=tag, client_state=client_state, save_latest=False,
                           exclude_frozen_parameters=has_frozen_parameters(engine))
    torch.save(capture_rng(), _rng_file(folder, env.rank))
    barrier()  # the checkpoint is complete only once every rank has written
    return folder


def load_checkpoint(engine: Any, folder: Path, env: DistEnv) -> TrainState:
    """Restore the checkpoint in `folder` (a step-XXXXXXXX folder) into `engine` and the RNGs."""
    path, client_state = engine.load_checkpoint(str(folder.parent), tag=folder.name,
                                                load_module_strict=not has_frozen_parameters(engine))
    if path is None or not client_state or CLIENT_KEY not in client_state:
        raise TrainerError(f"{folder}: not a complete kubetune checkpoint; delete it to start over")
    saved = client_state[CLIENT_KEY]
    rng_file = _rng_file(folder, env.rank)
    if rng_file.is_file():  # absent when resuming with more ranks than saved: fresh per-rank seeds then
        restore_rng(torch.load(rng_file, weights_only=False))  # our own file, holds numpy state
    return TrainState(step=int(saved["step"]), position=DataPosition(**saved["position"]),
                      stopped_early=bool(saved.get("stopped_early", False)), selection=saved.get("selection"))
