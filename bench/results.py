"""The results model behind every table: a sweep's records, read once into one tidy frame, and the cells
aggregated from it, their numbers and markers as data (`bench.render` turns them into Markdown, LaTeX, CSV, HTML).

- `Results.runs`: one row per record: its axes and outcome, its `setting`, and every key of its experiment
  configuration as a column (`task.max_seq_length`, `trainer.num_train_epochs`, `revisions.…`).
- The `setting` is a hash of the whole experiment configuration except seed and lr: `method.*`, `model.*`,
  `task.*`, `trainer.*` (bookkeeping keys aside, as in the run_id), data, rank, the method's outside inputs and the
  data and model revisions the record read (`revisions`, where records carry it). Every aggregate is keyed by it:
  runs that differ in anything else than seed and lr never share a cell. Where one table row (method, model,
  rank) would hold runs of several settings in one column, each run gets a `variant` label naming the keys that
  differ (`task.max_seq_length=128`), and the tables show one row per variant with a line saying so.
- One rule picks the learning rate (`lr_cells`, `best_by_lr`): per cell, the lr with the best seed-mean of what
  selects (the primary metric, or a paper column's own metric); an lr where any seed diverged is not eligible.
  Under the two-stage strategy (`lr_then_seeds`) the lr is chosen on the first seed alone, as the sweep chose it.
- `Cell`: mean, std, n, interval, protocol, the paper's number and the markers (best / tied, significant).
- `Provenance`: per sweep, the code commits, dirty trees, library versions, devices and revisions its completed
  records carry, and which of them are mixed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from peftbench.bench.config import BOOKKEEPING_TRAINER_KEYS
from peftbench.bench.significance import MARK, Run, interval_text, read_sidecar
from peftbench.core.store import COMPLETED, RunStore

KEYS = ["method", "model", "task", "rank"]
ROW_KEYS = ["method", "model", "rank"]
CELL_KEYS = [*KEYS, "variant", "setting"]  # what one main-table cell aggregates over (seeds, then lrs)
SETTING_PARTS = ("method", "model", "task", "trainer")  # the config's experiment subtrees (peftbench.bench.config)
TWO_STAGE = "lr_then_seeds"
FULL_GRID = frozenset({None, "grid"})  # no strategy recorded, or the default: every grid point ran
STRATEGIES = {TWO_STAGE: "the first seed over the lr grid, the other seeds only at the lr chosen on it"}
_MISSING = "(none)"


def task_label(task: str, data: str) -> str:
    """The task's column name: the offline protocol is always labelled."""
    return task if data == "hub" else f"{task} ({data})"


def rank_text(rank: object) -> str:
    return "–" if rank is None or pd.isna(rank) else str(int(rank))


def row_name(method: str, model: str, rank: object) -> str:
    """'lora r8 (roberta-base)', 'full (roberta-base)': a table row in prose."""
    return f"{method}{'' if rank_text(rank) == '–' else ' r' + rank_text(rank)} ({model})"


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Nested mappings as dotted keys: {"task": {"max_seq_length": 128}} -> {"task.max_seq_length": 128}."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def experiment(record: dict[str, Any]) -> dict[str, Any]:
    """The record's experiment configuration except seed and lr, as dotted keys (records without a `config`, from
    before it was recorded, are keyed by their names, rank and data alone)."""
    flat = {"method.name": record.get("method"), "model.name": record.get("model"), "task.name": record.get("task"),
            "rank": record.get("rank"), "data": record.get("data", "hub")}  # fmt: skip
    config = record.get("config") or {}
    for part in SETTING_PARTS:
        values = config.get(part)
        if isinstance(values, dict):
            if part == "trainer":
                values = {k: v for k, v in values.items() if k not in BOOKKEEPING_TRAINER_KEYS}
            flat.update(flatten(values, part))
    for extra in ("inputs", "revisions"):  # what the run read from outside its config
        if record.get(extra):
            flat.update(flatten(record[extra], extra))
    return flat


def setting_id(flat: dict[str, Any]) -> str:
    """A short hash of a flattened setting (12 hex digits, like a run_id)."""
    return hashlib.sha256(_canonical(flat).encode()).hexdigest()[:12]


def differing(settings: list[dict[str, Any]]) -> list[str]:
    """The keys whose value is not the same in every setting (a key some lack counts as differing)."""
    keys = sorted({key for flat in settings for key in flat})
    return [k for k in keys if len({_canonical(flat.get(k, _MISSING)) for flat in settings}) > 1]


def show_value(value: Any) -> str:
    return value if isinstance(value, str) else _canonical(value)


