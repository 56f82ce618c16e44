"""Turning records of each dataset format into token ids and loss labels.

The label of a token is the token itself where the model should learn to
produce it, and IGNORE_INDEX where it should not: the prompt of a
prompt-completion pair, and everything but the assistant's replies in a chat.
The model shifts labels by one itself (Hugging Face causal LMs do).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune_trainer.data.sources import Problems, Record, each
from kubetune_trainer.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
"""Label of tokens left out of the loss (PyTorch cross-entropy's ignore_index)."""

CHAT_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """One tokenized record."""

    input_ids: list[int]
    """Token ids, ending with the tokenizer's EOS token."""
    labels: list[int]
    """Same length as input_ids; IGNORE_INDEX where no loss is taken."""
    where: str
    """Location of the record it came from, for messages."""


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, *, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _with_eos(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    # EOS ends every example so that packed neighbours are separated and the model learns to stop.
    eos = tokenizer.eos_token_id
    return ids if ids and ids[-1] == eos else [*ids, eos]


def string_field(record: Record, name: str, shape: str) -> str:
    value = record.data.get(name)
    if not isinstance(value, str) or not value:
        got = "missing" if name not in record.data else f"got {type(value).__name__} {value!r:.40}"
        raise DataError(f"{record.where}: field {name!r} must be a non-empty string ({got}); "
                        f"expected {shape}")
    return value


Keys = Mapping[str, str]
"""The record key of each usual field name, e.g. {"prompt": "question"} (dataset.fields)."""


def text_example(record: Record, tokenizer: PreTrainedTokenizerBase, keys: Keys | None = None) -> Example:
    """{"text": ...}: loss on every token."""
    key = (keys or {}).get("text", "text")
    text = string_field(record, key, f'{{"{key}": "..."}}')
    ids = _with_eos(tokenizer, _encode(tokenizer, text, special=True))
    return Example(ids, list(ids), record.where)


def prompt_completion_example(record: Record, tokenizer: PreTrainedTokenizerBase,
                              keys: Keys | None = None) -> Example:
    """{"prompt", "completion"}: loss on the completion only."""
    prompt_key, completion_key = (keys or {}).get("prompt", "prompt"), (keys or {}).get("completion", "completion")
    shape = f'{{"{prompt_key}": "...", "{completion_key}": "..."}}'
    prompt = _encode(tokenizer, string_field(record, prompt_key, shape), special=True)
    completion = _with_eos(tokenizer, _encode(tokenizer, string_field(record, completion_key, shape)))
    return Example(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion, record.where)


def _messages(record: Record, key: str) -> list[dict[str, str]]:
    shape = f'{{"{key}": [{{"role": "user", "content": "..."}}, {{"role": "assistant", ...}}]}}'
    messages = record.data.get(key)
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{record.where}: field {key!r} must be a non-empty list; expected {shape}")
    for i, message in enumerate(messages):
        if (not isinstance(message, dict) or message.get("role") not in CHAT_ROLES
                or not isinstance(message.get("content"), str)):
            raise DataError(f"{record.where}: messages[{i}] must be an object with 'role' "
                            f"({', '.join(CHAT_ROLES)}) and string 'content' (got {message!r:.60})")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{record.where}: no assistant message; a chat record needs at least one "
                        "assistant turn to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def chat_example(record: Record, tokenizer: PreTrainedTokenizerBase, keys: Keys | None = None) -> Example:
    """{"messages": [...]}: rendered with the chat template; loss on assistant replies only.

    The conversation is rendered incrementally: the text up to an assistant turn
    (with the generation prompt, i.e. the assistant header) is masked, the text
    that turn adds (its content and end-of-turn marker) is learned.
    """
    messages = _messages(record, (keys or {}).get("messages", "messages"))

    def render(upto: int, generation_prompt: bool) -> str:
        if upto == 0 and not generation_prompt:
            return ""
        return str(tokenizer.apply_chat_template(
            messages[:upto], tokenize=False, add_generation_prompt=generation_prompt))

    input_ids: list[int] = []
    labels: list[int] = []
    done = ""  # text already tokenized
    for i, message in enumerate(messages):
        is_assistant = message["role"] == "assistant"
        boundaries = [render(i, True), render(i + 1, False)] if is_assistant else [render(i + 1, False)]
        for j, text in enumerate(boundaries):
            if not text.startswith(done):
                raise DataError(f"{record.where}: the tokenizer's chat template does not render this "
                                "conversation incrementally (e.g. it starts with an assistant turn), "
                                "so assistant tokens cannot be located")
            ids = _encode(tokenizer, text[len(done):])
            learn = is_assistant and j == 1
            input_ids += ids
            labels += ids if learn else [IGNORE_INDEX] * len(ids)
            done = text
    return Example(input_ids, labels, record.where)


FORMATS: dict[str, Callable[[Record, Any, Keys | None], Example]] = {
    "text": text_example,
    "prompt-completion": prompt_completion_example,
    "chat": chat_example,
}


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, fmt: str) -> None:
    """The tokenizer can encode records of format `fmt` (an EOS token; a chat template for chat)."""
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no EOS token; set eos_token in the model's tokenizer_config.json")
    if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
        raise DataError("dataset format 'chat' needs a tokenizer with a chat template, and the model's "
                        "tokenizer has none (no chat_template in tokenizer_config.json, no chat_template.jinja); "
                        "use a model with one, add one to the model folder, or use format prompt-completion")


def tokenize_records(records: list[Record], fmt: str, tokenizer: PreTrainedTokenizerBase,
                     keys: Keys | None = None, problems: Problems = None) -> list[Example]:
    """Tokenize every record; the first bad record raises DataError naming its location (or, with
    `problems`, every bad record is recorded there and left out)."""
    check_tokenizer(tokenizer, fmt)
    to_example = FORMATS[fmt]
    return each(records, lambda record: to_example(record, tokenizer, keys), problems)
