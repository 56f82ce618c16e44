"""Invalid FineTuneJob manifests, each with the field its error must name.

One table serves two tiers: the pure tests feed each manifest's spec to
parse_spec, the cluster tests send the manifest to the real API server
(`kubectl create --dry-run=server`). Both must reject it and name the same
field, which is what keeps the CRD and the model in agreement.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CRD_FILE = REPO / "crds" / "kubetune.io_finetunejobs.yaml"
SWEEP_CRD_FILE = REPO / "crds" / "kubetune.io_finetunesweeps.yaml"

Edit = Callable[[dict[str, Any]], None]


def example_jobs() -> dict[str, dict[str, Any]]:
    """Every FineTuneJob in examples/, by file name (other kinds, e.g. Secrets, left out)."""
    jobs = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "FineTuneJob":
                jobs[path.name] = doc
    return jobs


def base_job() -> dict[str, Any]:
    """A complete, valid job (the LoRA example) that each case breaks in one place."""
    return copy.deepcopy(example_jobs()["lora-chat-2x8.yaml"])


def _walk(manifest: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    *parents, leaf = path.split(".")
    node = manifest
    for key in parents:
        node = node.setdefault(key, {})
    return node, leaf


def put(path: str, value: Any) -> Edit:
    def edit(manifest: dict[str, Any]) -> None:
        node, leaf = _walk(manifest, path)
        node[leaf] = value

    return edit


def drop(path: str) -> Edit:
    def edit(manifest: dict[str, Any]) -> None:
        node, leaf = _walk(manifest, path)
        node.pop(leaf, None)

    return edit


def edits(*steps: Edit) -> Edit:
    def edit(manifest: dict[str, Any]) -> None:
        for step in steps:
            step(manifest)

    return edit


@dataclass(frozen=True)
class Invalid:
    """A manifest that must be rejected, and how.

    `field` is the path both the API server and parse_spec must name; `says` is
    part of parse_spec's message; `server_says` part of the API server's.
    """

    id: str
    edit: Edit
    field: str
    says: str
    server_says: str

    def manifest(self) -> dict[str, Any]:
        job = base_job()
        self.edit(job)
        return job


INVALID: list[Invalid] = [
    # Wrong types.
    Invalid(
        "micro-batch-is-text",
        put("spec.training.microBatchSize", "four"),
        "spec.training.microBatchSize",
        "must be an integer (got 'four')",
        "must be of type integer",
    ),
    Invalid(
        "packing-is-text",
        put("spec.training.packing", "yes"),
        "spec.training.packing",
        "must be true or false (got 'yes')",
        "must be of type boolean",
    ),
    Invalid(
        "nodes-is-fraction",
        put("spec.resources.nodes", 1.5),
        "spec.resources.nodes",
        "must be an integer (got 1.5)",
        "must be of type integer",
    ),
    Invalid(
        "model-is-string",
        put("spec.model", "s3://models/llama/"),
        "spec.model",
        "must be an object (got 's3://models/llama/')",
        "must be of type object",
    ),
    Invalid(
        "target-modules-is-string",
        put("spec.method.lora.targetModules", "q_proj"),
        "spec.method.lora.targetModules",
        "must be a list (got 'q_proj')",
        "must be of type array",
    ),
    Invalid(
        "env-is-string",
        put("spec.env", "HF_HOME=/cache"),
        "spec.env",
        "must be a list (got 'HF_HOME=/cache')",
        "must be of type array",
    ),
    # Negative or too small sizes.
    Invalid(
        "micro-batch-zero",
        put("spec.training.microBatchSize", 0),
        "spec.training.microBatchSize",
        "must be >= 1 (got 0)",
        "should be greater than or equal to 1",
    ),
    Invalid(
        "nodes-negative",
        put("spec.resources.nodes", -1),
        "spec.resources.nodes",
        "must be >= 1 (got -1)",
        "should be greater than or equal to 1",
    ),
    Invalid(
        "gpus-negative",
        put("spec.resources.gpusPerNode", -8),
        "spec.resources.gpusPerNode",
        "must be >= 0 (got -8)",
        "should be greater than or equal to 0",
    ),
    Invalid(
        "learning-rate-negative",
        put("spec.training.learningRate", -0.001),
        "spec.training.learningRate",
        "must be > 0 (got -0.001)",
        "should be greater than 0",
    ),
    Invalid(
        "checkpoint-every-zero-steps",
        put("spec.checkpoint.everySteps", 0),
        "spec.checkpoint.everySteps",
        "must be >= 1 (got 0)",
        "should be greater than or equal to 1",
    ),
    Invalid(
        "memory-negative",
        put("spec.resources.requests", {"memory": "-64Gi"}),
        "spec.resources.requests[memory]",
        "must be a non-negative Kubernetes quantity",
        "must be a non-negative Kubernetes quantity",
    ),
    Invalid(
        "seq-length-too-small",
        put("spec.training.maxSeqLength", 8),
        "spec.training.maxSeqLength",
        "must be >= 16 (got 8)",
        "should be greater than or equal to 16",
    ),
    Invalid(
        "backoff-limit-negative",
        put("spec.runPolicy.backoffLimit", -1),
        "spec.runPolicy.backoffLimit",
        "must be >= 0 (got -1)",
        "should be greater than or equal to 0",
    ),
    Invalid(
        "zero-stage-4",
        put("spec.deepspeed.zeroStage", 4),
        "spec.deepspeed.zeroStage",
        "must be <= 3 (got 4)",
        "should be less than or equal to 3",
    ),
    # Unknown enum values.
    Invalid(
        "method-qlora",
        put("spec.method.type", "qlora"),
        "spec.method.type",
        "must be 'full' or 'lora' (got 'qlora')",
        'Unsupported value: "qlora"',
    ),
    Invalid(
        "format-sharegpt",
        put("spec.dataset.format", "sharegpt"),
        "spec.dataset.format",
        "must be 'text', 'prompt-completion', 'chat', 'classification' or "
        "'image-classification' (got 'sharegpt')",
        'Unsupported value: "sharegpt"',
    ),
    Invalid(
        "precision-int8",
        put("spec.training.precision", "int8"),
        "spec.training.precision",
        "must be 'bf16', 'fp16' or 'fp32' (got 'int8')",
        'Unsupported value: "int8"',
    ),
    Invalid(
        "offload-nvme",
        put("spec.deepspeed.offload", "nvme"),
        "spec.deepspeed.offload",
        "must be 'none' or 'cpu' (got 'nvme')",
        'Unsupported value: "nvme"',
    ),
    Invalid(
        "scheduler-polynomial",
        put("spec.training.lrScheduler", "polynomial"),
        "spec.training.lrScheduler",
        "(got 'polynomial')",
        'Unsupported value: "polynomial"',
    ),
    Invalid(
        "pull-policy-sometimes",
        put("spec.imagePullPolicy", "Sometimes"),
        "spec.imagePullPolicy",
        "must be 'Always', 'IfNotPresent' or 'Never' (got 'Sometimes')",
        'Unsupported value: "Sometimes"',
    ),
    # Bad URIs.
    Invalid(
        "model-local-path",
        put("spec.model.uri", "/models/llama"),
        "spec.model.uri",
        "must be an s3://bucket/prefix, hf://org/name[@revision] or pvc://claim/path URI",
        "must be an s3://bucket/prefix, hf://org/name[@revision] or pvc://claim/path URI",
    ),
    Invalid(
        "model-hf-without-org",
        put("spec.model.uri", "hf://llama"),
        "spec.model.uri",
        "hf://org/name[@revision]",
        "hf://org/name[@revision]",
    ),
    Invalid(
        "train-https",
        put("spec.dataset.train", "https://example.com/train.jsonl"),
        "spec.dataset.train",
        "must be an s3://bucket/key, hf://datasets/org/name[@revision][/path] or pvc://claim/path",
        "must be an s3://bucket/key, hf://datasets/org/name[@revision][/path] or pvc://claim/path",
    ),
    Invalid(
        "output-on-the-hub",
        put("spec.output.uri", "hf://acme/support-bot"),
        "spec.output.uri",
        "must be an s3://bucket/prefix or pvc://claim/path URI",
        "must be an s3://bucket/prefix or pvc://claim/path URI",
    ),
    Invalid(
        "checkpoint-bucket-uppercase",
        put("spec.checkpoint.uri", "s3://Checkpoints/support-bot/"),
        "spec.checkpoint.uri",
        "must be an s3://bucket/prefix or pvc://claim/path URI",
        "must be an s3://bucket/prefix or pvc://claim/path URI",
    ),
    Invalid(
        "endpoint-without-scheme",
        put("spec.storage.endpoint", "minio:9000"),
        "spec.storage.endpoint",
        "must be an http:// or https:// URL (got 'minio:9000')",
        "must be an http:// or https:// URL",
    ),
    # Missing required fields.
    Invalid(
        "no-model",
        drop("spec.model"),
        "spec.model",
        "is required; see `kubectl explain ftj.spec.model`",
        "Required value",
    ),
    Invalid(
        "no-format",
        drop("spec.dataset.format"),
        "spec.dataset.format",
        "is required",
        "Required value",
    ),
    Invalid(
        "no-output-uri",
        drop("spec.output.uri"),
        "spec.output.uri",
        "is required",
        "Required value",
    ),
    Invalid(
        "neither-epochs-nor-max-steps",
        drop("spec.training.epochs"),
        "spec.training.epochs",
        "is required: set exactly one of epochs and maxSteps",
        "Required value: set exactly one of epochs and maxSteps",
    ),
    # Conflicting fields.
    Invalid(
        "epochs-and-max-steps",
        put("spec.training.maxSteps", 1000),
        "spec.training.maxSteps",
        "may not be set together with epochs",
        "may not be set together with epochs",
    ),
    Invalid(
        "lora-settings-on-full",
        put("spec.method.type", "full"),
        "spec.method.lora",
        "applies only to method type lora",
        "applies only to method type lora",
    ),
    Invalid(
        "global-batch-not-multiple",
        put("spec.training.globalBatchSize", 100),
        "spec.training.globalBatchSize",
        "must be a multiple of microBatchSize x resources.nodes x resources.gpusPerNode = 64 "
        "(got 100)",
        "must be a multiple of microBatchSize x resources.nodes x resources.gpusPerNode",
    ),
    Invalid(
        "warmup-steps-and-ratio",
        put("spec.training.warmupSteps", 100),
        "spec.training.warmupRatio",
        "may not be set together with warmupSteps",
        "may not be set together with warmupSteps",
    ),
    Invalid(
        "warmup-longer-than-run",
        edits(
            drop("spec.training.epochs"),
            drop("spec.training.warmupRatio"),
            put("spec.training.maxSteps", 100),
            put("spec.training.warmupSteps", 100),
        ),
        "spec.training.warmupSteps",
        "must be less than maxSteps",
        "must be less than maxSteps",
    ),
    Invalid(
        "eval-and-eval-split",
        put("spec.dataset.evalSplit", 0.1),
        "spec.dataset.evalSplit",
        "may not be set together with eval",
        "may not be set together with eval",
    ),
    Invalid(
        "eval-every-without-eval-data",
        drop("spec.dataset.eval"),
        "spec.training.evalEverySteps",
        "needs evaluation records",
        "needs evaluation records",
    ),
    Invalid(
        "format-not-for-task",
        put("spec.task", "sequence-classification"),
        "spec.dataset.format",
        "must suit spec.task",
        "must suit spec.task",
    ),
    Invalid(
        "metric-of-another-task",
        put("spec.evaluation", {"metric": "accuracy"}),
        "spec.evaluation.metric",
        "must be a metric of spec.task",
        "must be a metric of spec.task",
    ),
    Invalid(
        "metric-unknown",
        put("spec.evaluation", {"metric": "bleu"}),
        "spec.evaluation.metric",
        "(got 'bleu')",
        'Unsupported value: "bleu"',
    ),
    Invalid(
        "early-stopping-without-eval-data",
        edits(drop("spec.dataset.eval"), drop("spec.training.evalEverySteps"),
              put("spec.evaluation", {"earlyStopping": {"patience": 3}})),
        "spec.evaluation.earlyStopping",
        "needs evaluation records",
        "needs evaluation records",
    ),
    Invalid(
        "patience-zero",
        put("spec.evaluation", {"earlyStopping": {"patience": 0}}),
        "spec.evaluation.earlyStopping.patience",
        "must be >= 1 (got 0)",
        "should be greater than or equal to 1",
    ),
    Invalid(
        "select-best-without-eval-data",
        edits(drop("spec.dataset.eval"), drop("spec.training.evalEverySteps"),
              put("spec.output.select", "best")),
        "spec.output.select",
        "best needs evaluation records",
        "best needs evaluation records",
    ),
    Invalid(
        "freeze-with-lora",
        put("spec.method.freeze", {"bottomLayers": 2}),
        "spec.method.freeze",
        "applies only to method type full",
        "applies only to method type full",
    ),
    Invalid(
        "labels-for-chat",
        put("spec.dataset.labels", ["good", "bad"]),
        "spec.dataset.labels",
        "applies only to formats classification and image-classification",
        "applies only to formats classification and image-classification",
    ),
    Invalid(
        "labels-repeated",
        edits(put("spec.task", "sequence-classification"), put("spec.dataset.format", "classification"),
              put("spec.dataset.labels", ["good", "bad", "good"])),
        "spec.dataset.labels",
        "must not repeat an item (got 'good' twice)",
        "Duplicate value",
    ),
    Invalid(
        "label-field-for-chat",
        put("spec.dataset.fields", {"label": "sentiment"}),
        "spec.dataset.fields.label",
        "applies only to format classification and image-classification",
        "applies only to format classification and image-classification",
    ),
    Invalid(
        "augment-for-text",
        put("spec.dataset.augment", True),
        "spec.dataset.augment",
        "applies only to format image-classification",
        "applies only to format image-classification",
    ),
    Invalid(
        "merge-lora-on-full",
        edits(put("spec.method", {"type": "full"})),
        "spec.output.mergeLora",
        "applies only to method type lora",
        "applies only to method type lora",
    ),
    Invalid(
        "cpu-offload-with-zero-1",
        put("spec.deepspeed", {"zeroStage": 1, "offload": "cpu"}),
        "spec.deepspeed.offload",
        "may be cpu only with zeroStage 2 or 3",
        "may be cpu only with zeroStage 2 or 3",
    ),
    Invalid(
        "gpus-in-requests",
        put("spec.resources.requests", {"nvidia.com/gpu": 8}),
        "spec.resources.requests",
        "may not name nvidia.com/gpu; set resources.gpusPerNode instead",
        "may not name nvidia.com/gpu; set resources.gpusPerNode instead",
    ),
    Invalid(
        "chat-field-on-text-format",
        edits(put("spec.dataset.format", "text"), put("spec.dataset.fields", {"messages": "m"})),
        "spec.dataset.fields.messages",
        "applies only to format chat",
        "applies only to format chat",
    ),
    Invalid(
        "batch-size-in-deepspeed-config",
        put("spec.deepspeed.config", {"train_batch_size": 256}),
        "spec.deepspeed.config",
        "may not set train_batch_size",
        "may not set train_batch_size",
    ),
    Invalid(
        "mount-of-unknown-volume",
        put("spec.volumeMounts", [{"name": "scratch", "mountPath": "/scratch"}]),
        "spec.volumeMounts",
        "must each name a volume listed in spec.volumes",
        "must each name a volume listed in spec.volumes",
    ),
    Invalid(
        "env-twice",
        put("spec.env", [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
        "spec.env",
        "must not repeat a name (got 'A' twice)",
        "Duplicate value",
    ),
    Invalid(
        "env-value-and-value-from",
        put("spec.env", [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {}}}]),
        "spec.env[0].valueFrom",
        "may not be set together with value",
        "may not be set together with value",
    ),
    Invalid(
        "env-from-two-sources",
        put("spec.envFrom", [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]),
        "spec.envFrom[0].secretRef",
        "may not be set together with configMapRef",
        "may not be set together with configMapRef",
    ),
    Invalid(
        "pod-label-of-the-operator",
        put("spec.podMetadata", {"labels": {"team": "a", "kubetune.io/rank": "0"}}),
        "spec.podMetadata.labels",
        "may not name the operator's own keys: 'kubetune.io/rank'",
        "may not name the operator's own keys",
    ),
    Invalid(
        "pod-label-key-with-a-space",
        put("spec.podMetadata", {"labels": {"cost centre": "a"}}),
        "spec.podMetadata.labels",
        "has a key that is not a valid label key: 'cost centre'",
        "has a key that is not a valid label key",
    ),
    Invalid(
        "pod-label-value-with-a-slash",
        put("spec.podMetadata", {"labels": {"team": "a/b"}}),
        "spec.podMetadata.labels[team]",
        "must be empty or at most 63 letters",
        "must be empty or at most 63 letters",
    ),
    Invalid(
        "pod-annotation-key-with-two-slashes",
        put("spec.podMetadata", {"annotations": {"example.com/a/b": "x"}}),
        "spec.podMetadata.annotations",
        "has a key that is not a valid annotation key: 'example.com/a/b'",
        "has a key that is not a valid annotation key",
    ),
    Invalid(
        "pod-annotation-of-the-operator",
        put("spec.podMetadata", {"annotations": {"example.com/owner": "ada", "kubetune.io/config": "{}"}}),
        "spec.podMetadata.annotations",
        "may not name kubetune.io/config",
        "may not name kubetune.io/config",
    ),
    Invalid(
        "secret-name-with-capitals",
        put("spec.storage.credentialsSecret", "S3_Credentials"),
        "spec.storage.credentialsSecret",
        "must be a Kubernetes object name",
        "must be a Kubernetes object name",
    ),
    # Unknown fields.
    Invalid(
        "snake-case-field",
        put("spec.training.micro_batch_size", 4),
        "spec.training.micro_batch_size",
        "is not a field of spec.training; remove it (did you mean microBatchSize?",
        'unknown field "spec.training.micro_batch_size"',
    ),
    Invalid(
        "misspelt-section",
        put("spec.outptu", {"uri": "s3://models/x/"}),
        "spec.outptu",
        "is not a field of spec; remove it (did you mean output?)",
        'unknown field "spec.outptu"',
    ),
]
