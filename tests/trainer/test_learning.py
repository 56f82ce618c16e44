"""Does fine-tuning actually teach the real model? SmolLM2-135M-Instruct on chatterbot Q/A pairs.

A short run (4 to 8 steps of 4 x 128 tokens) must bring the eval loss on
held-out pairs of the same task clearly below the base model's, for LoRA and for
a full fine-tune, and the exported model must answer a question with plain
transformers. Slow: minutes on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Run, launch, python_module, write_config

pytestmark = pytest.mark.slow

# method -> (spec, learning rate, steps); a full fine-tune learns faster per step but each step costs more.
METHODS = {
    "lora": ({"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0,
                                       "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]}}, 1e-3, 8),
    "full": ({"type": "full"}, 1e-4, 4),
}


def fine_tune(method: str, model: Path, corpus: tuple[Path, Path], work: Path) -> Run:
    spec, learning_rate, steps = METHODS[method]
    train, held_out = corpus
    # The model and the corpus as mounted claims (KUBETUNE_PVC_ROOT), as a developer runs it by hand.
    claims = work / "pvc"
    claims.mkdir()
    (claims / "models").symlink_to(model)
    (claims / "data").symlink_to(train.parent)
    config: dict[str, Any] = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                              "metadata": {"name": f"learning-{method}"}, "spec": {
        "model": {"uri": "pvc://models"},
        "dataset": {"train": f"pvc://data/{train.name}", "eval": f"pvc://data/{held_out.name}", "format": "chat"},
        "method": {**spec, "gradientCheckpointing": False},
        # Evaluating every `steps` steps: the base model's loss before the first step, and after the last.
        "training": {"maxSteps": steps, "learningRate": learning_rate, "lrScheduler": "constant", "warmupSteps": 1,
                     "microBatchSize": 4, "maxSeqLength": 128, "packing": True, "precision": "fp32",
                     "evalEverySteps": steps, "logEverySteps": 1},
        "deepspeed": {"zeroStage": 0},
        "resources": {"gpusPerNode": 0},
        "checkpoint": {"everySteps": steps},
        # Merged, so that plain transformers loads the result below.
        "output": {"uri": "pvc://work/model", "mergeLora": method == "lora"}}}
    (claims / "work").symlink_to(work)
    # Without torchrun: a world of one, the fastest way through on two CPU cores.
    return launch([python_module(write_config(work / "config.json", config))], timeout=900,
                  envs=[{"KUBETUNE_PVC_ROOT": str(claims), "KUBETUNE_SCRATCH_DIR": str(work / "scratch")}])


# Full fine-tuning learns in `make test-long` (and in `make demo`); LoRA, the cheaper one, in `make test`.
@pytest.mark.parametrize("method", ["lora", pytest.param("full", marks=pytest.mark.long)])
def test_short_fine_tune_beats_the_base_model_on_held_out_pairs(
        method: str, smollm2_dir: Path, chat_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    run = fine_tune(method, smollm2_dir, chat_corpus, tmp_path)
    assert run.returncodes == [0], run.output[-4000:]
    base, tuned = (e["eval_loss"] for e in (run.of("eval")[0], run.of("eval")[-1]))
    print(f"{method}: eval loss {base:.3f} -> {tuned:.3f}")  # shown with pytest -s or -rP
    assert tuned < base - 0.25, f"eval loss {base:.3f} -> {tuned:.3f}"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tmp_path / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    question = json.loads(chat_corpus[1].read_text().splitlines()[0])["messages"][:2]
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    answer = model.generate(**prompt, max_new_tokens=24, do_sample=False)[0][prompt["input_ids"].shape[1]:]
    assert tokenizer.decode(answer, skip_special_tokens=True).strip()
