"""A sweep's own tables, built from its results (`peftbench.bench.results`) and written as Markdown, LaTeX and CSV.

Selection follows the papers: per (method, model, task, rank) and setting the learning rate with the best
seed-mean of the primary metric on the evaluation split (`bench.results.best_by_lr`); the cell shows that mean ±
the seed std, ×100, and its 95% bootstrap interval over seeds and eval examples (`bench.significance`). Per column
the best is bold and the rows not significantly different from it underlined; rows significantly different from
the baseline method (`--baseline`, default LoRA) carry a †, and `vs_baseline.*` lists each paired difference with
its interval. A learning rate where any seed diverged is not eligible and counts as a failure in the
LR-sensitivity table. Runs under the offline protocol carry "(offline)" in their task column, so they are never
read as the paper's numbers. A row whose runs differ in more than seed and lr is shown once per setting, in a
`setting` column naming the keys that differ, with a line under the table saying so.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from peftbench.bench.render import Table, to_csv, to_latex, to_markdown
from peftbench.bench.results import CELL_KEYS, KEYS, ROW_KEYS, STRATEGIES, Cell, Results, rank_text
from peftbench.bench.significance import (
    BASELINE_ROW,
    MARK,
    NO_INTERVAL,
    TEST,
    Bootstrap,
    average,
    baseline_rows,
    choose_baseline,
    column_bootstrap,
    difference,
    excludes_zero,
    percentile_interval,
)

RowKey = tuple[str, str, str, str]  # method, model, rank as shown, the row's setting ('' unless split)


@dataclass
class Tables:
    """The sweep's tables (`bench.render.Table`: cells with their numbers and marks) and the numbers behind them."""

    main: Table
    main_numbers: pd.DataFrame  # metrics ×100 as displayed, Avg, Params % (CSV, plots)
    sensitivity: Table
    # one row per filled main cell: mean, its interval, and the paired difference to the row's baseline (×100)
    intervals: pd.DataFrame = field(default_factory=pd.DataFrame)
    vs_baseline: Table | None = None  # those differences per row and column; None: no row has a baseline
    baseline: str | None = None
    strategies: list[str] = field(default_factory=list)  # sweep strategies other than the full grid


def _average_columns(tasks: list[str]) -> dict[str, list[str]]:
    """One average per protocol: `Avg` over the hub tasks, `Avg (offline)` over the offline ones."""
    groups: dict[str, list[str]] = {}
    for task in tasks:
        suffix = task[task.index(" (") :] if " (" in task else ""
        groups.setdefault(f"Avg{suffix}", []).append(task)
    return groups


def _row_key(method: str, model: str, rank: object, variant: str = "") -> RowKey:
    return method, model, rank_text(rank), variant


def cell_bootstraps(results: Results) -> dict[tuple[RowKey, str], Bootstrap]:
    """Per (row, task): the bootstrap of its runs at the chosen lr, from their sidecars."""
    runs = results.runs
    chosen = runs[runs["status"] == "ok"].merge(results.best[[*CELL_KEYS, "lr"]], on=[*CELL_KEYS, "lr"])
    boots = {}
    for task, rows in chosen.groupby("task", sort=True):
        cells = defaultdict(list)
        for key, group in rows.groupby([*ROW_KEYS, "variant"], dropna=False, sort=False):
            cells[_row_key(*key)] = results.bootstrap_runs(group)
        boots.update({(key, task): boot for key, boot in column_bootstrap(cells).items()})
    return boots


def main_numbers(
    results: Results, boots: dict[tuple[RowKey, str], Bootstrap]
) -> tuple[pd.DataFrame, dict[tuple[int, str], tuple[float, float]], dict[tuple[int, str], Bootstrap]]:
    """Methods × tasks at the best lr: per row (method, model, rank, setting) the seed-mean of each task (×100),
    the average over tasks, and trainable %. Returns those numbers, each metric cell's (mean, std) ×100 and its
    bootstrap by (table row, column); an Avg's is the mean of its tasks', resample by resample."""
    best = results.best
    split = bool(results.split_rows)
    tasks = sorted(best["task"].unique())
    averages = _average_columns(tasks)
    rows, stats, cell_boots = [], {}, {}
    for index, (key, group) in enumerate(best.groupby([*ROW_KEYS, "variant"], dropna=False, sort=True)):
        by_task = group.set_index("task")
        numbers = dict(zip(ROW_KEYS, key[:3], strict=True)) | ({"setting": key[3]} if split else {})
        for task in tasks:
            mean, std = (by_task.at[task, "mean"], by_task.at[task, "std"]) if task in by_task.index else (np.nan,) * 2
            numbers[task] = 100 * mean
            stats[(index, task)] = (100 * mean, 100 * std)
            cell_boots[(index, task)] = boots.get((_row_key(*key), task), Bootstrap(reason="no runs"))
        for name, members in averages.items():
            means = [numbers[t] for t in members]
            numbers[name] = float(np.mean(means)) if not np.isnan(means).any() else np.nan
            stats[(index, name)] = (numbers[name], np.nan)
            cell_boots[(index, name)] = average([cell_boots[(index, t)] for t in members])
        numbers["Params %"] = float(group["trainable_pct"].mean())
        rows.append(numbers)
    columns = [*ROW_KEYS, *(["setting"] if split else []), *tasks, *averages, "Params %"]
    return pd.DataFrame(rows, columns=columns), stats, cell_boots


