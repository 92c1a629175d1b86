"""Paper-style tables from the records of a sweep (pandas), as Markdown, LaTeX and CSV.

Selection follows the papers: per (method, model, task, rank) the learning rate with the best
seed-mean of the primary metric on the evaluation split; the cell shows that mean ± the seed std,
×100. A learning rate where any seed diverged is not eligible and counts as a failure in the
LR-sensitivity table. Runs under the offline protocol carry "(offline)" in their task column, so
they are never read as the paper's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.store import RunStore

KEYS = ["method", "model", "task", "rank"]
ROW_KEYS = ["method", "model", "rank"]


def task_label(task: str, data: str) -> str:
    """The task's column name: the offline protocol is always labelled."""
    return task if data == "hub" else f"{task} ({data})"


def load_frame(store_root: str | Path, sweep: str) -> pd.DataFrame:
    """One row per record (corrupted files are skipped; `peftbench status` lists them)."""
    rows = []
    for record in RunStore(store_root).iter_records(sweep):
        metrics = record.get("metrics") or {}
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
    """The report's tables: display strings, and the numbers behind them (for CSV and LaTeX bold)."""

    main: pd.DataFrame
    main_numbers: pd.DataFrame
    sensitivity: pd.DataFrame


def _average_columns(tasks: list[str]) -> dict[str, list[str]]:
    """One average per protocol: `Avg` over the hub tasks, `Avg (offline)` over the offline ones."""
    groups: dict[str, list[str]] = {}
    for task in tasks:
        suffix = task[task.index(" (") :] if " (" in task else ""
        groups.setdefault(f"Avg{suffix}", []).append(task)
    return groups


def main_table(best: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Methods × tasks: 'mean ± std' at the best lr, the average over tasks, and trainable %.

    Returns the display table and the numbers behind it (metrics ×100, as displayed).
    """
    tasks = sorted(best["task"].unique())
    averages = _average_columns(tasks)
    shown_rows, number_rows = [], []
    for key, group in best.groupby(ROW_KEYS, dropna=False, sort=True):
        by_task = group.set_index("task")
        numbers = {**dict(zip(ROW_KEYS, key, strict=True))}
        shown = {**numbers, "rank": _rank_text(numbers["rank"])}
        for task in tasks:
            mean, std = (by_task.at[task, "mean"], by_task.at[task, "std"]) if task in by_task.index else (np.nan,) * 2
            numbers[task] = 100 * mean
            shown[task] = format_cell(mean, std)
        for name, members in averages.items():
            means = [numbers[t] for t in members]
            numbers[name] = float(np.mean(means)) if not np.isnan(means).any() else np.nan
            shown[name] = "" if np.isnan(numbers[name]) else f"{numbers[name]:.2f}"
        numbers["Params %"] = float(group["trainable_pct"].mean())
        shown["Params %"] = f"{numbers['Params %']:.3f}"
        shown_rows.append(shown)
        number_rows.append(numbers)
    return pd.DataFrame(shown_rows), pd.DataFrame(number_rows)


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


def build_tables(frame: pd.DataFrame) -> Tables:
    cells = lr_cells(frame)
    shown, numbers = main_table(best_by_lr(cells))
    return Tables(main=shown, main_numbers=numbers, sensitivity=sensitivity_table(cells))


def to_markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, disable_numparse=True) + "\n"


def to_latex(shown: pd.DataFrame, numbers: pd.DataFrame, bold_columns: list[str], left_columns: int) -> str:
    """A booktabs table, the first `left_columns` left-aligned; the best of each `bold_columns` in bold."""
    body = shown.copy()
    for column in bold_columns:
        if column in numbers and numbers[column].notna().any():
            for best in numbers.index[np.isclose(numbers[column], numbers[column].max())]:  # ties: all bold
                body.loc[best, column] = f"\\textbf{{{body.loc[best, column]}}}"

    def escape(text: object) -> str:
        text = str(text)
        for char, replacement in (
            ("_", r"\_"),
            ("%", r"\%"),
            ("±", r"$\pm$"),
            ("Δ", r"$\Delta$"),
            ("–", "--"),
            ("&", r"\&"),
        ):
            text = text.replace(char, replacement)
        return text

    lines = [
        r"\begin{tabular}{" + "l" * left_columns + "r" * (len(body.columns) - left_columns) + "}",
        r"\toprule",
        " & ".join(escape(c) for c in body.columns) + r" \\",
        r"\midrule",
        *(" & ".join(escape(v) for v in row) + r" \\" for row in body.itertuples(index=False)),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def write_report(store_root: str | Path, sweep: str, out_root: str | Path = "results") -> dict[str, Path]:
    """Write the sweep's tables (md, tex, csv) and plots; returns the written paths by name."""
    from bench.plots import plot_cost, plot_lr_panels, plot_metric_vs_lr, plot_pareto

    frame = load_frame(store_root, sweep)
    if frame.empty:
        raise FileNotFoundError(f"no records for sweep {sweep!r} under {store_root}")
    tables = build_tables(frame)
    out = Path(out_root) / sweep
    (out / "tables").mkdir(parents=True, exist_ok=True)
    metric_columns = [c for c in tables.main.columns if c not in [*ROW_KEYS, "Params %"]]
    written = {
        "main.md": out / "tables" / "main.md",
        "main.tex": out / "tables" / "main.tex",
        "main.csv": out / "tables" / "main.csv",
        "lr_sensitivity.md": out / "tables" / "lr_sensitivity.md",
        "lr_sensitivity.tex": out / "tables" / "lr_sensitivity.tex",
        "lr_sensitivity.csv": out / "tables" / "lr_sensitivity.csv",
    }
    written["main.md"].write_text(to_markdown(tables.main))
    written["main.tex"].write_text(to_latex(tables.main, tables.main_numbers, metric_columns, len(ROW_KEYS)))
    tables.main_numbers.to_csv(written["main.csv"], index=False, float_format="%.4f")
    written["lr_sensitivity.md"].write_text(to_markdown(tables.sensitivity))
    written["lr_sensitivity.tex"].write_text(to_latex(tables.sensitivity, pd.DataFrame(), [], len(KEYS)))
    tables.sensitivity.to_csv(written["lr_sensitivity.csv"], index=False)
    metric_names = frame.dropna(subset=["primary_metric"]).groupby("task")["primary_metric"].first().to_dict()
    cells = lr_cells(frame)
    plots = [
        *plot_metric_vs_lr(cells, out / "plots", metric_names),
        *plot_lr_panels(cells, out / "plots"),
        *plot_pareto(tables.main_numbers, out / "plots"),
        *plot_cost(frame, out / "plots"),
    ]
    for path in plots:
        written[path.name] = path
    return written
