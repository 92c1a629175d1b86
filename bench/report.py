"""Paper-style tables from the records of a sweep (pandas), as Markdown, LaTeX and CSV.

Selection follows the papers: per (method, model, task, rank) the learning rate with the best
seed-mean of the primary metric on the evaluation split; the cell shows that mean ± the seed std,
×100, and its 95% bootstrap interval over seeds and eval examples (`bench.significance`). Per column the
best is bold and the rows not significantly different from it underlined; rows significantly different
from the baseline method (`--baseline`, default LoRA) carry a †, and `vs_baseline.*` lists each paired
difference with its interval. A learning rate where any seed diverged is not eligible and counts as a
failure in the LR-sensitivity table. Runs under the offline protocol carry "(offline)" in their task
column, so they are never read as the paper's numbers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

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

KEYS = ["method", "model", "task", "rank"]
ROW_KEYS = ["method", "model", "rank"]


def task_label(task: str, data: str) -> str:
    """The task's column name: the offline protocol is always labelled."""
    return task if data == "hub" else f"{task} ({data})"


def load_frame(store_root: str | Path, sweep: str) -> pd.DataFrame:
    """One row per record (corrupted files are skipped; `peftbench status` lists them)."""
    rows = []
    store = RunStore(store_root)
    for record in store.iter_records(sweep):
        metrics = record.get("metrics") or {}
        sidecar = record.get("predictions_file")
        rows.append(
            {
                "run_id": record["run_id"],
                "method": record["method"],
                "model": record["model"],
                "task": task_label(record["task"], record.get("data", "hub")),
                "rank": record.get("rank"),
                "lr": float(record["lr"]),
                "seed": record["seed"],
                "status": record["status"],
                "primary": metrics.get("primary"),
                "primary_metric": record.get("primary_metric"),
                "trainable_pct": record.get("trainable_pct"),
                "peak_memory_bytes": record.get("peak_memory_bytes"),
                "train_seconds": record.get("train_seconds"),
                "predictions_path": str(store.sweep_dir(sweep) / sidecar) if sidecar else None,
            }
        )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["rank"] = frame["rank"].astype("Int64")
    return frame


def lr_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Seed statistics per (method, model, task, rank, lr), failed runs excluded (they are re-run)."""
    done = frame[frame["status"].isin(["ok", "diverged"])]
    grouped = done.groupby([*KEYS, "lr"], dropna=False)
    cells = grouped.agg(
        mean=("primary", "mean"),
        std=("primary", "std"),
        seeds=("seed", "nunique"),
        diverged=("status", lambda s: int((s == "diverged").sum())),
        trainable_pct=("trainable_pct", "mean"),
    ).reset_index()
    cells.loc[cells["diverged"] > 0, "mean"] = np.nan
    return cells


def best_by_lr(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (method, model, task, rank): the eligible lr with the best seed-mean."""
    eligible = cells.dropna(subset=["mean"])
    index = eligible.groupby(KEYS, dropna=False)["mean"].idxmax()
    return eligible.loc[index].reset_index(drop=True)


def format_cell(mean: float, std: float) -> str:
    if pd.isna(mean):
        return ""
    text = f"{100 * mean:.2f}"
    return text if pd.isna(std) else f"{text} ± {100 * std:.2f}"


def _rank_text(rank: object) -> str:
    return "–" if pd.isna(rank) else str(int(rank))


@dataclass
class Tables:
    """The report's tables: display strings, the numbers behind them (CSV, plots), and the significance marks."""

    main: pd.DataFrame
    main_numbers: pd.DataFrame
    sensitivity: pd.DataFrame
    # per main cell: "best" (bold), "tied" (not significantly different from the best: underlined) or ""
    styles: pd.DataFrame = field(default_factory=pd.DataFrame)
    # one row per filled main cell: mean, its interval, and the paired difference to the row's baseline (×100)
    intervals: pd.DataFrame = field(default_factory=pd.DataFrame)
    vs_baseline: pd.DataFrame = field(default_factory=pd.DataFrame)  # display: those differences per row and column
    baseline: str | None = None


def _average_columns(tasks: list[str]) -> dict[str, list[str]]:
    """One average per protocol: `Avg` over the hub tasks, `Avg (offline)` over the offline ones."""
    groups: dict[str, list[str]] = {}
    for task in tasks:
        suffix = task[task.index(" (") :] if " (" in task else ""
        groups.setdefault(f"Avg{suffix}", []).append(task)
    return groups


