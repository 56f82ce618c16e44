"""Where a job's model and data come from, and where its checkpoints and result go.

Part of the FineTuneJob spec (see spec.py): the model, the dataset, checkpoints,
the output, and how to reach the S3-compatible store that s3:// URIs name.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from pydantic.alias_generators import to_camel

from .base import NOT_SPACE, ApiModel, EmptyMeansUnset, Matches, Rule, UniqueItems
from .kube import ObjectName
from .uris import DataUri, ModelUri, OptionalDataUri, OptionalStoreUri, StoreUri

DatasetFormat = Literal["text", "prompt-completion", "chat", "classification", "image-classification"]
AddressingStyle = Literal["auto", "path", "virtual"]
OutputSelect = Literal["best", "last"]

RecordKey = Annotated[str, Field(min_length=1, max_length=128)]


class ModelSpec(ApiModel):
    """The pretrained model to start from."""

    uri: ModelUri = Field(
        description="Where the pretrained model is: a folder in transformers' save_pretrained "
        "layout (config.json, safetensors weights, tokenizer files) as s3://bucket/prefix/ or "
        "pvc://claim/path, or a Hugging Face Hub model repository as hf://org/name[@revision] "
        "(pin a commit hash or tag after @ for reproducible runs; unpinned: the main branch). "
        "Required."
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run Python code shipped in the model repository (transformers' "
        "trust_remote_code), needed by some architectures. Only for models you trust.",
    )


class DatasetFields(ApiModel):
    """Names of the record keys the trainer reads, when they differ from the usual ones."""

    text: RecordKey | None = Field(
        default=None,
        description='Key holding the text, for formats text and classification. Unset: "text".',
    )
    prompt: RecordKey | None = Field(
        default=None,
        description='Key holding the prompt, for format prompt-completion. Unset: "prompt".',
    )
    completion: RecordKey | None = Field(
        default=None,
        description="Key holding the completion, for format prompt-completion. "
        'Unset: "completion".',
    )
    messages: RecordKey | None = Field(
        default=None,
        description="Key holding the list of {role, content} messages, for format chat. "
        'Unset: "messages".',
    )
    text_pair: RecordKey | None = Field(
        default=None,
        description="Key holding the second text of a sentence pair (e.g. a hypothesis after a "
        'premise), for format classification; records without it are single texts. Unset: "text_pair".',
    )
    label: RecordKey | None = Field(
        default=None,
        description="Key holding the label (a string or an integer), for formats classification and "
        'image-classification. Unset: "label".',
    )
    image: RecordKey | None = Field(
        default=None,
        description="Key holding the image, for format image-classification: its encoded bytes "
        "(PNG, JPEG, ...), an object with such `bytes` (the Hugging Face datasets layout), or a "
        'path relative to the dataset file. Unset: "image".',
    )


_KEYS_BY_FORMAT: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "chat": ("messages",),
    "classification": ("text", "text_pair", "label"),
    "image-classification": ("image", "label"),
}
CLASSIFICATION_FORMATS = ("classification", "image-classification")


def _formats_of(key: str) -> list[str]:
    return [fmt for fmt, keys in _KEYS_BY_FORMAT.items() if key in keys]


def _fields_rule(key: str) -> Rule:
    formats = _formats_of(key)
    camel = to_camel(key)
    return Rule(
        field=f"fields.{camel}",
        cel=f"!has(self.fields) || !has(self.fields.{camel}) || self.format in {formats!r}".replace(
            '"', "'"
        ),
        message=f"applies only to format {' and '.join(formats)}; remove it or change dataset.format",
        holds=lambda d: d.fields is None or getattr(d.fields, key) is None or d.format in formats,
        reason="FieldValueForbidden",
    )


class DatasetSpec(ApiModel):
    """The records to train and evaluate on."""

    train: DataUri = Field(
        description="Training records: a JSON Lines (.jsonl) or Parquet (.parquet) file, a "
        "folder or prefix holding such files, or a Hub dataset repository "
        "(hf://datasets/org/name[@revision][/path]). Required."
    )
    eval: OptionalDataUri = Field(
        default=None,
        description="Evaluation records, in the same form and format as train. May not be set "
        "together with evalSplit. Unset: no evaluation set unless evalSplit is given.",
    )
    eval_split: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Fraction (0 to 1, exclusive) of the training records held out for "
        "evaluation, e.g. 0.05, drawn with training.seed. May not be set together with eval. "
        "Unset: nothing held out.",
    )
    format: DatasetFormat = Field(
        description="How a record becomes a training example. For task causal-lm: text (one "
        "text field, loss on every token), prompt-completion (loss on the completion only) or "
        "chat (a list of {role, content} messages rendered with the tokenizer's chat template, "
        "loss on the assistant turns only). For task sequence-classification: classification "
        "(a text, an optional second text, a label). For task image-classification: "
        "image-classification (an image and a label). Required."
    )
    fields: DatasetFields | None = Field(
        default=None,
        description="Record keys to read instead of the usual names (text; prompt and "
        "completion; messages; text_pair and label; image). Unset: the usual names.",
    )
    labels: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=256)]],
            Field(min_length=2, max_length=100_000),
            UniqueItems(),
        ]
        | None
    ) = Field(
        default=None,
        description="The label names of a classification, in the order of their ids (label i "
        "is class i of the model's head); records hold these names (or integers, matched as "
        "text). Only for formats classification and image-classification. Unset: the labels "
        "found in the training records, sorted (numerically when all are integers).",
    )
    augment: bool = Field(
        default=False,
        description="Randomly crop-and-resize and horizontally flip each training image (never "
        "the evaluation images). Only for format image-classification.",
    )

    RULES = (
        Rule(
            field="evalSplit",
            cel="!(has(self.eval) && self.eval != '' && has(self.evalSplit))",
            message="may not be set together with eval; use one of them",
            holds=lambda d: d.eval is None or d.eval_split is None,
            reason="FieldValueForbidden",
        ),
        *(_fields_rule(k) for k in dict.fromkeys(k for keys in _KEYS_BY_FORMAT.values() for k in keys)),
        Rule(
            field="labels",
            cel=f"!has(self.labels) || self.format in {list(CLASSIFICATION_FORMATS)!r}".replace('"', "'"),
            message="applies only to formats classification and image-classification; remove it "
            "or change dataset.format",
            holds=lambda d: d.labels is None or d.format in CLASSIFICATION_FORMATS,
            reason="FieldValueForbidden",
        ),
        Rule(
            field="augment",
            cel="!self.augment || self.format == 'image-classification'",
            message="applies only to format image-classification; set it to false",
            holds=lambda d: not d.augment or d.format == "image-classification",
            reason="FieldValueForbidden",
        ),
    )

    @property
    def has_eval(self) -> bool:
        return self.eval is not None or self.eval_split is not None

    def record_keys(self) -> dict[str, str]:
        """The record keys for this format, e.g. {"prompt": "prompt", "completion": "answer"}."""
        return {
            k: (getattr(self.fields, k) if self.fields else None) or k
            for k in _KEYS_BY_FORMAT[self.format]
        }


class CheckpointSpec(ApiModel):
    """Where and how often training state is saved, so a job can resume."""

    uri: OptionalStoreUri = Field(
        default=None,
        description="Folder for checkpoints, as s3://bucket/prefix/ or pvc://claim/path; each "
        "one is a step-<8 digits>/ folder below it, committed by its manifest.json. A job "
        "resumes from the newest committed checkpoint found here. Unset or empty: "
        "<output.uri>/checkpoints/.",
    )
    every_steps: int = Field(
        default=500, ge=1, le=1_000_000_000, description="Save a checkpoint every this many steps."
    )
    keep_last: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Committed checkpoints to keep; older ones are deleted once a newer one is "
        "committed.",
    )


class OutputSpec(ApiModel):
    """Where the fine-tuned model goes."""

    uri: StoreUri = Field(
        description="Folder that receives the final model (safetensors, config and tokenizer; "
        "for LoRA the adapter), as s3://bucket/prefix/ or pvc://claim/path. Required."
    )
    merge_lora: bool = Field(
        default=False,
        description="For method lora: write the base model with the adapter merged into it "
        "instead of the adapter alone. Only with method type lora.",
    )
    select: OutputSelect | None = Field(
        default=None,
        description="Which model is published: best, the committed checkpoint with the best "
        "evaluation metric (spec.evaluation.metric; retention always keeps it); last, the model "
        "after the last step. best needs evaluation records. Unset: best when there are "
        "evaluation records (dataset.eval or dataset.evalSplit), else last.",
    )


class StorageSpec(ApiModel):
    """How the job reaches the S3-compatible store of its s3:// URIs."""

    endpoint: Annotated[
        Annotated[
            str,
            Field(max_length=512),
            Matches(rf"https?://[^ \t\n\r\f\v/]+(/{NOT_SPACE}*)?", "an http:// or https:// URL"),
        ]
        | None,
        EmptyMeansUnset(),
    ] = Field(
        default=None,
        description="URL of an S3-compatible endpoint, e.g. https://minio.storage.svc:9000. "
        "Unset or empty: the AWS_ENDPOINT_URL key of credentialsSecret when it has one, "
        "else Amazon S3 of region.",
    )
    region: Annotated[
        str, Field(max_length=64), Matches(r"[a-z0-9][a-z0-9-]*", "a region name such as us-east-1")
    ] = Field(default="us-east-1", description="Region of the store (for request signing).")
    credentials_secret: Annotated[ObjectName | None, EmptyMeansUnset()] = Field(
        default=None,
        description="Secret in the job's namespace with the keys AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN, and AWS_ENDPOINT_URL used when "
        "endpoint is unset), given to every worker as environment variables. Unset or empty: the pods' ambient credentials (e.g. IRSA or "
        "a node role).",
    )
    addressing_style: AddressingStyle = Field(
        default="auto",
        description="path: https://endpoint/bucket/key (most S3-compatible stores, MinIO); "
        "virtual: https://bucket.endpoint/key; auto: let the client choose.",
    )
