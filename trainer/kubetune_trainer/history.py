"""The evaluation history beside the checkpoints: metrics.jsonl and TensorBoard event files.

Rank 0 appends one JSON line per evaluation to <checkpoint.uri>/metrics.jsonl
(every metric; for classifiers the per-class figures and the confusion matrix;
the best so far), and writes TensorBoard event files (train loss, learning
rate, throughput, every evaluation metric) under <checkpoint.uri>/tensorboard/,
so `tensorboard --logdir` on a synced copy shows the run. An object store
cannot append, so metrics.jsonl is written whole after each evaluation; a
resumed attempt keeps the lines up to the step it resumed from, and its
TensorBoard file tells TensorBoard to drop the older files' later steps
(purge_step). Uploads go from a background thread and never hold training up.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kubetune_trainer.background import BackgroundWorker
from kubetune_trainer.callbacks import Callback, StepMetrics
from kubetune_trainer.errors import StorageError, StorageUnavailable
from kubetune_trainer.logs import log_event
from kubetune_trainer.metrics import Evaluation
from kubetune_trainer.storage import Store, retry

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class Publisher(BackgroundWorker):
    """Puts the newest content of each key into the store, in the background, best effort."""

    name = "history"

    def __init__(self, store: Store, give_up_after: float) -> None:
        super().__init__()
        self.store, self.give_up_after = store, give_up_after
        self._pending: dict[str, bytes] = {}
        self.start()

    def put(self, key: str, data: bytes) -> None:
        with self._cond:
            self._pending[key] = data
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self.stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                key, data = self._pending.popitem()
            try:
                retry(lambda key=key, data=data: self.store.put_bytes(key, data),  # type: ignore[misc]
                      what=f"writing {key}", give_up_after=self.give_up_after)
            except (StorageError, StorageUnavailable) as e:  # the next evaluation writes it again
                log_event("history_write_failed", key=key, error=str(e))

    def close(self, timeout: float = 30.0) -> None:
        """Write what is pending, then stop."""
        super().close(timeout)


class EvaluationHistory(Callback):
    """metrics.jsonl and TensorBoard event files (register on rank 0 only)."""

    def __init__(self, store: Store, scratch: Path, *, start_step: int, give_up_after: float) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.publisher = Publisher(store, give_up_after)
        previous = retry(lambda: store.get_bytes(METRICS_FILE), what=f"reading {METRICS_FILE}",
                         give_up_after=give_up_after) or b""
        self.lines = [line for line in previous.decode().splitlines(keepends=True)
                      if line.strip() and json.loads(line)["step"] <= start_step]
        self.folder = scratch / TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=start_step + 1 if start_step else None)

    def on_step_end(self, metrics: StepMetrics) -> None:
        self.writer.add_scalar("train/loss", metrics.loss, metrics.step)
        self.writer.add_scalar("train/learning_rate", metrics.learning_rate, metrics.step)
        self.writer.add_scalar("train/samples_per_second", metrics.samples_per_second, metrics.step)

    def on_eval_end(self, evaluation: Evaluation, best: tuple[int, float] | None) -> None:
        record: dict[str, Any] = {"step": evaluation.step, "time": round(time.time(), 3),
                                  "metrics": evaluation.metrics, **evaluation.details}
        if best is not None:
            record["best"] = {"step": best[0], "value": best[1]}
        self.lines.append(json.dumps(record) + "\n")
        self.publisher.put(METRICS_FILE, "".join(self.lines).encode())
        for name, value in evaluation.metrics.items():
            self.writer.add_scalar(f"eval/{name}", value, evaluation.step)
        self._publish_tensorboard()

    def _publish_tensorboard(self) -> None:
        self.writer.flush()
        for path in sorted(self.folder.glob("events.out.tfevents.*")):
            self.publisher.put(f"{TENSORBOARD_DIR}/{path.name}", path.read_bytes())

    def close(self) -> None:
        self.writer.close()
        self._publish_tensorboard()
        self.publisher.close()