def _row_key(method: str, model: str, rank: object) -> tuple[str, str, str]:
    return method, model, _rank_text(rank)


def cell_bootstraps(frame: pd.DataFrame, best: pd.DataFrame) -> dict[tuple[tuple[str, str, str], str], Bootstrap]:
    """Per ((method, model, rank), task): the bootstrap of its runs at the chosen lr, from their sidecars."""
    chosen = frame[frame["status"] == "ok"].merge(best[[*KEYS, "lr"]], on=[*KEYS, "lr"])
    result = {}
    for task, runs in chosen.groupby("task", sort=True):
        cells: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
        for run in runs.itertuples(index=False):
            metric = run.primary_metric if isinstance(run.primary_metric, str) else "primary"
            rows = read_sidecar(run.predictions_path)
            cells[_row_key(run.method, run.model, run.rank)].append(Run(int(run.seed), rows, metric, metric))
        result.update({(key, task): boot for key, boot in column_bootstrap(cells).items()})
    return result


def main_table(
    best: pd.DataFrame, boots: dict | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[int, str], Bootstrap]]:
    """Methods × tasks: 'mean ± std [interval]' at the best lr, the average over tasks, and trainable %.

    Returns the display table, the numbers behind it (metrics ×100, as displayed) and each metric cell's
    bootstrap by (table row, column); an Avg's is the mean of its tasks', resample by resample.
    """
    boots = boots or {}
    tasks = sorted(best["task"].unique())
    averages = _average_columns(tasks)
    shown_rows, number_rows, cell_boots = [], [], {}
    for index, (key, group) in enumerate(best.groupby(ROW_KEYS, dropna=False, sort=True)):
        by_task = group.set_index("task")
        numbers = {**dict(zip(ROW_KEYS, key, strict=True))}
        shown = {**numbers, "rank": _rank_text(numbers["rank"])}
        for task in tasks:
            mean, std = (by_task.at[task, "mean"], by_task.at[task, "std"]) if task in by_task.index else (np.nan,) * 2
            numbers[task] = 100 * mean
            cell = cell_boots[(index, task)] = boots.get((_row_key(*key), task), Bootstrap(reason="no runs"))
            shown[task] = "" if pd.isna(mean) else f"{format_cell(mean, std)} {interval_text(cell.interval)}"
        for name, members in averages.items():
            means = [numbers[t] for t in members]
            numbers[name] = float(np.mean(means)) if not np.isnan(means).any() else np.nan
            cell_boots[(index, name)] = average([cell_boots[(index, t)] for t in members])
            interval = interval_text(cell_boots[(index, name)].interval)
            shown[name] = "" if np.isnan(numbers[name]) else f"{numbers[name]:.2f} {interval}"
        numbers["Params %"] = float(group["trainable_pct"].mean())
        shown["Params %"] = f"{numbers['Params %']:.3f}"
        shown_rows.append(shown)
        number_rows.append(numbers)
    return pd.DataFrame(shown_rows), pd.DataFrame(number_rows), cell_boots


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