@dataclass(frozen=True)
class Cell:
    """One table cell as data: ours (×100: mean, std over n seeds, 95% interval, protocol), the paper's number when
    the table is a paper's, and the markers. The renderers derive every text and style from these fields."""

    mean: float = math.nan  # NaN: nothing of ours
    std: float = math.nan  # NaN: not shown (one seed, an Avg)
    n: int = 0
    interval: tuple[float, float] | None = None  # not ×100; None: [n/a]
    data: str = "hub"
    paper: float | None = None
    with_paper: bool = False  # a paper table's cell: "(paper, Δ)" follows ours
    signed: bool = False  # a difference: "+2.00 [+0.5, +3.5]"
    significant: bool = False  # † against the baseline
    style: str = ""  # "best" (bold), "tied" (underlined: not significantly different from the best) or ""

    @property
    def ours(self) -> str:
        if math.isnan(self.mean):
            return ""
        if self.signed:
            text = f"{self.mean:+.2f} {interval_text(self.interval, signed=True)}"
        else:
            text = f"{self.mean:.2f}" + ("" if math.isnan(self.std) else f" ± {self.std:.2f}")
            text += f" {interval_text(self.interval)}"
        text += MARK if self.significant else ""
        return f"{text} [{self.data}]" if self.with_paper and self.data != "hub" else text

    @property
    def delta(self) -> float | None:
        """ours − paper, where the cell prints one (ours under the paper's protocol beside a printed number)."""
        if not self.with_paper or self.paper is None or math.isnan(self.mean) or self.data != "hub":
            return None
        return self.mean - self.paper

    @property
    def published(self) -> str:
        """The paper's part: '(84.47, Δ +1.03)', '(84.47)' or ''."""
        if not self.with_paper or self.paper is None:
            return ""
        delta = self.delta
        return f"({self.paper:.2f})" if delta is None else f"({self.paper:.2f}, Δ {delta:+.2f})"

    @property
    def text(self) -> str:
        return " ".join(part for part in (self.ours, self.published) if part)

    @property
    def sort_value(self) -> float | None:
        """What the page sorts by: ours as shown, else the paper's number."""
        if not math.isnan(self.mean):
            return float(f"{self.mean:.2f}")
        return None if self.paper is None or not self.with_paper else float(f"{self.paper:.2f}")


def strategy_name(record: dict[str, Any]) -> str | None:
    """The sweep strategy a record names (its `strategy` is `{"name": ..., "stage": ...}`), None if it names none."""
    return (record.get("strategy") or {}).get("name")


