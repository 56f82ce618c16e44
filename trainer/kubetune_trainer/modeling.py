"""Loading the preprocessor and the model to train: the task's head, frozen weights, LoRA adapters.

Models come from a local directory through transformers' Auto classes, the one
of spec.task (how the directory got there, from S3, a PVC or the hub, is not
this module's concern). A classification head for the job's labels is created
where the model has none or one of another size.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kubetune_api import FineTuneJobSpec, FreezeSpec, LoraSpec, Task
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.logs import log_event

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The model's tokenizer; models without a pad token pad with EOS (padding is masked anyway)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ConfigError(f"the model in {path}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def max_positions(path: str, trust_remote_code: bool = False) -> int | None:
    """The model's longest sequence (max_position_embeddings or n_positions), from its config alone."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"the model in {path}: cannot read its config.json "
                          f"({str(e).splitlines()[0]})") from None
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if value else None


# The transformers Auto class of each task's model.
AUTO_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
}
# PEFT's task types; image classifiers have none: their head is trained in full beside the adapters.
PEFT_TASKS = {"causal-lm": "CAUSAL_LM", "sequence-classification": "SEQ_CLS", "image-classification": None}


def model_class(task: Task) -> Any:
    import transformers

    return getattr(transformers, AUTO_CLASSES[task])


def load_preprocessor(path: str, spec: FineTuneJobSpec) -> Any:
    """What turns a record into model inputs: the tokenizer, or for images the image processor."""
    if spec.task != "image-classification":
        return load_tokenizer(path, spec.model.trust_remote_code)
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path, trust_remote_code=spec.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"the model in {path}: cannot load its image processor (preprocessor_config.json): "
                          f"{str(e).splitlines()[0]}") from None


def check_task_head(path: str, spec: FineTuneJobSpec) -> None:
    """Fail now, from the model's config alone, when transformers has no model with the head
    spec.task needs for this architecture (e.g. a CodeGen model given to sequence-classification)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=spec.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"the model in {path}: cannot read its config.json ({str(e).splitlines()[0]})") from None
    if getattr(config, "auto_map", None) and spec.model.trust_remote_code:
        return  # the repository brings its own classes
    cls = model_class(spec.task)
    if type(config) not in cls._model_mapping:
        examples = {"causal-lm": "Llama, Qwen, Mistral, GPT-2",
                    "sequence-classification": "BERT, RoBERTa, DeBERTa, ModernBERT, Llama",
                    "image-classification": "ViT, ResNet, ConvNeXt"}[spec.task]
        raise ConfigError(f"spec.task {spec.task}: the model {spec.model.uri} is a {config.model_type}, for "
                          f"which transformers has no {spec.task} model ({AUTO_CLASSES[spec.task]}); use a "
                          f"model that has one, e.g. {examples}")


def _lora(model: torch.nn.Module, lora: LoraSpec, task: Task) -> torch.nn.Module:
    import peft

    targets = lora.peft_target_modules
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(targets) - names) if isinstance(targets, list) else []
    if missing:
        raise ConfigError(f"spec.method.lora.targetModules: the model has no module named "
                          f"{', '.join(missing)}; e.g. q_proj, k_proj, v_proj, o_proj for Llama")
    # A new classification head is trained in full (PEFT's SEQ_CLS does that for its heads).
    heads = [n for n in ("classifier", "score") if task == "image-classification" and hasattr(model, n)]
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                             task_type=PEFT_TASKS[task], modules_to_save=heads or None)
    return peft.get_peft_model(model, config)


def load_model(path: str, spec: FineTuneJobSpec, labels: list[str] | None = None,
               pad_token_id: int | None = None) -> torch.nn.Module:
    """The task's model from `path` in the spec's training precision: with a classification head
    for `labels` (new where the model has none or another one), frozen weights as spec.method.freeze
    says, and LoRA adapters for method lora."""
    cls = model_class(spec.task)
    kwargs: dict[str, Any] = {"dtype": DTYPES[spec.training.precision],
                              "trust_remote_code": spec.model.trust_remote_code}
    if labels is not None:
        kwargs |= {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                   "label2id": {name: i for i, name in enumerate(labels)}, "ignore_mismatched_sizes": True}
    try:
        model: Any = cls.from_pretrained(path, **kwargs)
    except ValueError as e:  # transformers: "Unrecognized configuration class ... for this kind of AutoModel"
        kind = _model_type(path)
        raise ConfigError(f"spec.task {spec.task}: the model in {path} ({kind}) has no {spec.task} head in "
                          f"transformers ({str(e).splitlines()[0][:200]}); use a model that has one") from None
    except OSError as e:
        raise ConfigError(f"the model in {path}: cannot load it ({str(e).splitlines()[0]})") from None
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # the KV cache only helps generation
    if spec.task == "sequence-classification" and model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # decoder classifiers find each sequence's last token by it
    if spec.method.gradient_checkpointing:
        if model.supports_gradient_checkpointing:
            # Non-reentrant checkpointing also works when only adapters require grad.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            log_event("gradient_checkpointing_unsupported", model_type=model.config.model_type)
    if spec.method.freeze is not None:
        freeze(model, spec.method.freeze)
    lora = spec.method.effective_lora
    if lora is not None:
        model = _lora(model, lora, spec.task)
    return model


def _model_type(path: str) -> str:
    try:
        return str(json.loads((Path(path) / "config.json").read_text()).get("model_type", "unknown"))
    except (OSError, ValueError):
        return "unknown"


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks, from the input up: the modules of the classes transformers names
    in _no_split_modules that occur more than once, else the longest list of same-class modules."""
    named = set(getattr(model, "_no_split_modules", None) or ())
    found: dict[str, list[torch.nn.Module]] = {}
    for module in model.modules():
        if type(module).__name__ in named:
            found.setdefault(type(module).__name__, []).append(module)
    repeated = [modules for modules in found.values() if len(modules) > 1]
    if repeated:
        return max(repeated, key=len)
    lists = [list(m) for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1
             and len({type(child) for child in m}) == 1]
    return max(lists, key=len) if lists else []


