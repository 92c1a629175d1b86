"""GLUE metrics on hand-made inputs whose values are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf
from peftbench.core.paths import CONF_DIR
from peftbench.tasks.base import build_task
from peftbench.tasks.metrics import METRICS

PREDS = np.array([1, 0, 1, 1])
LABELS = np.array([1, 0, 0, 1])  # tp=2, tn=1, fp=1, fn=0


def test_accuracy() -> None:
    assert METRICS["accuracy"](PREDS, LABELS) == pytest.approx(0.75)


def test_f1() -> None:
    # precision 2/3, recall 1 -> F1 = 2 * (2/3) / (5/3) = 0.8
    assert METRICS["f1"](PREDS, LABELS) == pytest.approx(0.8)


def test_matthews_correlation() -> None:
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = 2 / sqrt(3*2*2*1)
    assert METRICS["matthews_correlation"](PREDS, LABELS) == pytest.approx(2 / math.sqrt(12))


def test_pearson() -> None:
    # x = [1, 2, 3], y = [1, 3, 2]: cov 1, var 2 and 2 -> 0.5
    assert METRICS["pearson"](np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)


def test_spearman() -> None:
    # ranks [1, 3, 2, 4] vs [1, 2, 3, 4]: sum d^2 = 2 -> 1 - 6*2 / (4*15) = 0.8
    x, y = np.array([10.0, 30.0, 20.0, 40.0]), np.array([1.0, 2.0, 3.0, 4.0])
    assert METRICS["spearmanr"](x, y) == pytest.approx(0.8)


def test_task_score_argmax_and_regression() -> None:
    mrpc = build_task(OmegaConf.load(CONF_DIR / "task" / "glue_mrpc.yaml"))
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0], [-3.0, 3.0]])
    assert mrpc.score(logits, LABELS) == {"f1": pytest.approx(0.8), "accuracy": pytest.approx(0.75)}
    stsb = build_task(OmegaConf.load(CONF_DIR / "task" / "glue_stsb.yaml"))
    scores = stsb.score(np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 3.0, 2.0]))
    assert scores["pearson"] == pytest.approx(0.5)
    mnli = build_task(OmegaConf.load(CONF_DIR / "task" / "glue_mnli.yaml"))
    assert mnli.score(np.eye(3), np.array([0, 1, 1]), "_mm") == {"accuracy_mm": pytest.approx(2 / 3)}


def test_every_glue_task_entry_is_consistent() -> None:
    names = sorted(p.stem for p in (CONF_DIR / "task").glob("glue_*.yaml"))
    assert names == [f"glue_{t}" for t in sorted(["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"])]
    primaries = {}
    for name in names:
        task = build_task(OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml"))
        task.validate("hub")
        primaries[name] = task.primary
    assert primaries["glue_cola"] == "matthews_correlation"
    assert primaries["glue_stsb"] == "pearson"
