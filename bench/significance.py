"""Bootstrap intervals and paired comparisons for the report tables, from the runs' predictions sidecars.

A *cell* is one method's runs at its chosen learning rate in one table column (a task and a metric): one run per
seed, each with its per-example predictions (`<run_id>.preds.jsonl.gz`). Its 95% interval comes from a two-level
bootstrap: each of the 1,000 resamples draws the seeds with replacement and, paired, the eval examples with
replacement (the same examples for every drawn seed), recomputes each drawn seed's metric on those examples and
averages over the drawn seeds; the interval is the 2.5th and 97.5th percentile of the 1,000 means.

Every cell of a column that evaluated the same examples is resampled with the same draws (of the examples, and of
the seeds by position in the sorted seed list, so two methods that ran the same seeds are paired seed by seed). The
difference of two cells, resample by resample, is then their paired difference; it is significant when its 95%
interval excludes 0. The draws come from a fixed seed, so the same records always give the same intervals.

Per-example scores: a per-example mean (accuracy) is the mean of the sidecar's `correct` (the task's own rule, for
the record's primary metric) or of prediction == reference; Matthews corr., F1, Pearson and Spearman, which are not
means over examples, are recomputed on each resample from the predictions and references, as `tasks.metrics` computes
them. A metric computed over several eval sets at once (commonsense's `accuracy`, the mean of its sets) resamples
each set on its own and averages them. A cell with a run that has no sidecar (older records), or whose metric the
sidecar cannot give (e.g. `accuracy_strict`), has no interval: the tables print `[n/a]`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

RESAMPLES = 1000
LEVEL = 0.95
SEED = 17  # fixed: the same records give the same intervals, run after run
DEFAULT_BASELINE = "lora"
MARK = "†"  # significantly different from the baseline
NO_INTERVAL = "[n/a]"
BASELINE_ROW = "its row of the same model and rank, or its only row of that model"  # see baseline_rows
TEST = f"paired bootstrap over seeds and eval examples, {RESAMPLES:,} resamples"
_GATHER_LIMIT = 4_000_000  # resampled example indices held in memory at once, whatever the eval set's size


@dataclass(frozen=True)
class Run:
    """One seed of a cell: its sidecar rows (None: the record has none), the metric key the column reads from the
    record's metrics (`accuracy`, `accuracy_mm`, `cs_boolq/accuracy`) and the record's primary metric."""

    seed: int
    rows: list[dict[str, Any]] | None
    key: str
    primary: str | None = None


@dataclass(frozen=True)
class Bootstrap:
    """A cell's bootstrap distribution (the metric, one value per resample, not ×100), or why it has none.

    `group` names the resampled examples: two cells are compared only when they share it."""

    values: np.ndarray | None = None
    group: str | None = None
    reason: str | None = None

    @property
    def interval(self) -> tuple[float, float] | None:
        return None if self.values is None else percentile_interval(self.values)


def percentile_interval(values: np.ndarray) -> tuple[float, float] | None:
    """The central `LEVEL` percentile interval; resamples where the metric is undefined are left out."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return None
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def difference(a: Bootstrap, b: Bootstrap) -> np.ndarray | None:
    """a − b resample by resample (paired), or None when either has no interval or they saw different examples."""
    if a.values is None or b.values is None or a.group != b.group:
        return None
    return a.values - b.values


def excludes_zero(interval: tuple[float, float] | None) -> bool | None:
    return None if interval is None else bool(interval[0] > 0 or interval[1] < 0)


def average(cells: Sequence[Bootstrap]) -> Bootstrap:
    """The mean of a row's cells over several columns (its Avg), resample by resample."""
    for cell in cells:
        if cell.values is None:
            return Bootstrap(reason=cell.reason)
    return Bootstrap(np.mean([c.values for c in cells], axis=0), "|".join(str(c.group) for c in cells))


def choose_baseline(methods: Iterable[str], requested: str | None) -> str | None:
    """The method the others are compared with: `requested` (it must be one of `methods`), else LoRA when run."""
    from peftbench.core.validation import check_choice

    methods = sorted({str(m) for m in methods})
    if requested is None:
        return DEFAULT_BASELINE if DEFAULT_BASELINE in methods else None
    check_choice("baseline method", requested, methods)
    return requested


