"""The FineTuneJob spec -> the trainer's own TrainConfig. The only place that reads the spec.

The spec arrives parsed and validated by the shared model (kubetune_api), the
same parse the operator and `kubectl apply` apply, so nothing here re-checks
it; this maps its fields onto the trainer's config. Locations stay URIs (s3://,
pvc://, hf://datasets/): the storage layer reads them where they are. Only the
model, which transformers wants as a folder, and the exported output arrive as
local paths the caller staged.
"""

from __future__ import annotations

from kubetune_api import FineTuneJobSpec
from kubetune_trainer.config import (
    ALL_LINEAR,
    CheckpointConfig,
    DataConfig,
    DeepSpeedSettings,
    LoraConfig,
    MethodConfig,
    ModelConfig,
    OutputConfig,
    StorageConfig,
    TrainConfig,
    TrainingConfig,
)


def train_config_from_spec(spec: FineTuneJobSpec, *, model_dir: str, output_dir: str) -> TrainConfig:
    """Translate a parsed spec; `model_dir` holds the staged model, `output_dir` receives the export."""
    dataset, method, training = spec.dataset, spec.method, spec.training
    lora = method.effective_lora
    return TrainConfig(
        model=ModelConfig(path=model_dir, gradient_checkpointing=method.gradient_checkpointing,
                          trust_remote_code=spec.model.trust_remote_code),
        data=DataConfig(
            train=dataset.train,
            format=dataset.format,
            eval=dataset.eval,
            eval_fraction=dataset.eval_split or 0.0,
            max_seq_length=training.max_seq_length,
            packing=training.packing,
            fields=dataset.record_keys(),
        ),
        method=MethodConfig(
            type=method.type,
            lora=LoraConfig(
                r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                target_modules=tuple(lora.target_modules or (ALL_LINEAR,)),
            ) if lora else LoraConfig(),
        ),
        training=TrainingConfig(
            # With maxSteps set, epochs is not used; the trainer's default keeps its own check happy.
            epochs=training.epochs or 1,
            max_steps=training.max_steps,
            learning_rate=training.learning_rate,
            lr_scheduler=training.lr_scheduler,
            warmup_steps=training.warmup_steps or 0,
            warmup_ratio=training.warmup_ratio or 0.0,
            weight_decay=training.weight_decay,
            max_grad_norm=training.gradient_clipping,
            micro_batch_size=training.micro_batch_size,
            global_batch_size=training.global_batch_size,
            precision=training.precision,
            seed=training.seed,
            eval_every_steps=training.eval_every_steps or 0,
            eval_at_start=training.eval_every_steps is not None,  # the base model's loss, to compare
            log_every_steps=training.log_every_steps,
        ),
        deepspeed=DeepSpeedSettings(
            zero_stage=spec.deepspeed.zero_stage,  # type: ignore[arg-type]  # 0..3, checked by the spec
            offload=spec.deepspeed.offload,
            config=dict(spec.deepspeed.config or {}),
        ),
        checkpoint=CheckpointConfig(
            uri=spec.checkpoint_uri,
            every_steps=spec.checkpoint.every_steps,
            keep_last=spec.checkpoint.keep_last,
        ),
        output=OutputConfig(dir=output_dir, uri=spec.output.uri, merge_lora=spec.output.merge_lora),
        storage=storage_config(spec),
    )


def storage_config(spec: FineTuneJobSpec) -> StorageConfig:
    """How the trainer reaches the store of the spec's s3:// URIs."""
    return StorageConfig(endpoint=spec.storage.endpoint, region=spec.storage.region,
                         addressing_style=spec.storage.addressing_style)
