"""A paper's table with our numbers beside the published ones: `peftbench report <sweep> --paper <table>`.

The layout is the paper's (its rows, its columns, its metric per column, from `conf/paper/<table>.yaml`).
Each cell reads "ours ± std [interval]† (paper, Δ)": ours is the seed-mean of that column's metric at the best
learning rate of the sweep's records for the row's method, model and rank; [interval] its 95% bootstrap interval
over seeds and eval examples (`bench.significance`; `[n/a]` without predictions sidecars, and for tables that
select the best evaluation during training, which the sidecar, written at the end, does not hold); † marks a cell
significantly different from the baseline's row (`--baseline`, default the table's LoRA row of the same model).
A cell we have not run shows only "(paper)"; a cell we ran only under the offline protocol is labelled
`[offline]` and gets no Δ, since it is not the paper's protocol; rows whose method peftbench lacks show the
paper's numbers alone. A table whose rows span several models gets a Model column; a table with a params column
shows it as "ours (paper)" in the paper's unit (`bench.paper_params.row_params`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bench.config import CONF_DIR, check_choice
from bench.significance import (
    BASELINE_ROW,
    MARK,
    NO_INTERVAL,
    TEST,
    Bootstrap,
    Run,
    average,
    baseline_rows,
    choose_baseline,
    column_bootstrap,
    difference,
    excludes_zero,
    interval_text,
    percentile_interval,
    read_sidecar,
)
from core.store import RunStore

PAPER_DIR = CONF_DIR / "paper"


def paper_tables() -> list[str]:
    return sorted(p.stem for p in PAPER_DIR.glob("*.yaml"))


def load_paper_table(name: str) -> dict[str, Any]:
    check_choice("paper table", name, paper_tables())
    return yaml.safe_load((PAPER_DIR / f"{name}.yaml").read_text())


COLUMNS = [
    "method", "model", "task", "rank", "lr", "seed", "data", "status", "metric", "value", "select_by",
    "run_id", "key", "primary_metric", "predictions_path",
]  # fmt: skip


def metric_frame(store_root: str | Path, sweep: str, select: str = "final") -> pd.DataFrame:
    """One row per (record, metric): what a paper column may ask for, failed runs left out.

    `select`: the table's choice of evaluation, `final` (the trained model's) or `best` (the best evaluation
    during training, as papers that report the best dev score do; a record without one gives its final).

    A record that trained once and evaluated several sets (`commonsense`: metrics `cs_boolq/accuracy`,
    …) gives one row per set under the set's task name; its learning rate is chosen by the record's
    primary metric (the mean over the sets), as the papers do, not set by set. Every other row selects
    by its own value. `key` is the metric's name in the record, `predictions_path` its sidecar (or None).
    """
    rows = []
    store = RunStore(store_root)
    for record in store.iter_records(sweep):
        if record["status"] not in ("ok", "diverged"):
            continue
        base = {k: record.get(k) for k in ("method", "model", "task", "rank", "lr", "seed", "data", "status",
                                           "run_id", "primary_metric")}  # fmt: skip
        sidecar = record.get("predictions_file")
        base["predictions_path"] = str(store.sweep_dir(sweep) / sidecar) if sidecar and select == "final" else None
        metrics = (record.get("best_metrics") if select == "best" else None) or record.get("metrics") or {}
        for metric, value in metrics.items():
            if not isinstance(value, int | float) or metric == "primary":
                continue
            task, sep, name = metric.rpartition("/")
            if sep:
                rows.append({**base, "task": task, "metric": name, "value": float(value), "key": metric,
                             "select_by": float(metrics["primary"])})  # fmt: skip
            else:
                rows.append({**base, "metric": metric, "value": float(value), "select_by": float(value), "key": metric})
        if record["status"] == "diverged":  # marks the lr ineligible for its task, or for each set it evaluates
            sets = ((record.get("config") or {}).get("task") or {}).get("evaluate") or []
            for task in sets if len(sets) > 1 else [base["task"]]:
                rows.append({**base, "task": task, "metric": None, "value": np.nan, "select_by": np.nan})
    return pd.DataFrame(rows, columns=COLUMNS)


def best_runs(runs: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """The runs at the best lr for `metric` (by seed-mean of what selects); an lr with a diverged seed is not
    eligible."""
    diverged = set(runs.loc[runs["status"] == "diverged", "lr"])
    runs = runs[(runs["metric"] == metric) & ~runs["lr"].isin(diverged)]
    if runs.empty:
        return None
    select = runs.groupby("lr")["select_by"].mean()
    return runs[runs["lr"] == select.idxmax()]


@dataclass(frozen=True)
class Ours:
    """Our side of one paper cell: seed mean and std (×100), seeds, protocol, and the runs behind it."""

    mean: float
    std: float
    seeds: int
    data: str
    runs: pd.DataFrame | None = None


def _ours(frame: pd.DataFrame, row: dict, model: str, task: str, metric: str) -> Ours | None:
    """The best cell and its protocol ('hub' preferred over 'offline') for one paper cell."""
    if frame.empty or row.get("method") is None or task is None:
        return None
    rank = row.get("rank") if row["method"] != "full" else None
    rank_match = frame["rank"].isna() if rank is None else frame["rank"] == rank
    runs = frame[(frame["method"] == row["method"]) & (frame["model"] == model) & (frame["task"] == task) & rank_match]
    if row.get("lr") is not None:  # a row printed at one lr (GOAT Table 6) is compared with the runs at that lr
        runs = runs[np.isclose(runs["lr"].astype(float), float(row["lr"]))]
    for data in ("hub", "offline"):
        chosen = best_runs(runs[runs["data"] == data], metric)
        if chosen is not None:
            values = chosen["value"]
            return Ours(100 * values.mean(), 100 * values.std(), int(values.count()), data, chosen)
    return None


def _runs(ours: Ours | None) -> list[Run] | None:
    if ours is None or ours.runs is None:
        return None
    return [Run(int(r.seed), read_sidecar(r.predictions_path), r.key, r.primary_metric)
            for r in ours.runs.itertuples(index=False)]  # fmt: skip


def _text(ours: Ours | None, paper: float | None, boot: Bootstrap | None = None, mark: str = "") -> str:
    paper_text = "" if paper is None else f"{paper:.2f}"
    if ours is None:
        return f"({paper_text})" if paper_text else ""
    value = f"{ours.mean:.2f}" if ours.seeds < 2 or np.isnan(ours.std) else f"{ours.mean:.2f} ± {ours.std:.2f}"
    value += f" {interval_text(None if boot is None else boot.interval)}{mark}"
    if ours.data != "hub":
        return f"{value} [{ours.data}] ({paper_text})" if paper_text else f"{value} [{ours.data}]"
    if paper is None:
        return value
    return f"{value} ({paper_text}, Δ {ours.mean - paper:+.2f})"


def _params_text(printed: str | None, ours: str | None) -> str:
    if ours is None:
        return "" if printed is None else f"({printed})"
    return ours if printed is None else f"{ours} ({printed})"


def measured_adapters(store_root: str | Path, sweep: str) -> dict[tuple[str, str, int | None], int]:
    """Per (method, model, rank): the trainable parameters without the head that its completed runs recorded
    (the most common value, in case tasks differ)."""
    counts: dict[tuple[str, str, int | None], Counter] = defaultdict(Counter)
    for record in RunStore(store_root).iter_records(sweep):
        trainable, head = record.get("trainable_params"), record.get("head_params")
        if record["status"] == "ok" and isinstance(trainable, int) and isinstance(head, int):
            rank = None if record["method"] == "full" else record.get("rank")
            counts[(record["method"], record["model"], rank)][trainable - head] += 1
    return {key: counter.most_common(1)[0][0] for key, counter in counts.items()}


def _significance(
    table: dict, ours: dict[tuple[int, int], Ours | None], keys: list[tuple[str, str, str]], baseline: str | None
) -> tuple[dict[tuple[int, int | str], Bootstrap], dict[tuple[int, int | str], str]]:
    """Per (row, column) — column "avg" for the Avg — the cell's bootstrap and its mark against the row's baseline."""
    boots: dict[tuple[int, int | str], Bootstrap] = {}
    for c in range(len(table["columns"])):
        cells = {i: runs for (i, col), cell in ours.items() if col == c and (runs := _runs(cell))}
        boots.update({(i, c): boot for i, boot in column_bootstrap(cells).items()})
    columns = range(len(table["columns"]))
    for i in range(len(keys)):
        if all(ours.get((i, c)) is not None and ours[(i, c)].data == "hub" for c in columns):
            boots[(i, "avg")] = average([boots.get((i, c), Bootstrap(reason="no runs")) for c in columns])
    marks = {}
    for i, j in baseline_rows(keys, baseline).items():
        for column in [*columns, "avg"]:
            if (i, column) in boots and (j, column) in boots:
                diff = difference(boots[(i, column)], boots[(j, column)])
                significant = diff is not None and excludes_zero(percentile_interval(diff))
                marks[(i, column)] = MARK if significant else ""
    return boots, marks


def paper_report(store_root: str | Path, sweep: str, name: str, baseline: str | None = None) -> pd.DataFrame:
    """The paper's table with our cells filled in (display strings); `baseline`: the method each row is tested
    against (default: the table's LoRA rows, when run)."""
    return _paper_report(store_root, sweep, name, baseline)[0]


def _paper_report(
    store_root: str | Path, sweep: str, name: str, baseline: str | None
) -> tuple[pd.DataFrame, str | None]:
    from bench.paper_params import params_label, row_params  # it reads the tables through this module

    table = load_paper_table(name)
    check_choice("paper table select", table.get("select", "final"), ["final", "best"])
    frame = metric_frame(store_root, sweep, table.get("select", "final"))
    run_methods = set(frame["method"]) & {row.get("method") for row in table["rows"]}
    baseline = choose_baseline(run_methods, baseline)
    models = [row.get("model") or table.get("model") for row in table["rows"]]
    keys = [(str(row.get("method")), str(models[i]), str(row.get("rank"))) for i, row in enumerate(table["rows"])]
    ours = {
        (i, c): _ours(frame, row, models[i], task, metric)
        for i, row in enumerate(table["rows"])
        for c, (task, metric) in enumerate(zip(table["columns"], table["metrics"], strict=True))
    }
    boots, marks = _significance(table, ours, keys, baseline)
    measured = measured_adapters(store_root, sweep) if table.get("params") else {}
    params_column = params_label(table)
    rows = []
    for i, row in enumerate(table["rows"]):
        shown = {"Model": models[i]} if len(set(models)) > 1 else {}
        shown["Method"] = row["label"] + ("" if row.get("method") else " (not in peftbench)")
        if any("rank" in r for r in table["rows"]):
            shown["r"] = "–" if row.get("rank") is None else str(row["rank"])
        if params_column:
            rank = None if row.get("method") == "full" else row.get("rank")
            adapter = measured.get((row.get("method"), models[i], rank))
            shown[params_column] = _params_text(*row_params(table, row, adapter))
        for c, (label, paper) in enumerate(zip(table["column_labels"], row["values"], strict=True)):
            shown[label] = _text(ours[(i, c)], paper, boots.get((i, c)), marks.get((i, c), ""))
        if "avg" in row:
            cells = [ours[(i, c)] for c in range(len(table["columns"]))]
            complete = all(cell is not None and cell.data == "hub" for cell in cells)
            ours_avg = Ours(float(np.mean([cell.mean for cell in cells])), np.nan, 1, "hub") if complete else None
            shown["Avg"] = _text(ours_avg, row["avg"], boots.get((i, "avg")), marks.get((i, "avg"), ""))
        rows.append(shown)
    return pd.DataFrame(rows), baseline


def write_paper_report(
    store_root: str | Path, sweep: str, name: str, out_root: str | Path, baseline: str | None = None
) -> dict[str, Path]:
    from bench.paper_params import params_label
    from bench.report import to_latex, to_markdown

    shown, baseline = _paper_report(store_root, sweep, name, baseline)
    table = load_paper_table(name)
    out = Path(out_root) / sweep / "tables"
    out.mkdir(parents=True, exist_ok=True)
    header = (
        f"{table['paper']} (arXiv {table['arxiv']}) Table {table['table']}"
        f"{', ' + table['model'] if table.get('model') else ''}: each cell is ours ± std over seeds at the best lr, "
        f"[its 95% interval] ({TEST}; {NO_INTERVAL}: runs without a predictions sidecar)"
        + (f", {MARK} when significantly different from {baseline} ({BASELINE_ROW})" if baseline else "")
        + ", then (paper, Δ = ours − paper); a cell with only (paper) was not run here; "
        "[offline] = our offline protocol, not the paper's."
        + (f" {params_label(table)}: ours (paper), in the paper's unit." if table.get("params") else "")
    )
    left = sum(column in shown.columns for column in ("Model", "Method", "r"))
    paths = {"md": out / f"paper_{name}.md", "tex": out / f"paper_{name}.tex", "csv": out / f"paper_{name}.csv"}
    paths["md"].write_text(f"{header}\n\n" + to_markdown(shown))
    paths["tex"].write_text(to_latex(shown, left, caption=header))
    shown.to_csv(paths["csv"], index=False)
    return paths