def baseline_rows(keys: Sequence[tuple[str, ...]], baseline: str | None) -> dict[int, int]:
    """Row index -> its baseline's row index, for rows keyed (method, model, rank, ...): the baseline method's row of
    the same model, rank and the rest of the key (a row's setting, where rows are split by setting), else its only
    row of that model and rank, else its only row of that model (full FT, which has no rank, against the one LoRA)."""
    if baseline is None:
        return {}
    rows = {}
    for i, key in enumerate(keys):
        if key[0] == baseline:
            continue
        candidates = [j for j, other in enumerate(keys) if other[0] == baseline and other[1] == key[1]]
        exact = [j for j in candidates if keys[j][2:] == key[2:]]
        same_rank = [j for j in candidates if keys[j][2] == key[2]]
        chosen = exact or (same_rank if len(same_rank) == 1 else []) or (candidates if len(candidates) == 1 else [])
        if chosen:
            rows[i] = chosen[0]
    return rows


def read_sidecar(path: str | Path | None) -> list[dict[str, Any]] | None:
    """A run's sidecar rows; None when the record names none or the file cannot be read (a report never fails
    on it: the cell just has no interval)."""
    from peftbench.core.store import read_predictions_file

    if path is None or (isinstance(path, float) and np.isnan(path)):
        return None
    try:
        return read_predictions_file(path)
    except (OSError, EOFError, ValueError) as exc:
        log.warning("predictions sidecar %s unreadable (%s): no interval for its cell", path, exc)
        return None


def interval_text(interval: tuple[float, float] | None, signed: bool = False) -> str:
    """'[84.9, 86.1]' (×100), or '[n/a]'."""
    if interval is None:
        return NO_INTERVAL
    sign = "+" if signed else ""
    return f"[{100 * interval[0]:{sign}.1f}, {100 * interval[1]:{sign}.1f}]"


# --- metrics on many resamples at once: arrays of shape (resamples, examples) -> (resamples,) ---


