"""Structured log lines: one JSON object per line on stdout, from rank 0 only.

JSON lines are what log pipelines (Loki, Cloud Logging, `jq`) parse without
regexes, and what the tests read to check that loss goes down. Library chatter
(DeepSpeed's INFO lines, progress bars) is turned down so these lines stand out.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any


def log_event(event: str, **fields: Any) -> None:
    """Print {"event": ..., "time": ..., **fields} as one line (call on rank 0 only)."""
    line = {"event": event, "time": round(time.time(), 3), **fields}
    print(json.dumps(line, default=str), file=sys.stdout, flush=True)


def parse_log_lines(text: str) -> list[dict[str, Any]]:
    """The events `log_event` printed, from a log that may hold other lines too (e.g. `kubectl logs`)."""
    events = []
    for line in text.splitlines():
        if line.startswith('{"event"'):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # cut off, e.g. by a killed process
                continue
    return events


def quiet_libraries() -> None:
    """Keep DeepSpeed, transformers and peft to warnings; no progress bars in pod logs."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("DeepSpeed", "deepspeed", "transformers", "peft", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a trainer dependency
        pass
