"""Gradient accumulation trains as one batch: GA = k gives the gradient of GA = 1 at k times the micro-batch.

The gradients of one optimizer step through the harness's Trainer are held against the definition, one forward
and backward of all rows as one batch outside the Trainer, for a classifier (micro-batch share weighting) and a
causal LM (token-level: rows of different lengths and prompt masks, some trained on their first token), with a
PEFT method, a native one and a method with an auxiliary loss. The helpers are `scripts/ga_gradients.py`'s, the
script that measured the figures in docs/running.md.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from peftbench.bench.train import BenchTrainer, loss_is_token_level

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ga_gradients.py"
_spec = importlib.util.spec_from_file_location("ga_gradients", SCRIPT)
ga = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ga)

CASES = {label: (base, spec, rows) for label, base, spec, rows, _ in ga.cases()}
TOLERANCE = 1e-4  # relative, per parameter


METHODS = dict(ga.METHODS)


@pytest.mark.parametrize(
    ("model", "method_name"),
    [("classifier", "lora"), ("classifier", "molora"), ("causal LM", "lora"), ("causal LM", "molora"),
     ("causal LM", "lora_mpco")],
)  # fmt: skip
def test_ga_1_and_ga_4_give_the_one_batch_gradient(model: str, method_name: str) -> None:
    base, spec, rows = CASES[model]
    values = METHODS[method_name]
    reference = ga.reference_gradients(base, spec, method_name, rows, **values)
    ga1, loss1 = ga.one_step(base, spec, method_name, rows, 8, 1, **values)
    ga4, loss4 = ga.one_step(base, spec, method_name, rows, 2, 4, **values)
    assert set(ga1) == set(ga4) == set(reference) and len(reference) > 0
    assert ga.relative_difference(reference, ga1) < TOLERANCE
    # before: 3.0 (classifiers: the sum of 4 micro-batch means), 2.85 (the LM's MPC penalty added 4 times), 0.028
    # (our wrapped LM: a trained-on first token counted)
    assert ga.relative_difference(reference, ga4) < TOLERANCE
    assert loss4 == pytest.approx(loss1, rel=1e-5)  # the logged loss too (it was 4 times GA 1's)


def test_a_short_last_micro_batch_weighs_by_its_rows() -> None:
    """7 rows in micro-batches of 2, 2, 2, 1: each micro-batch's mean weighs its share of the rows (2/7 … 1/7);
    the mean of the four means (each 1/4) would differ."""
    base, spec, rows = CASES["classifier"]
    rows = rows[:7]
    reference = ga.reference_gradients(base, spec, "lora", rows)
    assert ga.relative_difference(reference, ga.one_step_gradients(base, spec, "lora", rows, 2, 4)) < TOLERANCE


def test_the_token_count_looks_through_our_wrapper(tmp_path: Path) -> None:
    """Our InjectedModel hides the causal LM from the Trainer's own test: the count must still skip position 0."""
    base, spec, rows = CASES["causal LM"]
    model, method, params, ctx = ga.adapted(base, spec, "molora", rows)
    assert type(model).__name__ == "InjectedModel" and loss_is_token_level(model)
    assert not loss_is_token_level(CASES["classifier"][0])
    trainer = BenchTrainer(
        model=model, args=ga.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
        method=method, method_params=params, ctx=ctx,
    )  # fmt: skip
    batch = ga.collate(rows)
    assert trainer.items_in(batch) == (batch["labels"][:, 1:] != -100).sum() < (batch["labels"] != -100).sum()
    assert trainer._loss_shifts_labels  # the Trainer's num_items_in_batch counts the same way