def freeze(model: torch.nn.Module, spec: FreezeSpec) -> None:
    """Stop training the weights spec.method.freeze names (they stay bit-identical)."""
    frozen: dict[int, torch.nn.Parameter] = {}

    def add(module: torch.nn.Module) -> None:
        frozen.update((id(p), p) for p in module.parameters())

    if spec.embeddings:
        # Encoders (BERT, ViT) keep word, position and token-type embeddings in one module.
        embeddings = [getattr(getattr(model, "base_model", model), "embeddings", None)]
        with contextlib.suppress(AttributeError, NotImplementedError):
            embeddings.append(model.get_input_embeddings())  # type: ignore[operator]
        found = [m for m in embeddings if isinstance(m, torch.nn.Module)]
        if not found:
            raise ConfigError("spec.method.freeze.embeddings: this model has no input embeddings to freeze; "
                              "set it to false")
        for module in found:
            add(module)
    if spec.bottom_layers:
        blocks = transformer_blocks(model)
        if spec.bottom_layers > len(blocks):
            raise ConfigError(f"spec.method.freeze.bottomLayers is {spec.bottom_layers}, but the model has "
                              f"{len(blocks)} blocks; lower it to at most {len(blocks)}")
        for block in blocks[:spec.bottom_layers]:
            add(block)
    names = dict(model.named_parameters())
    for pattern in spec.modules or ():
        matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            examples = ", ".join(list(names)[:3])
            raise ConfigError(f"spec.method.freeze.modules: {pattern!r} matches no parameter of the model "
                              f"(its names look like {examples})")
        frozen.update((id(names[n]), names[n]) for n in matched)
    for parameter in frozen.values():
        parameter.requires_grad_(False)
    if frozen and not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("spec.method.freeze freezes every weight of the model; leave something to train")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups: matrices decay, biases and norm weights do not."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]  # LoRA has no 1-d trainables; ZeRO dislikes empty groups


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (before any ZeRO partitioning)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
