"""One fine-tuning run, top to bottom: setup -> resume -> train -> export -> cleanup.

Shaped like a torchtune recipe. It wires the pieces together and holds no
logic of its own beyond the order of things; each step is a call into the
module that owns it. `run` takes the FineTuneJob itself (the spec, parsed by
kubetune_api, is the one configuration) and the RunContext of facts known only
at run time (the staged model folder, the output folder, rank and attempt).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kubetune_api import FineTuneJob
from kubetune_trainer.callbacks import Callback, CallbackList, LogLines
from kubetune_trainer.checkpoint import TrainState, load_checkpoint, seed_all
from kubetune_trainer.context import RunContext
from kubetune_trainer.data import BatchLayout, Datasets, build_datasets, cached_datasets
from kubetune_trainer.data.cache import fetch_entry
from kubetune_trainer.data.sampler import steps_per_epoch
from kubetune_trainer.distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    broadcast_object,
    destroy_distributed,
    init_distributed,
)
from kubetune_trainer.ds_config import build_ds_config
from kubetune_trainer.engine import create_engine, lr_schedule
from kubetune_trainer.errors import EXIT_FAILED, CheckpointError, ConfigError, TrainerError
from kubetune_trainer.export import export_model, gather_state_dict
from kubetune_trainer.history import EvaluationHistory
from kubetune_trainer.jobfile import job_record
from kubetune_trainer.logs import log_event, quiet_libraries
from kubetune_trainer.loop import LoopData, LoopPlan, StopRequested, train
from kubetune_trainer.manifest import MANIFEST, CheckpointManifest, step_folder
from kubetune_trainer.modeling import (
    check_task_head,
    count_parameters,
    load_model,
    load_preprocessor,
    max_positions,
)
from kubetune_trainer.output import publish_model
from kubetune_trainer.progress import ProgressReporter, kube_status_patcher
from kubetune_trainer.resume import download_checkpoint, newest_committed, remove_uncommitted
from kubetune_trainer.selection import MetricTracker
from kubetune_trainer.settings import Settings
from kubetune_trainer.staging import UriFiles, node_lock, path_slug
from kubetune_trainer.stopping import STOPPED_MESSAGE_PREFIX, Stopped, StopSignal
from kubetune_trainer.storage import Store, open_store, retry
from kubetune_trainer.streaming import CheckpointCommitter, CheckpointUploader
from kubetune_trainer.watchdog import Stall, Watchdog


class UploadFailedElsewhere(TrainerError):
    """Another rank could not store its part of the final checkpoint."""

    exit_code = EXIT_FAILED


def check_world(job: FineTuneJob, world: DistEnv) -> None:
    """The processes torchrun started are the ones the spec asks for (batch sizes depend on it)."""
    resources = job.spec.resources
    if world.world_size != job.spec.world_size:
        raise ConfigError(
            f"{world.world_size} training process(es) were started, but spec.resources asks for "
            f"{resources.nodes} node(s) x {resources.processes_per_node} process(es) = {job.spec.world_size}; "
            "start torchrun with --nnodes and --nproc-per-node to match (the operator does)")


def run(job: FineTuneJob, context: RunContext, *, settings: Settings | None = None,
        callbacks: Sequence[Callback] = (), watchdog: Watchdog | None = None) -> Path:
    """Fine-tune as `job` says; write the model spec.output.select picks (the best checkpoint or the
    last step) to context.output_dir and publish it to spec.output.uri; returns that directory.
    `callbacks` run on every rank; `watchdog` (armed with the start-up deadline) is re-armed by
    progress and disarmed at the end."""
    settings = settings or Settings()
    spec, training, env = job.spec, job.spec.training, context.world
    record = job_record(job)  # stored in every checkpoint and the output's manifest
    quiet_libraries()
    check_world(job, env)
    if training.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("spec.training.precision fp16 is not supported by DeepSpeed on CPU; use bf16 or fp32")
    # Preprocessor and data first, before the process group: bad input fails within seconds, the same
    # way on every rank.
    check_task_head(context.model_dir, spec)
    preprocessor = load_preprocessor(context.model_dir, spec)
    data = load_data(job, context, preprocessor, settings)
    text = spec.task != "image-classification"
    policy = spec.run_policy
    # Collectives time out only after the watchdog would have fired: a hang is reported as one.
    init_distributed(env, timeout_seconds=max(policy.startup_deadline_seconds, policy.progress_deadline_seconds) + 300)
    closing: list[Any] = []  # threads and stores to stop, newest first
    try:
        run_id = broadcast_object(uuid.uuid4().hex if env.is_main else "", env)
        if env.is_main:  # every rank is in the process group: the rendezvous is done
            log_event("rendezvous", world_size=env.world_size, attempt=context.attempt,
                      backend=str(torch.distributed.get_backend()))
        seed_all(training.seed)  # identical on every rank: LoRA adapters and new heads start the same everywhere
        model = load_model(context.model_dir, spec, labels=data.labels,
                           pad_token_id=int(preprocessor.pad_token_id) if text else None)
        if env.is_main:
            log_event("model_loaded", path=context.model_dir, task=spec.task, method=spec.method.type,
                      labels=data.labels)
        staging = settings.scratch_dir / "checkpoints" / path_slug(spec.checkpoint_uri) / f"rank-{env.rank:05d}"
        plan = LoopPlan.for_spec(spec, steps_per_epoch(len(data.train), BatchLayout.for_spec(spec)), str(staging))
        trainable, total = count_parameters(model)
        if env.is_main:
            log_event("setup", world_size=env.world_size, train_records=data.train_records,
                      train_sequences=len(data.train), eval_records=data.eval_records,
                      eval_sequences=len(data.eval), dropped_sequences=data.dropped,
                      first_dropped=data.first_dropped, steps_per_epoch=plan.steps_per_epoch,
                      total_steps=plan.total_steps, gradient_accumulation=plan.layout.grad_accum,
                      trainable_params=trainable, params=total,
                      zero_stage=spec.deepspeed.zero_stage, precision=training.precision)
        engine = create_engine(model, build_ds_config(spec), lr_schedule(training, plan.total_steps),
                               training.weight_decay)

        hooks: list[Callback] = [LogLines(training.log_every_steps)] if env.is_main else []
        if watchdog is not None:
            hooks.append(watchdog)
        if settings.stall_at_step is not None and env.rank == settings.stall_rank:
            hooks.append(Stall(settings.stall_at_step))
        reporter = None
        if env.is_main and (patcher := kube_status_patcher(settings)) is not None:
            reporter = ProgressReporter(patcher, settings.status_interval_seconds)
            closing.append(reporter)
            hooks.append(reporter)
            reporter.on_setup(spec.metric if data.eval else None, trainable, total)

        store = open_store(spec.checkpoint_uri, spec.storage, settings)
        closing.append(store)
        shutil.rmtree(staging, ignore_errors=True)  # leftovers of an earlier container on this disk
        start = _resume(engine, store, env, staging / "resume", settings, reporter) or TrainState()
        barrier()  # nobody uploads before rank 0 has removed the uncommitted folders
        committer = None
        if env.is_main:
            history = EvaluationHistory(store, staging, start_step=start.step,
                                        give_up_after=settings.upload_give_up_seconds)
            closing.append(history)
            hooks.append(history)
            committer = CheckpointCommitter(
                store, world_size=env.world_size, run_id=run_id, keep_last=spec.checkpoint.keep_last,
                config=record, give_up_after=settings.upload_give_up_seconds,
                on_commit=reporter.on_commit if reporter else None)
            closing.append(committer)
            hooks.append(committer)  # before the uploader: it expects the step first
        uploader = CheckpointUploader(store, rank=env.rank, world_size=env.world_size, run_id=run_id,
                                      give_up_after=settings.upload_give_up_seconds)
        closing.append(uploader)
        hooks.append(uploader)
        if start.step == 0:
            seed_all(training.seed + env.rank)  # different dropout masks on different ranks

        early = spec.evaluation.early_stopping
        patience, min_delta = (early.patience, early.min_delta) if early else (None, 0.0)
        tracker = (MetricTracker.from_state(start.selection, patience=patience, min_delta=min_delta)
                   if start.selection else MetricTracker(spec.metric, patience, min_delta))
        stop = StopSignal().install()  # from here on, SIGTERM stops at a step boundary with a commit
        try:
            final = train(engine, LoopData(data.train, data.eval, data.collate, data.labels), plan, env=env,
                          callbacks=CallbackList([*hooks, *callbacks]), start=start, tracker=tracker,
                          config=record, stop_requested=lambda: stop.requested)
        except StopRequested as request:
            raise _stopped(request, stop, uploader, committer, env, settings, watchdog, policy) from None

        if watchdog is not None:  # the export and the last uploads retry storage for up to the give-up time
            watchdog.arm("export", policy.progress_deadline_seconds + settings.upload_give_up_seconds)
        selected = None
        if spec.output_select == "best" and tracker.best_step is not None and tracker.best_step != final.step:
            # The best checkpoint's weights, not the last step's: it was pinned, so it is stored.
            _drain_everywhere(uploader, env)
            if committer is not None and tracker.best_step > start.step:  # else an earlier attempt committed it
                committer.wait_committed(tracker.best_step, timeout=settings.upload_give_up_seconds, exactly=True)
            barrier()
            _load_committed(engine, store, tracker.best_step, env, staging / "best", settings)
        model_step = tracker.best_step if spec.output_select == "best" and tracker.best_step else final.step
        if spec.output_select == "best" and tracker.best_step:
            selected = {"select": "best", "metric": tracker.metric, "value": tracker.best_value}

        # Export while the last checkpoint uploads: gathering is collective under ZeRO-3.
        state = gather_state_dict(engine.module, env.is_main)
        output = context.output_dir
        if env.is_main:
            merged = spec.method.type == "lora" and spec.output.merge_lora
            export_model(engine.module, state, output_dir=str(output), preprocessor=preprocessor,
                         base_model_path=context.model_dir, merge_lora=merged, task=spec.task)
            log_event("exported", path=str(output), method=spec.method.type, merged=merged, step=model_step,
                      **({"selected": selected} if selected else {}))
            out_store = open_store(spec.output.uri, spec.storage, settings)
            closing.append(out_store)
            uri = publish_model(output, out_store, step=model_step, config=record, selected=selected,
                                give_up_after=settings.upload_give_up_seconds)
            if reporter:
                reporter.on_output(uri)
        del state
        # The one place training waits for storage: the final checkpoint must be committed.
        _drain_everywhere(uploader, env)
        if committer is not None and final.step > start.step:
            committer.wait_committed(final.step, timeout=settings.upload_give_up_seconds)
        barrier()
        return output
    finally:
        if watchdog is not None:
            watchdog.disarm()
        for item in reversed(closing):
            item.close()
        destroy_distributed()


def load_data(job: FineTuneJob, context: RunContext, preprocessor: Any, settings: Settings) -> Datasets:
    """The training and eval samples: the preflight's tokenized data set from the cache (fetched once per
    node), or, without one, spec.dataset read and tokenized here."""
    spec = job.spec
    if settings.data_cache_key:
        key = settings.data_cache_key
        store = open_store(spec.cache_uri, spec.storage, settings)
        try:
            with node_lock(settings.scratch_dir / "data-cache" / ".lock"):
                entry, folder = fetch_entry(store, key, settings.scratch_dir / "data-cache" / key,
                                            give_up_after=min(settings.upload_give_up_seconds, 600))
        finally:
            store.close()
        if context.world.is_main:
            log_event("data_loaded", source="cache", uri=f"{spec.cache_uri}{key}/",
                      train_sequences=entry.samples("train"), eval_sequences=entry.samples("eval"))
        return cached_datasets(entry, folder, preprocessor)
    text = spec.task != "image-classification"
    data = build_datasets(spec.dataset, spec.training, preprocessor, task=spec.task,
                          files=UriFiles(settings, spec.storage),
                          max_positions=max_positions(context.model_dir, spec.model.trust_remote_code) if text else None)
    if context.world.is_main:
        log_event("data_loaded", source="tokenized", train_sequences=len(data.train), eval_sequences=len(data.eval))
    return data


def _load_committed(engine: Any, store: Store, step: int, env: DistEnv, into: Path, settings: Settings) -> None:
    """Load the committed checkpoint of `step` into the engine, on every rank."""
    give_up = settings.upload_give_up_seconds
    data = retry(lambda: store.get_bytes(f"{step_folder(step)}/{MANIFEST}"), what=f"reading {store.uri}",
                 give_up_after=give_up)
    if data is None:
        raise CheckpointError(f"{store.uri}: the best checkpoint {step_folder(step)} is not committed")
    point = download_checkpoint(store, CheckpointManifest.from_json(data), rank=env.rank,
                                world_size=env.world_size, into=into, give_up_after=give_up)
    load_checkpoint(engine, point.folder, env)
    shutil.rmtree(into, ignore_errors=True)
    if env.is_main:
        log_event("best_loaded", step=step)


def _resume(engine: Any, store: Store, env: DistEnv, into: Path, settings: Settings,
            reporter: ProgressReporter | None) -> TrainState | None:
    """Load the newest committed checkpoint, after rank 0 removed the uncommitted ones."""
    give_up = settings.upload_give_up_seconds
    step = -1
    if env.is_main:
        retry(lambda: remove_uncommitted(store), what=f"cleaning {store.uri}", give_up_after=give_up)
        manifest = retry(lambda: newest_committed(store), what=f"listing {store.uri}", give_up_after=give_up)
        step = manifest.step if manifest else -1
    step = broadcast_object(step, env)  # every rank resumes from the same checkpoint
    if step < 0:
        return None
    manifest = retry(lambda: newest_committed(store), what=f"listing {store.uri}", give_up_after=give_up)
    if manifest is None or manifest.step != step:
        raise ConfigError(f"{store.uri}: the newest committed checkpoint changed while resuming; is another "
                          "run writing checkpoints to the same checkpoint.uri?")
    point = download_checkpoint(store, manifest, rank=env.rank, world_size=env.world_size, into=into,
                                give_up_after=give_up)
    state = load_checkpoint(engine, point.folder, env)
    shutil.rmtree(into, ignore_errors=True)
    if env.is_main:
        uri = f"{store.uri.rstrip('/')}/step-{step:08d}/"
        log_event("resumed", step=state.step, epoch=state.position.epoch,
                  step_in_epoch=state.position.step_in_epoch, uri=uri)
        if reporter is not None:
            reporter.on_resume(step, uri, manifest.committed_at)
    return state


def _stopped(request: StopRequested, stop: StopSignal, uploader: CheckpointUploader,
             committer: CheckpointCommitter | None, env: DistEnv, settings: Settings, watchdog: Watchdog | None,
             policy: Any) -> Stopped:
    """Every rank stopped after the same step: upload and commit it, then say so."""
    step = request.state.step
    why = f"by {stop.signal_name}" if stop.requested else "by another rank's SIGTERM"
    if watchdog is not None:  # uploads retry storage for up to the give-up time
        watchdog.arm("stop", policy.progress_deadline_seconds + settings.upload_give_up_seconds)
    if not request.saved:
        return Stopped(f"{STOPPED_MESSAGE_PREFIX} {step} {why}: no checkpoint (spec.checkpoint.everySteps is 0)")
    _drain_everywhere(uploader, env)
    if committer is not None:
        committer.wait_committed(step, timeout=settings.upload_give_up_seconds, exactly=True)
    barrier()
    if env.is_main:
        log_event("stopped", step=step, signal=stop.signal_name or None, checkpoint=step_folder(step))
    return Stopped(f"{STOPPED_MESSAGE_PREFIX} {step} {why}: checkpoint {step_folder(step)} committed")


def _drain_everywhere(uploader: CheckpointUploader, env: DistEnv) -> None:
    """Wait for this rank's uploads; fail on every rank if any rank's uploads failed."""
    failure: TrainerError | None = None
    try:
        uploader.drain()
    except TrainerError as e:
        failure = e
    succeeded = all_reduce_sum([0.0 if failure else 1.0], env)[0]
    if failure is not None:
        raise failure
    if succeeded < env.world_size:
        raise UploadFailedElsewhere("another rank could not store its checkpoint files; see that rank's log")