def lr_cells(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Seed statistics of `value` per (keys, lr), failed runs left out (they are re-run). `select`: the seed-mean of
    `select_by` that chooses the lr — over every seed, or under the two-stage strategy over the first one; NaN (and
    `mean` too) where a seed diverged: that lr is not eligible."""
    done = rows[rows["status"].isin(list(COMPLETED))]
    first = done.groupby(keys, dropna=False)["seed"].transform("min")
    selecting = done["strategy"].ne(TWO_STAGE) | done["seed"].eq(first)
    done = done.assign(choose=done["select_by"].where(selecting))
    cells = (
        done.groupby([*keys, "lr"], dropna=False)
        .agg(
            mean=("value", "mean"),
            std=("value", "std"),
            seeds=("seed", "nunique"),
            diverged=("status", lambda s: int((s == "diverged").sum())),
            trainable_pct=("trainable_pct", "mean"),
            select=("choose", "mean"),
        )
        .reset_index()
    )
    cells.loc[cells["diverged"] > 0, ["mean", "select"]] = np.nan
    return cells


def best_by_lr(cells: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per `keys`: the eligible lr with the best `select` (ties: the smallest lr)."""
    eligible = cells.dropna(subset=["select"])
    index = eligible.groupby(keys, dropna=False)["select"].idxmax()
    return eligible.loc[index].reset_index(drop=True)


@dataclass(frozen=True)
class Provenance:
    """What a sweep's completed records say produced them: per field, each value with its number of records."""

    records: int
    fields: dict[str, Counter] = field(default_factory=dict)
    dirty: int = 0  # records run from a tree with uncommitted changes

    @property
    def mixed(self) -> list[str]:
        """The fields with more than one recorded value."""
        return [name for name, counts in self.fields.items() if len([v for v in counts if v is not None]) > 1]

    @property
    def flags(self) -> list[str]:
        """One phrase per reason not to read the sweep as one setup."""
        flags = [f"{name}: {len(self.fields[name])} values" for name in self.mixed]
        if self.dirty:
            flags.append(f"{self.dirty} of {self.records} records ran from a tree with uncommitted changes")
        return flags


def provenance(records: list[dict[str, Any]]) -> Provenance:
    done = [r for r in records if r.get("status") in COMPLETED]
    fields: dict[str, Counter] = defaultdict(Counter)
    for record in done:
        fields["code commit"][record.get("git_commit")] += 1
        for key, value in flatten(record.get("versions") or {}, "").items():
            fields[key][value] += 1
        fields["device"][record.get("device")] += 1
        for key, value in flatten(record.get("revisions") or {}, "revisions").items():
            fields[key][show_value(value)] += 1
    for counts in fields.values():  # a field some records lack: those count as not recorded
        missing = len(done) - sum(counts.values())
        if missing:
            counts[None] += missing
    return Provenance(len(done), dict(fields), sum(1 for r in done if r.get("git_dirty") is True))


class Results:
    """A sweep's records, read once. `runs` is the tidy frame; the other attributes are computed from it once."""

    def __init__(self, records: list[dict[str, Any]], sweep: str, sweep_dir: Path) -> None:
        self.sweep = sweep
        self.records = records
        self.sweep_dir = sweep_dir
        self.settings: dict[str, dict[str, Any]] = {}
        # rows shown per setting: "lora r8 (roberta-base)" -> the keys whose values differ in one of its cells
        self.split_rows: dict[str, list[str]] = {}
        self.runs = self._runs_frame()

    @classmethod
    def load(cls, store_root: str | Path, sweep: str) -> Results:
        """The records of `sweep` (corrupted files are skipped; `peftbench status` lists them)."""
        store = RunStore(store_root)
        return cls(list(store.iter_records(sweep)), sweep, store.sweep_dir(sweep))

    @property
    def empty(self) -> bool:
        return not self.records

    def _runs_frame(self) -> pd.DataFrame:
        rows = []
        for record in self.records:
            flat = experiment(record)
            setting = setting_id(flat)
            self.settings[setting] = flat
            metrics = record.get("metrics") or {}
            sidecar = record.get("predictions_file")
            data = record.get("data", "hub")
            rows.append({
                **flat, "run_id": record["run_id"], "method": record["method"], "model": record["model"],
                "task": task_label(record["task"], data), "task_name": record["task"], "data": data,
                "rank": record.get("rank"), "lr": float(record["lr"]), "seed": record["seed"],
                "status": record["status"], "primary": metrics.get("primary"),
                "primary_metric": record.get("primary_metric"), "trainable_pct": record.get("trainable_pct"),
                "peak_memory_bytes": record.get("peak_memory_bytes"), "train_seconds": record.get("train_seconds"),
                "predictions_path": str(self.sweep_dir / sidecar) if sidecar else None,
                "strategy": strategy_name(record), "setting": setting,
            })  # fmt: skip
        frame = pd.DataFrame(rows)
        if not frame.empty:
            frame["rank"] = frame["rank"].astype("Int64")
            frame["variant"] = self._variants(frame)
        return frame

    def _variants(self, frame: pd.DataFrame) -> pd.Series:
        """Per run, the label of its row variant: '' unless its (method, model, rank) row holds, in one column,
        completed runs of several settings; then the differing keys with this run's values."""
        labels = pd.Series("", index=frame.index, dtype=object)
        done = frame[frame["status"].isin(list(COMPLETED))]
        for (method, model, rank), row in done.groupby(ROW_KEYS, dropna=False, sort=True):
            conflicts = [list(s) for s in row.groupby("task")["setting"].unique() if len(s) > 1]
            if not conflicts:
                continue
            keys = sorted({key for cell in conflicts for key in differing([self.settings[s] for s in cell])})
            self.split_rows[row_name(method, model, rank)] = keys
            for index, setting in row["setting"].items():
                flat = self.settings[setting]
                labels[index] = ", ".join(f"{key}={show_value(flat.get(key, _MISSING))}" for key in keys)
        return labels

    @functools.cached_property
    def lr_cells(self) -> pd.DataFrame:
        """The main table's cells per lr: the primary metric's seed statistics per (method, model, task, rank,
        variant, setting, lr)."""
        if self.runs.empty:
            return pd.DataFrame(columns=[*CELL_KEYS, "lr", "mean", "std", "seeds", "diverged", "trainable_pct",
                                         "select"])  # fmt: skip
        return lr_cells(self.runs.assign(value=self.runs["primary"], select_by=self.runs["primary"]), CELL_KEYS)

    @functools.cached_property
    def best(self) -> pd.DataFrame:
        """Per main-table cell: its row of `lr_cells` at the chosen lr."""
        return best_by_lr(self.lr_cells, CELL_KEYS)

    @functools.cached_property
    def strategies(self) -> list[str]:
        """The sweep strategies its completed records name, other than the full grid."""
        done = [r for r in self.records if r.get("status") in COMPLETED]
        return sorted({strategy_name(r) for r in done} - FULL_GRID)

    @functools.cached_property
    def provenance(self) -> Provenance:
        return provenance(self.records)

    @functools.cache  # noqa: B019 (one Results per report: the cache lives as long as it)
    def metric_rows(self, select: str) -> pd.DataFrame:
        """One row per (completed record, metric): what a paper column may ask for.

        `select`: `final` (the trained model's evaluation) or `best` (the best evaluation during training, as papers
        that report the best dev score do; a record without one gives its final). A record that trained once and
        evaluated several sets (`commonsense`: `cs_boolq/accuracy`, …) gives one row per set under the set's name,
        its lr chosen by the record's primary metric (the mean over the sets), as the papers do; every other row
        selects by its own value. A diverged record gives one row per set it covers, with no value (its lr is not
        eligible there). `key` is the metric's name in the record, `predictions_path` its sidecar (final only)."""
        columns = ["method", "model", "task", "rank", "lr", "seed", "data", "status", "metric", "value", "select_by",
                   "run_id", "key", "primary_metric", "predictions_path", "strategy", "setting", "variant",
                   "trainable_pct"]  # fmt: skip
        rows = []
        if self.runs.empty:
            return pd.DataFrame(rows, columns=columns)
        for record, run in zip(self.records, self.runs.itertuples(index=False), strict=True):
            if record["status"] not in COMPLETED:
                continue
            base = {k: record.get(k) for k in ("method", "model", "task", "rank", "lr", "seed", "data", "status",
                                               "run_id", "primary_metric", "strategy", "trainable_pct")}  # fmt: skip
            base.update(setting=run.setting, variant=run.variant, data=run.data)
            base["predictions_path"] = run.predictions_path if select == "final" else None
            metrics = (record.get("best_metrics") if select == "best" else None) or record.get("metrics") or {}
            for metric, value in metrics.items():
                if not isinstance(value, int | float) or metric == "primary":
                    continue
                task, sep, name = metric.rpartition("/")
                if sep:
                    rows.append({**base, "task": task, "metric": name, "value": float(value), "key": metric,
                                 "select_by": float(metrics["primary"])})  # fmt: skip
                else:
                    rows.append({**base, "metric": metric, "value": float(value), "select_by": float(value),
                                 "key": metric})  # fmt: skip
            if record["status"] == "diverged":
                sets = ((record.get("config") or {}).get("task") or {}).get("evaluate") or []
                for task in sets if len(sets) > 1 else [base["task"]]:
                    rows.append({**base, "task": task, "metric": None, "value": np.nan, "select_by": np.nan})
        return pd.DataFrame(rows, columns=columns)

    def sidecar(self, path: str | None) -> list[dict[str, Any]] | None:
        """A run's predictions, read once per report whichever tables resample them."""
        if path is None or (isinstance(path, float) and np.isnan(path)):
            return None
        return self._sidecars(path)

    @functools.cache  # noqa: B019 (as metric_rows)
    def _sidecars(self, path: str) -> list[dict[str, Any]] | None:
        return read_sidecar(path)

    def bootstrap_runs(self, rows: pd.DataFrame, by_key: bool = False) -> list[Run]:
        """The runs behind one cell, for the bootstrap: the main table's read the record's primary metric, a paper
        column's (`by_key`) the metric `key` of each row."""
        runs = []
        for row in rows.itertuples(index=False):
            predictions = self.sidecar(row.predictions_path)
            if by_key:
                runs.append(Run(int(row.seed), predictions, row.key, row.primary_metric))
            else:
                metric = row.primary_metric if isinstance(row.primary_metric, str) else "primary"
                runs.append(Run(int(row.seed), predictions, metric, metric))
        return runs

    @functools.cached_property
    def adapter_counts(self) -> dict[tuple[str, str, int | None], int]:
        """Per (method, model, rank): the trainable parameters without the head its completed runs recorded (the
        most common value, in case tasks differ)."""
        counts: dict[tuple[str, str, int | None], Counter] = defaultdict(Counter)
        for record in self.records:
            trainable, head = record.get("trainable_params"), record.get("head_params")
            if record["status"] == "ok" and isinstance(trainable, int) and isinstance(head, int):
                counts[(record["method"], record["model"], record.get("rank"))][trainable - head] += 1
        return {key: counter.most_common(1)[0][0] for key, counter in counts.items()}