def column_styles(numbers: pd.DataFrame, columns: list[str], boots: dict[tuple[int, str], Bootstrap]) -> pd.DataFrame:
    """Per column: the best mean is "best" (ties: all), a row whose paired difference to it has a 95% interval
    containing 0 is "tied"; a row without an interval (or a best without one) is never "tied"."""
    styles = pd.DataFrame("", index=numbers.index, columns=numbers.columns)
    for column in columns:
        values = numbers[column]
        if not values.notna().any():
            continue
        best = list(numbers.index[np.isclose(values, values.max())])
        styles.loc[best, column] = "best"
        reference = next((boots[(i, column)] for i in best if boots[(i, column)].values is not None), None)
        for i in numbers.index[values.notna()]:
            diff = None if reference is None or i in best else difference(boots[(i, column)], reference)
            if diff is not None and excludes_zero(percentile_interval(diff)) is False:
                styles.at[i, column] = "tied"
    return styles


def _row_keys(numbers: pd.DataFrame) -> list[RowKey]:
    variants = numbers["setting"] if "setting" in numbers.columns else [""] * len(numbers)
    return [_row_key(*key) for key in zip(numbers["method"], numbers["model"], numbers["rank"], variants, strict=True)]


def baseline_comparisons(
    numbers: pd.DataFrame, columns: list[str], boots: dict[tuple[int, str], Bootstrap], baseline: str | None
) -> pd.DataFrame:
    """One row per filled cell: its mean and interval, and the paired difference to its row's baseline (×100)."""
    split = "setting" in numbers.columns
    columns_out = ["row", "method", "model", "rank", *(["setting"] if split else []), "column", "mean", "ci_low",
                   "ci_high", "baseline", "diff", "diff_low", "diff_high", "significant"]  # fmt: skip
    if numbers.empty:
        return pd.DataFrame(columns=columns_out)
    keys = _row_keys(numbers)
    bases = baseline_rows(keys, baseline)
    rows = []
    for column in columns:
        for i in numbers.index:
            j = bases.get(i)
            mean = numbers.at[i, column]
            if pd.isna(mean):
                continue
            cell = boots[(i, column)]
            interval = cell.interval or (np.nan, np.nan)
            entry = {"row": i, "method": keys[i][0], "model": keys[i][1], "rank": keys[i][2],
                     **({"setting": keys[i][3]} if split else {}), "column": column, "mean": mean,
                     "ci_low": 100 * interval[0], "ci_high": 100 * interval[1],
                     "baseline": None if j is None else _baseline_label(keys[j]), "diff": np.nan,
                     "diff_low": np.nan, "diff_high": np.nan, "significant": None}  # fmt: skip
            if j is not None and pd.notna(numbers.at[j, column]):
                diff = difference(cell, boots[(j, column)])
                diff_interval = None if diff is None else percentile_interval(diff)
                low, high = diff_interval or (np.nan, np.nan)
                entry.update(diff=mean - numbers.at[j, column], diff_low=100 * low, diff_high=100 * high,
                             significant=excludes_zero(diff_interval))  # fmt: skip
            rows.append(entry)
    return pd.DataFrame(rows, columns=columns_out)


def _baseline_label(key: RowKey) -> str:
    label = key[0] if key[2] == "–" else f"{key[0]} r{key[2]}"
    return f"{label} [{key[3]}]" if key[3] else label


def vs_baseline_table(labels: list[list[str]], intervals: pd.DataFrame, columns: list[str]) -> Table | None:
    """Per row with a baseline: each column's paired difference '+2.00 [+0.5, +3.5]' († when significant)."""
    compared = intervals.dropna(subset=["diff"])
    if compared.empty:
        return None
    rows = []
    for i, cells in compared.groupby("row", sort=True):
        row: list = [*labels[i], cells["baseline"].iloc[0]]
        by_column = cells.set_index("column")
        for column in columns:
            if column not in by_column.index:
                row.append("")
                continue
            cell = by_column.loc[column]
            interval = None if pd.isna(cell["diff_low"]) else (cell["diff_low"] / 100, cell["diff_high"] / 100)
            row.append(Cell(mean=cell["diff"], interval=interval, signed=True, significant=cell["significant"] is True))
        rows.append(row)
    label_columns = [*ROW_KEYS, *(["setting"] if "setting" in intervals.columns else [])]
    return Table([*label_columns, "baseline", *columns], rows, len(label_columns) + 1)


