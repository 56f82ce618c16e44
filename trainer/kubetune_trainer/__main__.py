"""`python -m kubetune_trainer [CONFIG]`: run one fine-tuning job under torchrun.

CONFIG (the first argument, or $KUBETUNE_CONFIG) is a FineTuneJob manifest: the
operator's config.json, or any manifest a developer runs by hand (see
jobfile.py). Bad
input ends with one line on stderr, in the pod's termination log
(/dev/termination-log, when it exists) and exit code 2; storage that stays
unreachable exits 1 the same way; a process that stops making progress is ended
by its watchdog (watchdog.py) with exit code 3 and a "Hang: ..." line; anything
else is a bug and keeps its traceback (its last line goes to the termination log).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubetune_api import FineTuneJob
    from kubetune_trainer.settings import Settings
    from kubetune_trainer.watchdog import Watchdog

PREFIX = "kubetune-trainer: error: "


def write_termination_message(path: Path, message: str) -> None:
    """Tell Kubernetes why the container failed; the first failing process of a pod wins."""
    try:
        if path.is_file() and os.access(path, os.W_OK) and path.stat().st_size == 0:
            path.write_text(message[:4000])  # the kubelet keeps at most 4096 bytes
    except OSError:
        pass


Body = Callable[[str, "Settings", Callable[[str], None]], None]
"""What a command does with its config path, settings and a way to write the termination message."""


def main(argv: list[str] | None = None, body: Body | None = None) -> int:
    """Run `body` (default: training) and turn its failure into a one-line message and an exit code."""
    from kubetune_trainer.errors import EXIT_FAILED, TrainerError
    from kubetune_trainer.settings import TERMINATION_LOG, settings_from_env

    termination_log = Path(os.environ.get("KUBETUNE_TERMINATION_LOG") or TERMINATION_LOG)

    def fail(message: str, code: int) -> int:
        line = " ".join(message.split())  # one line, whatever the message held
        print(PREFIX + line, file=sys.stderr, flush=True)
        write_termination_message(termination_log, line)
        return code

    args = sys.argv[1:] if argv is None else argv
    try:
        settings = settings_from_env()
        path = args[0] if args else settings.config_path
        if not path:
            return fail("no config; pass its path or set KUBETUNE_CONFIG", 2)
        (body or _run)(path, settings, lambda line: write_termination_message(termination_log, line))
    except TrainerError as e:
        return fail(str(e), e.exit_code)
    except Exception as e:
        traceback.print_exc()
        return fail(crash_reason(e), EXIT_FAILED)
    return 0


# What gloo and NCCL say when a peer process went away: not a bug here, the gang restarts.
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def crash_reason(error: Exception) -> str:
    """One line for an unexpected exception."""
    first = (str(error).splitlines() or [""])[0]
    if any(text in first for text in _PEER_LOST):
        return f"lost contact with another training process (it failed or was killed; see its log): {first}"
    return f"{type(error).__name__}: {first} (a bug: see the log for the traceback)"


def _run(path: str, settings: Settings, terminate: Callable[[str], None]) -> None:
    from kubetune_trainer.jobfile import load_job, redacted
    from kubetune_trainer.logs import log_event

    job = load_job(path, settings)  # before the heavy imports: a bad spec fails in a second
    from kubetune_trainer.distributed import process_world

    spec, world = job.spec, process_world()
    watchdog = _watchdog(job, world.rank, settings, terminate)  # from here on, start-up counts
    from kubetune_trainer.context import RunContext
    from kubetune_trainer.recipe import check_world, run
    from kubetune_trainer.staging import check_storage, check_writable, stage_model

    if world.is_main:
        log_event("config", job=job.metadata.identity(), attempt=settings.attempt,
                  spec=redacted(spec.to_manifest()))
    check_world(job, world)
    # Cheap checks first: wrong credentials or a missing bucket fail before any model is loaded.
    check_storage([spec.model.uri, spec.dataset.train, spec.dataset.eval, spec.checkpoint_uri, spec.output.uri],
                  settings, spec.storage)
    check_writable(spec.checkpoint_uri, settings)
    check_writable(spec.output.uri, settings)
    context = RunContext(model_dir=stage_model(spec.model.uri, settings, spec.storage),
                         output_dir=settings.scratch_dir / "output" / (job.metadata.name or "standalone"),
                         world=world, attempt=settings.attempt)
    run(job, context, settings=settings, watchdog=watchdog)


def _watchdog(job: FineTuneJob, rank: int, settings: Settings, terminate: Callable[[str], None]) -> Watchdog:
    """This process's hang watchdog, armed with the start-up deadline."""
    from kubetune_trainer.watchdog import Watchdog

    spec = job.spec

    def report(key: str, text: str) -> None:
        from kubetune_trainer.storage import open_store

        store = open_store(spec.checkpoint_uri, spec.storage, settings)
        try:
            store.put_bytes(key, text.encode())
        finally:
            store.close()

    return Watchdog(startup_seconds=spec.run_policy.startup_deadline_seconds,
                    progress_seconds=spec.run_policy.progress_deadline_seconds, rank=rank, attempt=settings.attempt,
                    report=report, terminate=terminate, where=spec.checkpoint_uri).start()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        # Do not wait for background transfers or library exit hooks: the next attempt resumes.
        os._exit(code)
    sys.exit(0)
