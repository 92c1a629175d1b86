"""Measure the token lengths `peftbench plan` reads (bench/plan_data.yaml, `lengths:`), with each task's own code.

Every text task with real rows on this machine (the offline rows `make setup` installs) is prepared by its own
`Task.prepare` on those rows, with the task's templates and truncation off (max_seq_length 100000), under two
tokenizers: MiniLM's WordPiece (`wordpiece`, exact for the demo's model) and SmolLM2's byte-level BPE (`bpe`,
standing in for the GPT-2-family BPE of RoBERTa, GPT-2 and DeBERTa and for LLaMA's tokenizers). Printed as YAML:
per task and tokenizer, the 21 quantiles (0, 5, ..., 100 %) of the training rows' lengths (`train`: what a
training batch pads), of the evaluated inputs (`eval`: classification inputs, or generation prompts) and, for
generation tasks, of the training targets (`answer`: what a stopped generation emits), and the offline row counts.

    PYTHONPATH=$PWD .venv/bin/python scripts/measure_plan_lengths.py > /tmp/lengths.yaml   # ~1 min on 2 cores
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
from omegaconf import OmegaConf
from peftbench.bench.models import load_tokenizer
from peftbench.core.paths import CONF_DIR
from peftbench.tasks.base import build_task

TASKS = ["glue_sst2", "glue_mrpc", "glue_rte", "gsm8k", "commonsense"]
TOKENIZERS = {"wordpiece": "minilm", "bpe": "smollm2-135m"}


def quantiles(lengths: list[int]) -> list[int]:
    return [int(round(q)) for q in np.percentile(np.asarray(lengths), np.linspace(0, 100, 21))]


def measure(task_name: str, tokenizer) -> dict:  # noqa: ANN001
    cfg = OmegaConf.load(CONF_DIR / "task" / f"{task_name}.yaml")
    if "defaults" in cfg:
        cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / "task" / f"{cfg.defaults[0]}.yaml"), cfg)
    cfg.max_seq_length = 100000
    task = build_task(cfg)
    data = task.prepare("offline", tokenizer)
    out: dict = {
        "offline_rows": {"train": len(data.train), "eval": {k or "eval": len(v) for k, v in data.evals.items()}}
    }
    out["train"] = quantiles([len(ids) for ids in data.train["input_ids"]])
    if task.model_kind == "causal-lm":
        out["eval"] = quantiles([len(ids) for rows in data.evals.values() for ids in rows["prompt_ids"]])
        targets = [sum(1 for x in labels if x != -100) for labels in data.train["labels"]]
        if cfg.get("train_on_inputs"):  # the loss covers the prompt: the answer is the text after the prompt
            prompts = [len(task_prompt) for task_prompt in _train_prompt_lengths(task, data, tokenizer)]
            targets = [len(ids) - p for ids, p in zip(data.train["input_ids"], prompts, strict=True)]
        out["answer"] = quantiles(targets)
    else:
        out["eval"] = quantiles([len(ids) for rows in data.evals.values() for ids in rows["input_ids"]])
    return out


def _train_prompt_lengths(task, data, tokenizer) -> list[list[int]]:  # noqa: ANN001
    from peftbench.tasks.generation import PromptEncoder

    encoder = PromptEncoder(tokenizer, 100000, True, task.cfg.get("target_separator") or "")
    train, _, _ = task.splits("offline", encoder)
    return [encoder.prompt(p) for p in train["prompt"]]


def main() -> None:
    warnings.simplefilter("ignore")
    result: dict = {}
    for family, model in TOKENIZERS.items():
        tokenizer = load_tokenizer(OmegaConf.load(CONF_DIR / "model" / f"{model}.yaml"))
        for task in TASKS:
            result.setdefault(task, {})[family] = measure(task, tokenizer)
            print(f"measured {task} ({family})", file=sys.stderr)
    print(OmegaConf.to_yaml(OmegaConf.create(result)))


if __name__ == "__main__":
    main()