def _f1(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Binary F1 of label 1, 0 where it is undefined (sklearn's f1_score)."""
    tp = ((p == 1) & (r == 1)).sum(axis=1)
    wrong = (p != r).sum(axis=1)  # false positives + false negatives
    return np.where(tp > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)


def _mcc(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Matthews corr. of any number of classes, 0 where it is undefined (sklearn's matthews_corrcoef)."""
    n = float(p.shape[1])
    labels = np.union1d(p, r)
    true = np.stack([(r == k).sum(axis=1) for k in labels]).astype(float)
    predicted = np.stack([(p == k).sum(axis=1) for k in labels]).astype(float)
    correct = (p == r).sum(axis=1).astype(float)
    cov_tp = correct * n - (true * predicted).sum(axis=0)
    cov_pp = n * n - (predicted * predicted).sum(axis=0)
    cov_tt = n * n - (true * true).sum(axis=0)
    denominator = cov_tt * cov_pp
    return np.where(denominator > 0, cov_tp / np.sqrt(np.where(denominator > 0, denominator, 1.0)), 0.0)


def _pearson(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Pearson's r, NaN where a resample is constant (scipy's pearsonr)."""
    p = p - p.mean(axis=1, keepdims=True)
    r = r - r.mean(axis=1, keepdims=True)
    denominator = np.sqrt((p * p).sum(axis=1) * (r * r).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (p * r).sum(axis=1) / denominator, np.nan)


def _spearman(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Pearson's r of the ranks, ties sharing their mean rank (scipy's spearmanr)."""
    return _pearson(pd.DataFrame(p).rank(axis=1).to_numpy(), pd.DataFrame(r).rank(axis=1).to_numpy())


RECOMPUTED = {"f1": _f1, "matthews_correlation": _mcc, "pearson": _pearson, "spearmanr": _spearman}


@dataclass(frozen=True)
class _Scores:
    """One run's examples for one metric, per split in id order: hits (a per-example mean) or predictions and
    references (a metric recomputed per resample)."""

    metric: str  # "mean", or a key of RECOMPUTED
    data: tuple[np.ndarray, ...]  # per split: hits (n,), or predictions and references stacked (2, n)
    signature: str  # the examples (split, id, reference): runs compare only on the same ones


def _target(key: str, splits: Sequence[str]) -> tuple[str, list[str]]:
    """The metric and the sidecar splits behind a record's metric key.

    `cs_boolq/accuracy`: one set of a multi-set run; `accuracy_mm`: the split whose metric suffix is `_mm`; else the
    main eval split (`eval`), or, when a run has none (commonsense: one split per set), the mean over every set."""
    name, sep, metric = key.rpartition("/")
    if sep:
        return metric, [name]
    for split in splits:
        if split.startswith("_") and key.endswith(split):
            return key[: -len(split)], [split]
    return (key, ["eval"]) if "eval" in splits else (key, sorted(splits))


def _scores(rows: list[dict[str, Any]], key: str, primary: str | None) -> _Scores | str:
    """The run's scores for `key`, or why the sidecar cannot give them."""
    by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_split[str(row.get("split") or "eval")].append(row)
    metric, splits = _target(key, list(by_split))
    if not splits or any(s not in by_split for s in splits):
        return f"no predictions for {key} in the sidecar"
    ordered = [sorted(by_split[s], key=lambda row: row["id"]) for s in splits]
    examples = [[s, [row["id"] for row in part], [row.get("reference") for row in part]]
                for s, part in zip(splits, ordered, strict=True)]  # fmt: skip
    signature = hashlib.sha1(json.dumps(examples, sort_keys=True, default=str).encode()).hexdigest()
    if metric in RECOMPUTED:
        try:
            data = tuple(np.array([[row["prediction"] for row in part], [row["reference"] for row in part]],
                                  dtype=float) for part in ordered)  # fmt: skip
        except (TypeError, ValueError):
            return f"non-numeric predictions: {key} cannot be recomputed"
        return _Scores(metric, data, signature)
    if metric == primary or (primary is None and metric == "accuracy"):
        if any(row.get("correct") is None for part in ordered for row in part):
            return f"the sidecar has no per-example `correct` for {key}"
        return _Scores("mean", tuple(np.array([bool(row["correct"]) for row in part], float) for part in ordered),
                       signature)  # fmt: skip
    if metric == "accuracy" and not str(primary).startswith("accuracy"):  # the record's `correct` follows another rule
        hits = tuple(np.array([row["prediction"] == row["reference"] for row in part], float) for part in ordered)
        return _Scores("mean", hits, signature)
    return f"{key} cannot be recomputed from the predictions sidecar"


def _cell_scores(runs: Sequence[Run]) -> list[_Scores] | str:
    if not runs:
        return "no runs"
    if any(run.rows is None for run in runs):
        return "a run without a predictions sidecar"
    scores = []
    for run in sorted(runs, key=lambda run: run.seed):
        score = _scores(run.rows, run.key, run.primary)
        if isinstance(score, str):
            return score
        scores.append(score)
    if len({s.signature for s in scores}) > 1:
        return "its seeds evaluated different examples"
    return scores


def _seed_positions(seeds: int) -> np.ndarray:
    """(RESAMPLES, seeds) positions into the sorted seed list; column k is the same for every cell (paired seeds)."""
    return np.stack([np.random.default_rng([SEED, 1, k]).integers(0, seeds, RESAMPLES) for k in range(seeds)], 1)


def _resample(signature: str, members: dict[Hashable, list[_Scores]]) -> dict[Hashable, Bootstrap]:
    """Every cell that saw these examples, on the same example draws (seeded by the examples: a cell gets the same
    interval in the main table and in a paper table, whatever else is in the column)."""
    sizes = [len(part) if part.ndim == 1 else part.shape[1] for part in next(iter(members.values()))[0].data]
    rng = np.random.default_rng([SEED, int(signature[:16], 16)])
    per_seed = {key: np.empty((len(scores), RESAMPLES)) for key, scores in members.items()}
    step = max(1, _GATHER_LIMIT // max(1, sum(sizes)))
    for start in range(0, RESAMPLES, step):
        stop = min(RESAMPLES, start + step)
        draws = [rng.integers(0, n, size=(stop - start, n)) for n in sizes]  # stratified by split
        for key, scores in members.items():
            for s, score in enumerate(scores):
                per_split = [
                    part[idx].mean(axis=1) if score.metric == "mean" else RECOMPUTED[score.metric](*part[:, idx])
                    for part, idx in zip(score.data, draws, strict=True)
                ]
                per_seed[key][s, start:stop] = np.mean(per_split, axis=0)
    resampled = {}
    for key, values in per_seed.items():
        positions = _seed_positions(values.shape[0])
        resampled[key] = Bootstrap(values[positions, np.arange(RESAMPLES)[:, None]].mean(axis=1), signature)
    return resampled


def column_bootstrap(cells: Mapping[Hashable, Sequence[Run]]) -> dict[Hashable, Bootstrap]:
    """Each cell's bootstrap distribution; cells that evaluated the same examples share the draws (paired)."""
    result: dict[Hashable, Bootstrap] = {}
    groups: dict[str, dict[Hashable, list[_Scores]]] = defaultdict(dict)
    for key, runs in cells.items():
        scores = _cell_scores(runs)
        if isinstance(scores, str):
            result[key] = Bootstrap(reason=scores)
        else:
            groups[scores[0].signature][key] = scores
    for signature, members in groups.items():
        result.update(_resample(signature, members))
    return result