def baseline_comparisons(
    numbers: pd.DataFrame, columns: list[str], boots: dict[tuple[int, str], Bootstrap], baseline: str | None
) -> pd.DataFrame:
    """One row per filled cell: its mean and interval, and the paired difference to its row's baseline (×100)."""
    columns_out = ["row", "method", "model", "rank", "column", "mean", "ci_low", "ci_high", "baseline", "diff",
                   "diff_low", "diff_high", "significant"]  # fmt: skip
    if numbers.empty:
        return pd.DataFrame(columns=columns_out)
    keys = [_row_key(m, mo, r) for m, mo, r in zip(numbers["method"], numbers["model"], numbers["rank"], strict=True)]
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
            entry = {"row": i, "method": keys[i][0], "model": keys[i][1], "rank": keys[i][2], "column": column,
                     "mean": mean, "ci_low": 100 * interval[0], "ci_high": 100 * interval[1],
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


def _baseline_label(key: tuple[str, str, str]) -> str:
    return key[0] if key[2] == "–" else f"{key[0]} r{key[2]}"


def vs_baseline_table(shown: pd.DataFrame, intervals: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per row with a baseline: each column's paired difference '+2.00 [+0.5, +3.5]' († when significant)."""
    compared = intervals.dropna(subset=["diff"])
    rows = []
    for i, cells in compared.groupby("row", sort=True):
        row = {**shown.loc[i, ROW_KEYS].to_dict(), "baseline": cells["baseline"].iloc[0]}
        by_column = cells.set_index("column")
        for column in columns:
            if column not in by_column.index:
                row[column] = ""
                continue
            cell = by_column.loc[column]
            interval = None if pd.isna(cell["diff_low"]) else (cell["diff_low"] / 100, cell["diff_high"] / 100)
            mark = MARK if cell["significant"] is True else ""
            row[column] = f"{cell['diff']:+.2f} {interval_text(interval, signed=True)}{mark}"
        rows.append(row)
    return pd.DataFrame(rows, columns=[*ROW_KEYS, "baseline", *columns])


def caption(baseline: str | None, markdown: bool = True) -> str:
    """What the main table's numbers and marks mean."""
    bold, tied = ("**bold**", "<u>underlined</u>") if markdown else ("bold", "underlined")
    text = (
        f"Mean ± std over seeds (×100) at each row's best lr, then its 95% interval [low, high] ({TEST}); "
        f"{NO_INTERVAL}: no interval (a run without a predictions sidecar). Per column, {bold}: the best; {tied}: "
        "not significantly different from the best (the paired difference's 95% interval contains 0)"
    )
    if baseline:
        text += f"; {MARK}: significantly different from the baseline {baseline} ({BASELINE_ROW}; see vs_baseline)"
    return text + "."


def sensitivity_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (method, model, task, rank): the lr grid, the best lr, and the spread of seed-means over it."""
    rows = []
    for key, group in cells.groupby(KEYS, dropna=False, sort=True):
        group = group.sort_values("lr")
        valid = group.dropna(subset=["mean"])
        best = valid.loc[valid["mean"].idxmax()] if len(valid) else None
        rows.append(
            {
                **dict(zip(KEYS, key, strict=True)),
                "lr grid": ", ".join(f"{lr:g}" for lr in group["lr"]),
                "best lr": "" if best is None else f"{best['lr']:g}",
                "best": "" if best is None else f"{100 * best['mean']:.2f}",
                "worst": f"{100 * valid['mean'].min():.2f}" if len(valid) else "",
                "spread (max − min)": f"{100 * (valid['mean'].max() - valid['mean'].min()):.2f}" if len(valid) else "",
                # how forgiving the method is: grid points whose seed-mean is within 1 point of the best
                "lrs within 1 pt": (
                    f"{int((valid['mean'] >= valid['mean'].max() - 0.01 - 1e-12).sum())}/{len(group)}"
                    if len(valid)
                    else ""
                ),
                "diverged at lr": ", ".join(f"{lr:g}" for lr in group.loc[group["diverged"] > 0, "lr"]) or "none",
            }
        )
    table = pd.DataFrame(rows)
    if not table.empty:
        table["rank"] = table["rank"].map(_rank_text)
    return table


def build_tables(frame: pd.DataFrame, baseline: str | None = None) -> Tables:
    """All tables of a sweep; `baseline`: the method the others are compared with (default: lora if run)."""
    baseline = choose_baseline(frame["method"], baseline)
    cells = lr_cells(frame)
    best = best_by_lr(cells)
    shown, numbers, boots = main_table(best, cell_bootstraps(frame, best))
    columns = [c for c in shown.columns if c not in [*ROW_KEYS, "Params %"]]
    intervals = baseline_comparisons(numbers, columns, boots, baseline)
    for entry in intervals[intervals["significant"].eq(True)].itertuples(index=False):
        shown.at[entry.row, entry.column] += MARK
    return Tables(
        main=shown, main_numbers=numbers, sensitivity=sensitivity_table(cells),
        styles=column_styles(numbers, columns, boots), intervals=intervals,
        vs_baseline=vs_baseline_table(shown, intervals, columns), baseline=baseline,
    )  # fmt: skip


def _styled(table: pd.DataFrame, styles: pd.DataFrame | None, wraps: dict[str, str]) -> pd.DataFrame:
    body = table.copy()
    if styles is None or styles.empty:
        return body
    for column in body.columns:
        for i in body.index:
            wrap = wraps.get(styles.at[i, column]) if column in styles.columns else None
            if wrap and body.at[i, column] != "":
                body.at[i, column] = wrap.format(body.at[i, column])
    return body


def to_markdown(table: pd.DataFrame, styles: pd.DataFrame | None = None) -> str:
    """A pipe table; cells styled "best" in bold, "tied" underlined (`<u>`, which Markdown renderers keep)."""
    body = _styled(table, styles, {"best": "**{}**", "tied": "<u>{}</u>"})
    return body.to_markdown(index=False, disable_numparse=True) + "\n"


def _escape(text: object) -> str:
    text = str(text)
    for char, replacement in (
        ("_", r"\_"),
        ("%", r"\%"),
        ("±", r"$\pm$"),
        ("Δ", r"$\Delta$"),
        ("†", r"$^\dagger$"),
        ("‰", r"\textperthousand{}"),
        ("–", "--"),
        ("&", r"\&"),
    ):
        text = text.replace(char, replacement)
    return text


def to_latex(
    shown: pd.DataFrame, left_columns: int, styles: pd.DataFrame | None = None, caption: str | None = None
) -> str:
    """A booktabs table, the first `left_columns` left-aligned; cells styled "best" in bold, "tied" underlined.
    `caption` goes above it as a comment line (the file stays a bare tabular, for \\input in any float)."""
    body = shown.map(_escape)
    body = _styled(body, styles, {"best": "\\textbf{{{}}}", "tied": "\\underline{{{}}}"})
    lines = [
        *([f"% {caption}"] if caption else []),
        r"\begin{tabular}{" + "l" * left_columns + "r" * (len(body.columns) - left_columns) + "}",
        r"\toprule",
        " & ".join(_escape(c) for c in body.columns) + r" \\",
        r"\midrule",
        *(" & ".join(str(v) for v in row) + r" \\" for row in body.itertuples(index=False)),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


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


def write_report(
    store_root: str | Path, sweep: str, out_root: str | Path = "results", baseline: str | None = None
) -> dict[str, Path]:
    """Write the sweep's tables (md, tex, csv) and plots; returns the written paths by name."""
    from bench.plots import plot_cost, plot_intervals, plot_lr_panels, plot_metric_vs_lr, plot_pareto

    frame = load_frame(store_root, sweep)
    if frame.empty:
        raise FileNotFoundError(f"no records for sweep {sweep!r} under {store_root}")
    tables = build_tables(frame, baseline)
    out = Path(out_root) / sweep
    (out / "tables").mkdir(parents=True, exist_ok=True)
    written = {name: out / "tables" / name for name in (
        "main.md", "main.tex", "main.csv", "lr_sensitivity.md", "lr_sensitivity.tex", "lr_sensitivity.csv"
    )}  # fmt: skip
    written["main.md"].write_text(f"{caption(tables.baseline)}\n\n" + to_markdown(tables.main, tables.styles))
    written["main.tex"].write_text(
        to_latex(tables.main, len(ROW_KEYS), tables.styles, caption(tables.baseline, markdown=False))
    )
    csv_numbers(tables).to_csv(written["main.csv"], index=False, float_format="%.4f")
    if not tables.vs_baseline.empty:
        note = (f"Paired difference to the baseline {tables.baseline} ({BASELINE_ROW}), ×100, with its 95% interval "
                f"({TEST}); {MARK}: the interval excludes 0; {NO_INTERVAL}: no interval.")  # fmt: skip
        written["vs_baseline.md"] = out / "tables" / "vs_baseline.md"
        written["vs_baseline.md"].write_text(f"{note}\n\n" + to_markdown(tables.vs_baseline))
        written["vs_baseline.tex"] = out / "tables" / "vs_baseline.tex"
        written["vs_baseline.tex"].write_text(to_latex(tables.vs_baseline, len(ROW_KEYS) + 1, caption=note))
    written["lr_sensitivity.md"].write_text(to_markdown(tables.sensitivity))
    written["lr_sensitivity.tex"].write_text(to_latex(tables.sensitivity, len(KEYS)))
    tables.sensitivity.to_csv(written["lr_sensitivity.csv"], index=False)
    metric_names = frame.dropna(subset=["primary_metric"]).groupby("task")["primary_metric"].first().to_dict()
    cells = lr_cells(frame)
    plots = [
        *plot_metric_vs_lr(cells, out / "plots", metric_names),
        *plot_lr_panels(cells, out / "plots"),
        *plot_pareto(tables.main_numbers, out / "plots"),
        *plot_cost(frame, out / "plots"),
        *plot_intervals(tables.intervals, out / "plots"),
    ]
    for path in plots:
        written[path.name] = path
    return written