def strategy_text(strategies: list[str]) -> str:
    """The caption's sentence on a sweep that did not run its full grid ('' when it did)."""
    if not strategies:
        return ""
    described = "; ".join(f"{s} ({STRATEGIES[s]})" if s in STRATEGIES else s for s in strategies)
    return f" Sweep strategy {described}: not the full grid, each cell's lr chosen on its first seed."


def caption(baseline: str | None, markdown: bool = True, strategies: list[str] | None = None) -> str:
    """What the main table's numbers and marks mean."""
    bold, tied = ("**bold**", "<u>underlined</u>") if markdown else ("bold", "underlined")
    text = (
        f"Mean ± std over seeds (×100) at each row's best lr, then its 95% interval [low, high] ({TEST}); "
        f"{NO_INTERVAL}: no interval (a run without a predictions sidecar). Per column, {bold}: the best; {tied}: "
        "not significantly different from the best (the paired difference's 95% interval contains 0)"
    )
    if baseline:
        text += f"; {MARK}: significantly different from the baseline {baseline} ({BASELINE_ROW}; see vs_baseline)"
    return text + "." + strategy_text(strategies or [])


def split_note(results: Results) -> list[str]:
    """The line under a table whose rows are split by setting (none when no row is)."""
    if not results.split_rows:
        return []
    rows = "; ".join(f"{row} by {', '.join(keys)}" for row, keys in results.split_rows.items())
    return [f"Rows shown per setting, never averaged: their runs differ in more than seed and lr ({rows})."]


def sensitivity_table(results: Results) -> Table:
    """Per (method, model, task, rank) and setting: the lr grid, the best lr, and the spread of seed-means over it
    (under the two-stage strategy, of the first seed's values, on which the lr was chosen)."""
    split = bool(results.split_rows)
    rows = []
    for key, group in results.lr_cells.groupby([*KEYS, "variant"], dropna=False, sort=True):
        group = group.sort_values("lr")
        valid = group.dropna(subset=["select"])
        best = valid.loc[valid["select"].idxmax()] if len(valid) else None
        values = valid["select"]
        rows.append([
            *key[:3], rank_text(key[3]), *([key[4]] if split else []),
            ", ".join(f"{lr:g}" for lr in group["lr"]),
            "" if best is None else f"{best['lr']:g}",
            "" if best is None else f"{100 * best['select']:.2f}",
            f"{100 * values.min():.2f}" if len(valid) else "",
            f"{100 * (values.max() - values.min()):.2f}" if len(valid) else "",
            # how forgiving the method is: grid points whose seed-mean is within 1 point of the best
            f"{int((values >= values.max() - 0.01 - 1e-12).sum())}/{len(group)}" if len(valid) else "",
            ", ".join(f"{lr:g}" for lr in group.loc[group["diverged"] > 0, "lr"]) or "none",
        ])  # fmt: skip
    labels = [*KEYS, *(["setting"] if split else [])]
    columns = [*labels, "lr grid", "best lr", "best", "worst", "spread (max − min)", "lrs within 1 pt",
               "diverged at lr"]  # fmt: skip
    return Table(columns, rows, len(labels), notes=split_note(results))


def build_tables(results: Results, baseline: str | None = None) -> Tables:
    """All tables of a sweep; `baseline`: the method the others are compared with (default: lora if run)."""
    baseline = choose_baseline(results.runs["method"], baseline)
    numbers, stats, boots = main_numbers(results, cell_bootstraps(results))
    labels = len(ROW_KEYS) + ("setting" in numbers.columns)
    columns = [c for c in numbers.columns[labels:] if c != "Params %"]
    intervals = baseline_comparisons(numbers, columns, boots, baseline)
    significant = {(e.row, e.column) for e in intervals[intervals["significant"].eq(True)].itertuples(index=False)}
    styles = column_styles(numbers, columns, boots)
    shown_labels = [
        [m, mo, rank_text(r), *rest] for m, mo, r, *rest in numbers.iloc[:, :labels].itertuples(index=False)
    ]
    rows = []
    for i, label in enumerate(shown_labels):
        cells = [
            Cell(*stats[(i, c)], interval=boots[(i, c)].interval, significant=(i, c) in significant,
                 style=styles.at[i, c])
            for c in columns
        ]  # fmt: skip
        rows.append([*label, *cells, f"{numbers.at[i, 'Params %']:.3f}"])
    main = Table(list(numbers.columns), rows, labels, notes=split_note(results))
    return Tables(
        main=main, main_numbers=numbers, sensitivity=sensitivity_table(results), intervals=intervals,
        vs_baseline=vs_baseline_table(shown_labels, intervals, columns), baseline=baseline,
        strategies=results.strategies,
    )  # fmt: skip


