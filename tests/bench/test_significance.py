"""The bootstrap behind the report's intervals and significance marks, on hand-made predictions with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from peftbench.bench.significance import (
    RECOMPUTED,
    RESAMPLES,
    Bootstrap,
    Run,
    average,
    baseline_rows,
    column_bootstrap,
    difference,
    excludes_zero,
    interval_text,
    percentile_interval,
    read_sidecar,
)
from peftbench.tasks.metrics import METRICS

N = 200


def rows(correct: list[bool] | np.ndarray, split: str = "eval") -> list[dict]:
    """One sidecar: reference alternates 0/1, the prediction is right where `correct` says."""
    return [{"split": split, "id": i, "reference": i % 2, "prediction": i % 2 if c else 1 - i % 2, "correct": bool(c)}
            for i, c in enumerate(correct)]  # fmt: skip


def run(correct: list[bool] | np.ndarray, seed: int = 0, key: str = "accuracy") -> Run:
    return Run(seed, rows(correct), key, "accuracy")


def test_vectorized_metrics_agree_with_tasks_metrics() -> None:
    rng = np.random.default_rng(3)
    for name, vectorized in RECOMPUTED.items():
        if name in ("pearson", "spearmanr"):
            references = rng.normal(size=(4, 60))
            predictions = np.round(references + rng.normal(size=(4, 60)), 1)  # rounded: ties for Spearman's ranks
        else:
            classes = 3 if name == "matthews_correlation" else 2
            references = rng.integers(0, classes, (4, 60))
            predictions = np.where(rng.random((4, 60)) < 0.7, references, rng.integers(0, classes, (4, 60)))
        expected = [METRICS[name](predictions[i], references[i]) for i in range(4)]
        assert np.allclose(vectorized(predictions, references), expected), name
    # undefined cases as sklearn gives them: one predicted class -> MCC 0; no positive -> F1 0
    assert RECOMPUTED["matthews_correlation"](np.zeros((1, 4)), np.array([[0, 1, 0, 1]]))[0] == 0.0
    assert RECOMPUTED["f1"](np.zeros((1, 4)), np.zeros((1, 4)))[0] == 0.0


def test_interval_of_a_mean_known_cases() -> None:
    half = column_bootstrap({"a": [run(np.arange(N) % 2 == 0)]})["a"]
    low, high = half.interval
    # one seed, p = 0.5 on 200 examples: the normal approximation gives 0.5 ± 1.96 * sqrt(0.25 / 200) = ± 0.069
    assert low == pytest.approx(0.5 - 0.069, abs=0.012) and high == pytest.approx(0.5 + 0.069, abs=0.012)
    assert half.values.mean() == pytest.approx(0.5, abs=0.005)
    # every example right in every seed: no spread at all
    assert column_bootstrap({"a": [run([True] * N, 0), run([True] * N, 1)]})["a"].interval == (1.0, 1.0)
    # two seeds, one all right and one all wrong: a resample's mean is 0, 0.5 or 1 (p = 1/4, 1/2, 1/4)
    split = column_bootstrap({"a": [run([True] * N, 0), run([False] * N, 1)]})["a"]
    assert split.interval == (0.0, 1.0)
    assert set(np.unique(split.values)) == {0.0, 0.5, 1.0}
    assert np.mean(split.values == 0.5) == pytest.approx(0.5, abs=0.05)


def test_a_large_paired_difference_is_significant() -> None:
    a = np.arange(N) % 10 != 0  # 90% right
    b = (np.arange(N) % 10 >= 1) & (np.arange(N) % 10 <= 6)  # 60% right, every one of them also right in a
    cells = column_bootstrap({"a": [run(a, 0), run(a, 1)], "b": [run(b, 0), run(b, 1)]})
    diff = percentile_interval(difference(cells["a"], cells["b"]))
    # paired: the difference is the mean of 60 ones among 200 examples, 0.30 ± 1.96 * sqrt(0.3 * 0.7 / 200) = ± 0.064
    # (unpaired, the two means' spreads would add up: ± 0.087)
    assert diff[0] == pytest.approx(0.30 - 0.064, abs=0.012) and diff[1] == pytest.approx(0.30 + 0.064, abs=0.012)
    assert excludes_zero(diff) is True
    assert interval_text(diff, signed=True).startswith("[+2") and interval_text(cells["a"].interval).startswith("[8")


def test_identical_or_nearly_identical_predictions_are_not_significant() -> None:
    a = np.arange(N) % 4 != 0  # 75% right
    nearly = a.copy()
    nearly[[0, 4]] = True  # two more right answers: 76%
    cells = column_bootstrap({"a": [run(a)], "same": [run(a)], "nearly": [run(nearly)]})
    assert percentile_interval(difference(cells["same"], cells["a"])) == (0.0, 0.0)
    assert excludes_zero((0.0, 0.0)) is False
    nearly_diff = percentile_interval(difference(cells["nearly"], cells["a"]))
    assert nearly_diff[0] == 0.0 and excludes_zero(nearly_diff) is False  # paired: never below 0, often at it


def test_same_inputs_same_output_and_a_cell_does_not_depend_on_its_neighbours() -> None:
    a, b = np.arange(N) % 3 != 0, np.arange(N) % 5 != 0
    first = column_bootstrap({"a": [run(a, 0), run(b, 1)]})["a"]
    again = column_bootstrap({"a": [run(a, 0), run(b, 1)], "b": [run(b, 0), run(a, 1), run(b, 2)]})["a"]
    assert len(first.values) == RESAMPLES and np.array_equal(first.values, again.values)
    assert interval_text(first.interval) == interval_text(again.interval)


def test_matthews_and_pearson_are_recomputed_per_resample() -> None:
    rng = np.random.default_rng(0)
    references = rng.integers(0, 2, N)
    predictions = np.where(rng.random(N) < 0.8, references, 1 - references)
    cola = [{"split": "eval", "id": i, "prediction": int(p), "reference": int(r), "correct": bool(p == r)}
            for i, (p, r) in enumerate(zip(predictions, references, strict=True))]  # fmt: skip
    mcc = METRICS["matthews_correlation"](predictions, references)
    cell = column_bootstrap({"m": [Run(0, cola, "matthews_correlation", "matthews_correlation")]})["m"]
    assert cell.interval[0] < mcc < cell.interval[1] and cell.interval[1] - cell.interval[0] < 0.3
    assert np.median(cell.values) == pytest.approx(mcc, abs=0.03)
    # CoLA's accuracy (GOAT's column), from the same sidecar although the primary metric is MCC
    accuracy = column_bootstrap({"m": [Run(0, cola, "accuracy", "matthews_correlation")]})["m"]
    assert np.mean(accuracy.values) == pytest.approx(np.mean(predictions == references), abs=0.005)
    scores = rng.uniform(0, 5, N)
    stsb = [{"split": "eval", "id": i, "prediction": float(s + rng.normal()), "reference": float(s), "correct": None}
            for i, s in enumerate(scores)]  # fmt: skip
    pearson = METRICS["pearson"](np.array([r["prediction"] for r in stsb]), scores)
    cell = column_bootstrap({"p": [Run(0, stsb, "pearson", "pearson")]})["p"]
    assert cell.interval[0] < pearson < cell.interval[1]


def test_several_sets_resample_each_set_and_average() -> None:
    # commonsense: one split per set, the primary accuracy is the mean of the sets' accuracies
    boolq = rows([True] * 10, "cs_boolq")  # 100% on 10 examples
    piqa = rows([False] * 90, "cs_piqa")  # 0% on 90: a pooled mean would be 10%, the set mean is 50%
    cell = column_bootstrap({"g": [Run(0, boolq + piqa, "accuracy", "accuracy")]})["g"]
    assert cell.interval == (0.5, 0.5)
    one_set = column_bootstrap({"g": [Run(0, boolq + piqa, "cs_boolq/accuracy", "accuracy")]})["g"]
    assert one_set.interval == (1.0, 1.0)
    # MNLI: the primary accuracy is the matched split's (`eval`); `accuracy_mm` the mismatched one
    mnli = rows([True] * 20) + rows([False] * 20, "_mm")
    assert column_bootstrap({"m": [Run(0, mnli, "accuracy", "accuracy")]})["m"].interval == (1.0, 1.0)
    assert column_bootstrap({"m": [Run(0, mnli, "accuracy_mm", "accuracy")]})["m"].interval == (0.0, 0.0)


def test_cells_without_an_interval_say_why(tmp_path: Path) -> None:
    a = np.arange(N) % 2 == 0
    cells = column_bootstrap(
        {
            "old": [run(a, 0), Run(1, None, "accuracy", "accuracy")],  # one seed without a sidecar
            "strict": [Run(0, rows(a), "accuracy_strict", "accuracy")],  # the sidecar does not hold this rule
            "mixed": [run(a, 0), run(a[:100], 1)],  # seeds evaluated different examples
        },
    )
    assert {k: (c.values, c.reason) for k, c in cells.items()} == {
        "old": (None, "a run without a predictions sidecar"),
        "strict": (None, "accuracy_strict cannot be recomputed from the predictions sidecar"),
        "mixed": (None, "its seeds evaluated different examples"),
    }
    assert cells["old"].interval is None and interval_text(cells["old"].interval) == "[n/a]"
    assert average([cells["old"], Bootstrap(np.zeros(RESAMPLES), "g")]).values is None
    (tmp_path / "broken.preds.jsonl.gz").write_bytes(b"not gzip")
    assert read_sidecar(tmp_path / "broken.preds.jsonl.gz") is None and read_sidecar(None) is None


def test_cells_on_different_examples_are_not_compared() -> None:
    a = np.arange(N) % 2 == 0
    cells = column_bootstrap({"a": [run(a)], "b": [run(a[:100])]})
    assert cells["a"].interval is not None and cells["b"].interval is not None
    assert difference(cells["a"], cells["b"]) is None


def test_baseline_rows_pair_by_model_and_rank() -> None:
    keys = [("lora", "roberta-base", "8"), ("lora", "roberta-base", "16"), ("dora", "roberta-base", "16"),
            ("full", "roberta-base", "–"), ("lora", "gpt2", "8"), ("full", "gpt2", "–"),
            ("dora", "llama", "8")]  # fmt: skip
    # dora r16 -> lora r16; full on roberta (two LoRA ranks): ambiguous, none; full on gpt2 -> its one LoRA
    assert baseline_rows(keys, "lora") == {2: 1, 5: 4}
    assert baseline_rows(keys, None) == {}
