"""What a run knows only once it runs: where its model was staged, where the export goes, and
which process of which attempt it is.

Everything else a run does follows from the FineTuneJob spec itself (and the
numbers kubetune_api derives from it), so this stays small.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubetune_trainer.distributed import DistEnv


@dataclass(frozen=True)
class RunContext:
    """The run-time facts a run needs besides its spec."""

    model_dir: str
    """The staged model: a local folder in save_pretrained layout (staging.stage_model)."""
    output_dir: Path
    """Where rank 0 writes the fine-tuned model before publishing it to spec.output.uri."""
    world: DistEnv
    """This process's rank and local rank, and the number of processes (torchrun's)."""
    attempt: int = 1
    """The gang attempt (KUBETUNE_ATTEMPT): 1, plus one for every gang restart."""