def csv_numbers(tables: Tables) -> pd.DataFrame:
    """The main table's numbers, then per column its interval, the difference to the baseline, its interval and
    whether it is significant (blank where there is none)."""
    table = tables.main_numbers.copy()
    intervals = tables.intervals
    table["baseline"] = intervals.groupby("row")["baseline"].first().reindex(table.index)
    for column in [c for c in tables.main.columns if c in set(intervals["column"])]:
        part = intervals[intervals["column"] == column].set_index("row")
        for stat in ("ci_low", "ci_high", "diff", "diff_low", "diff_high", "significant"):
            table[f"{column} {stat}"] = part[stat].reindex(table.index)
    return table


def _plot_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows split by setting plot as separate series: the setting joins the method's name."""
    column = "variant" if "variant" in frame.columns else "setting"
    if column not in frame.columns or not frame[column].astype(bool).any():
        return frame
    method = [m if not v else f"{m} [{v}]" for m, v in zip(frame["method"], frame[column], strict=True)]
    return frame.assign(method=method)


def write_tables(results: Results, tables: Tables, out_root: str | Path) -> dict[str, Path]:
    """Write the sweep's tables (md, tex, csv) and plots; returns the written paths by name."""
    from peftbench.bench.plots import plot_cost, plot_intervals, plot_lr_panels, plot_metric_vs_lr, plot_pareto

    out = Path(out_root) / results.sweep
    (out / "tables").mkdir(parents=True, exist_ok=True)
    written = {name: out / "tables" / name for name in (
        "main.md", "main.tex", "main.csv", "lr_sensitivity.md", "lr_sensitivity.tex", "lr_sensitivity.csv"
    )}  # fmt: skip
    title = caption(tables.baseline, strategies=tables.strategies)
    written["main.md"].write_text(f"{title}\n\n" + to_markdown(tables.main))
    written["main.tex"].write_text(
        to_latex(tables.main, caption(tables.baseline, markdown=False, strategies=tables.strategies))
    )
    csv_numbers(tables).to_csv(written["main.csv"], index=False, float_format="%.4f")
    if tables.vs_baseline is not None:
        note = (f"Paired difference to the baseline {tables.baseline} ({BASELINE_ROW}), ×100, with its 95% interval "
                f"({TEST}); {MARK}: the interval excludes 0; {NO_INTERVAL}: no interval.")  # fmt: skip
        written["vs_baseline.md"] = out / "tables" / "vs_baseline.md"
        written["vs_baseline.md"].write_text(f"{note}\n\n" + to_markdown(tables.vs_baseline))
        written["vs_baseline.tex"] = out / "tables" / "vs_baseline.tex"
        written["vs_baseline.tex"].write_text(to_latex(tables.vs_baseline, caption=note))
    written["lr_sensitivity.md"].write_text(to_markdown(tables.sensitivity))
    written["lr_sensitivity.tex"].write_text(to_latex(tables.sensitivity))
    to_csv(tables.sensitivity, written["lr_sensitivity.csv"])
    frame = results.runs
    metric_names = frame.dropna(subset=["primary_metric"]).groupby("task")["primary_metric"].first().to_dict()
    cells = _plot_labels(results.lr_cells)
    plots = [
        *plot_metric_vs_lr(cells, out / "plots", metric_names),
        *plot_lr_panels(cells, out / "plots"),
        *plot_pareto(_plot_labels(tables.main_numbers), out / "plots"),
        *plot_cost(_plot_labels(frame), out / "plots"),
        *plot_intervals(_plot_labels(tables.intervals), out / "plots"),
    ]
    for path in plots:
        written[path.name] = path
    return written


def write_report(
    store_root: str | Path, sweep: str, out_root: str | Path = "results", baseline: str | None = None
) -> dict[str, Path]:
    """Read the sweep's records, build its tables once and write them with the plots; returns the paths by name."""
    results = Results.load(store_root, sweep)
    if results.empty:
        raise FileNotFoundError(f"no records for sweep {sweep!r} under {store_root}")
    return write_tables(results, build_tables(results, baseline), out_root)
