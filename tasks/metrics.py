"""GLUE's official metrics, computed exactly as the `glue` script of HF `evaluate` does.

`evaluate.load("glue", ...)` fetches that script from the hub, which fails offline; these are the
same calls (scikit-learn's f1_score and matthews_corrcoef, scipy's pearsonr and spearmanr, plain
accuracy), pinned by tests on hand-made inputs. Values are fractions in [0, 1] (correlations in
[-1, 1]); reports print them ×100 like the papers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef


def accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    return float((np.asarray(predictions) == np.asarray(references)).mean())


def f1(predictions: np.ndarray, references: np.ndarray) -> float:
    return float(f1_score(y_true=references, y_pred=predictions))


def matthews_correlation(predictions: np.ndarray, references: np.ndarray) -> float:
    return float(matthews_corrcoef(references, predictions))


def pearson(predictions: np.ndarray, references: np.ndarray) -> float:
    return float(pearsonr(predictions, references)[0])


def spearman(predictions: np.ndarray, references: np.ndarray) -> float:
    return float(spearmanr(predictions, references)[0])


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearman,
}
