"""A paper's table with our numbers beside the published ones: `peftbench report <sweep> --paper <table>`.

The layout is the paper's (its rows, its columns, its metric per column, from `conf/paper/<table>.yaml`).
Each cell reads "ours ± std (paper, Δ)": ours is the seed-mean of that column's metric at the best learning
rate of the sweep's records for the row's method, model and rank. A cell we have not run shows only
"(paper)"; a cell we ran only under the offline protocol is labelled `[offline]` and gets no Δ, since it
is not the paper's protocol; rows whose method peftbench lacks show the paper's numbers alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bench.config import CONF_DIR, check_choice
from bench.store import RunStore

PAPER_DIR = CONF_DIR / "paper"


def paper_tables() -> list[str]:
    return sorted(p.stem for p in PAPER_DIR.glob("*.yaml"))


def load_paper_table(name: str) -> dict[str, Any]:
    check_choice("paper table", name, paper_tables())
    return yaml.safe_load((PAPER_DIR / f"{name}.yaml").read_text())


COLUMNS = ["method", "model", "task", "rank", "lr", "seed", "data", "status", "metric", "value", "select_by"]


def metric_frame(store_root: str | Path, sweep: str, select: str = "final") -> pd.DataFrame:
    """One row per (record, metric): what a paper column may ask for, failed runs left out.

    `select`: the table's choice of evaluation, `final` (the trained model's) or `best` (the best evaluation
    during training, as papers that report the best dev score do; a record without one gives its final).

    A record that trained once and evaluated several sets (`commonsense`: metrics `cs_boolq/accuracy`,
    …) gives one row per set under the set's task name; its learning rate is chosen by the record's
    primary metric (the mean over the sets), as the papers do, not set by set. Every other row selects
    by its own value.
    """
    rows = []
    for record in RunStore(store_root).iter_records(sweep):
        if record["status"] not in ("ok", "diverged"):
            continue
        base = {k: record.get(k) for k in ("method", "model", "task", "rank", "lr", "seed", "data", "status")}
        metrics = (record.get("best_metrics") if select == "best" else None) or record.get("metrics") or {}
        for metric, value in metrics.items():
            if not isinstance(value, int | float) or metric == "primary":
                continue
            task, sep, name = metric.rpartition("/")
            if sep:
                rows.append({**base, "task": task, "metric": name, "value": float(value),
                             "select_by": float(metrics["primary"])})  # fmt: skip
            else:
                rows.append({**base, "metric": metric, "value": float(value), "select_by": float(value)})
        if record["status"] == "diverged":  # marks the lr ineligible for its task, or for each set it evaluates
            sets = ((record.get("config") or {}).get("task") or {}).get("evaluate") or []
            for task in sets if len(sets) > 1 else [base["task"]]:
                rows.append({**base, "task": task, "metric": None, "value": np.nan, "select_by": np.nan})
    return pd.DataFrame(rows, columns=COLUMNS)


def best_cell(runs: pd.DataFrame, metric: str) -> tuple[float, float, int] | None:
    """(mean, std, seeds) ×100 at the best lr; an lr with a diverged seed is not eligible."""
    diverged = set(runs.loc[runs["status"] == "diverged", "lr"])
    runs = runs[(runs["metric"] == metric) & ~runs["lr"].isin(diverged)]
    if runs.empty:
        return None
    by_lr = runs.groupby("lr").agg(
        mean=("value", "mean"), std=("value", "std"), count=("value", "count"), select=("select_by", "mean")
    )
    best = by_lr.loc[by_lr["select"].idxmax()]
    return 100 * best["mean"], 100 * best["std"], int(best["count"])


def _ours(frame: pd.DataFrame, row: dict, model: str, task: str, metric: str) -> tuple[Any, str] | None:
    """The best cell and its protocol ('hub' preferred over 'offline') for one paper cell."""
    if frame.empty or row.get("method") is None or task is None:
        return None
    rank = row.get("rank") if row["method"] != "full" else None
    rank_match = frame["rank"].isna() if rank is None else frame["rank"] == rank
    runs = frame[(frame["method"] == row["method"]) & (frame["model"] == model) & (frame["task"] == task) & rank_match]
    for data in ("hub", "offline"):
        cell = best_cell(runs[runs["data"] == data], metric)
        if cell is not None:
            return cell, data
    return None


def _text(ours: tuple[Any, str] | None, paper: float | None) -> str:
    paper_text = "" if paper is None else f"{paper:.2f}"
    if ours is None:
        return f"({paper_text})" if paper_text else ""
    (mean, std, seeds), data = ours
    value = f"{mean:.2f}" if seeds < 2 or np.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    if data != "hub":
        return f"{value} [{data}] ({paper_text})" if paper_text else f"{value} [{data}]"
    if paper is None:
        return value
    return f"{value} ({paper_text}, Δ {mean - paper:+.2f})"


def paper_report(store_root: str | Path, sweep: str, name: str) -> pd.DataFrame:
    """The paper's table with our cells filled in (display strings)."""
    table = load_paper_table(name)
    check_choice("paper table select", table.get("select", "final"), ["final", "best"])
    frame = metric_frame(store_root, sweep, table.get("select", "final"))
    rows = []
    for row in table["rows"]:
        model = row.get("model") or table.get("model")
        shown = {"Method": row["label"] + ("" if row.get("method") else " (not in peftbench)")}
        if any("rank" in r for r in table["rows"]):
            shown["r"] = "–" if row.get("rank") is None else str(row["rank"])
        ours_values = []
        for task, label, metric, paper in zip(
            table["columns"], table["column_labels"], table["metrics"], row["values"], strict=True
        ):
            ours = _ours(frame, row, model, task, metric)
            shown[label] = _text(ours, paper)
            ours_values.append(ours[0][0] if ours is not None and ours[1] == "hub" else None)
        if "avg" in row:
            complete = all(v is not None for v in ours_values)
            ours_avg = ((float(np.mean(ours_values)), np.nan, 1), "hub") if complete else None
            shown["Avg"] = _text(ours_avg, row["avg"])
        rows.append(shown)
    return pd.DataFrame(rows)


def write_paper_report(store_root: str | Path, sweep: str, name: str, out_root: str | Path) -> dict[str, Path]:
    from bench.report import to_latex, to_markdown

    shown = paper_report(store_root, sweep, name)
    table = load_paper_table(name)
    out = Path(out_root) / sweep / "tables"
    out.mkdir(parents=True, exist_ok=True)
    header = (
        f"{table['paper']} (arXiv {table['arxiv']}) Table {table['table']}"
        f"{', ' + table['model'] if table.get('model') else ''}: ours ± std over seeds at the best lr "
        "(paper, Δ = ours − paper); a cell with only (paper) was not run here; "
        "[offline] = our offline protocol, not the paper's.\n\n"
    )
    paths = {"md": out / f"paper_{name}.md", "tex": out / f"paper_{name}.tex", "csv": out / f"paper_{name}.csv"}
    paths["md"].write_text(header + to_markdown(shown))
    paths["tex"].write_text(to_latex(shown, pd.DataFrame(), [], 2 if "r" in shown.columns else 1))
    shown.to_csv(paths["csv"], index=False)
    return paths
