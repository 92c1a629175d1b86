"""A paper's table with our numbers beside the published ones: `peftbench report <sweep> --paper <table>`.

The layout is the paper's (its rows, its columns, its metric per column, from `conf/paper/<table>.yaml`).
Each cell reads "ours ± std [interval]† (paper, Δ)": ours is the seed-mean of that column's metric at the best
learning rate of the sweep's records for the row's method, model and rank (`bench.results.best_by_lr`, the rule
of every table); [interval] its 95% bootstrap interval over seeds and eval examples (`bench.significance`; `[n/a]`
without predictions sidecars, and for tables that select the best evaluation during training, which the sidecar,
written at the end, does not hold); † marks a cell significantly different from the baseline's row (`--baseline`,
default the table's LoRA row of the same model). A cell we have not run shows only "(paper)"; a cell we ran only
under the offline protocol is labelled `[offline]` and gets no Δ, since it is not the paper's protocol; rows whose
method peftbench lacks show the paper's numbers alone. A table whose rows span several models gets a Model column;
a table with a params column shows it as "ours (paper)" in the paper's unit (`bench.paper_params.row_params`). A row
whose runs differ in more than seed and lr is shown once per setting (`peftbench.bench.results`), with a setting column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from peftbench.bench.paper_params import params_label, row_params
from peftbench.bench.paper_tables import PAPER_DIR, load_paper_table, paper_tables, row_model, row_rank, source_label
from peftbench.bench.render import Table, Text, to_csv, to_latex, to_markdown
from peftbench.bench.report import split_note, strategy_text
from peftbench.bench.results import Cell, Results, best_by_lr, lr_cells
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
from peftbench.core.validation import check_choice

# the conf/paper readers (peftbench.bench.paper_tables) stay importable from here, as before
__all__ = ["PAPER_DIR", "PaperTable", "load_paper_table", "paper_report", "paper_table", "paper_tables"]


@dataclass(frozen=True)
class Ours:
    """Our side of one paper cell: seed mean and std (×100), seeds, protocol, and the runs behind it."""

    mean: float
    std: float
    seeds: int
    data: str
    runs: pd.DataFrame | None = None


def cell_runs(rows: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    """Per variant: the runs of one paper cell at the lr the one rule chooses for `metric` (by the seed-mean of
    what selects; an lr with a diverged seed is not eligible)."""
    rows = rows[(rows["metric"] == metric) | (rows["status"] == "diverged")]
    if rows.empty:
        return {}
    chosen = best_by_lr(lr_cells(rows, ["variant"]), ["variant"])
    return {
        variant: rows[(rows["variant"] == variant) & (rows["lr"] == lr) & (rows["metric"] == metric)]
        for variant, lr in zip(chosen["variant"], chosen["lr"], strict=True)
    }


def ours_cells(frame: pd.DataFrame, method: str | None, model: str, rank: int | None, task: str | None,
               metric: str, lr: float | None = None) -> dict[str, Ours]:  # fmt: skip
    """Per variant, the cell of ours and its protocol ('hub' preferred over 'offline') for one paper cell; a row
    printed at one lr (GOAT Table 6) is compared with the runs at that lr."""
    if frame.empty or method is None or task is None:
        return {}
    rank_match = frame["rank"].isna() if rank is None else frame["rank"] == rank
    runs = frame[(frame["method"] == method) & (frame["model"] == model) & (frame["task"] == task) & rank_match]
    if lr is not None:
        runs = runs[np.isclose(runs["lr"].astype(float), float(lr))]
    for data in ("hub", "offline"):
        chosen = cell_runs(runs[runs["data"] == data], metric)
        if chosen:
            return {
                variant: Ours(
                    100 * part["value"].mean(), 100 * part["value"].std(), int(part["value"].count()), data, part
                )  # fmt: skip
                for variant, part in chosen.items()
            }
    return {}


@dataclass
class PaperTable:
    """A paper's table with ours filled in: the name, the conf, the table and the baseline it was tested against."""

    name: str
    conf: dict[str, Any]
    table: Table
    baseline: str | None
    strategies: list[str]

    @property
    def header(self) -> str:
        """What every cell means (the Markdown file's first line, the LaTeX comment, the page's caption)."""
        conf = self.conf
        return (
            f"{source_label(conf)}: each cell is ours ± std over seeds at the best lr, "
            f"[its 95% interval] ({TEST}; {NO_INTERVAL}: runs without a predictions sidecar)"
            + (f", {MARK} when significantly different from {self.baseline} ({BASELINE_ROW})" if self.baseline else "")
            + ", then (paper, Δ = ours − paper); a cell with only (paper) was not run here; "
            "[offline] = our offline protocol, not the paper's."
            + (f" {params_label(conf)}: ours (paper), in the paper's unit." if conf.get("params") else "")
            + strategy_text(self.strategies)
        )


def _significance(
    columns: int, ours: dict[tuple[int, int], Ours | None], keys: Sequence[tuple[str, ...]], results: Results,
    baseline: str | None,
) -> tuple[dict[tuple[int, int | str], Bootstrap], dict[tuple[int, int | str], bool]]:  # fmt: skip
    """Per (row, column) — column "avg" for the Avg — the cell's bootstrap and whether it differs significantly from
    the row's baseline."""
    boots: dict[tuple[int, int | str], Bootstrap] = {}
    for c in range(columns):
        cells = {}
        for (i, col), cell in ours.items():
            if col == c and cell is not None and cell.runs is not None:
                cells[i] = results.bootstrap_runs(cell.runs, by_key=True)
        boots.update({(i, c): boot for i, boot in column_bootstrap(cells).items()})
    for i in range(len(keys)):
        if all(ours.get((i, c)) is not None and ours[(i, c)].data == "hub" for c in range(columns)):
            boots[(i, "avg")] = average([boots.get((i, c), Bootstrap(reason="no runs")) for c in range(columns)])
    marks = {}
    for i, j in baseline_rows(keys, baseline).items():
        for column in [*range(columns), "avg"]:
            if (i, column) in boots and (j, column) in boots:
                diff = difference(boots[(i, column)], boots[(j, column)])
                marks[(i, column)] = bool(diff is not None and excludes_zero(percentile_interval(diff)))
    return boots, marks


def _cell(ours: Ours | None, paper: float | None, boot: Bootstrap | None, significant: bool) -> Cell:
    if ours is None:
        return Cell(paper=paper, with_paper=True)
    std = np.nan if ours.seeds < 2 else ours.std
    interval = None if boot is None else boot.interval
    return Cell(ours.mean, std, ours.seeds, interval, ours.data, paper, True, significant=significant)


def _params_text(printed: str | None, ours: str | None) -> Text | str:
    if ours is None:
        return "" if printed is None else Text("", f"({printed})")
    return ours if printed is None else Text(ours, f"({printed})")


def _row_lr(row: dict) -> float | None:
    """A row printed at one lr (GOAT Table 6); a list is the lr printed per cell (SingLoRA T1), not a filter."""
    lr = row.get("lr")
    return float(lr) if isinstance(lr, int | float) and not isinstance(lr, bool) else None


def paper_table(results: Results, name: str, baseline: str | None = None) -> PaperTable:
    """The paper's table with our cells filled in; `baseline`: the method each row is tested against (default:
    the table's LoRA rows, when run)."""
    conf = load_paper_table(name)
    check_choice("paper table select", conf.get("select", "final"), ["final", "best"])
    frame = results.metric_rows(conf.get("select", "final"))
    run_methods = set(frame["method"]) & {row.get("method") for row in conf["rows"]}
    baseline = choose_baseline(run_methods, baseline)
    columns = list(zip(conf["columns"], conf["metrics"], strict=True))
    # the table's rows, each once per variant of its runs ('' when they share one setting)
    expanded: list[tuple[int, str]] = []
    found: dict[tuple[int, int], dict[str, Ours]] = {}
    for r, row in enumerate(conf["rows"]):
        for c, (task, metric) in enumerate(columns):
            found[(r, c)] = ours_cells(
                frame, row.get("method"), row_model(conf, row), row_rank(row), task, metric, _row_lr(row)
            )
        variants = sorted({v for c in range(len(columns)) for v in found[(r, c)]}) or [""]
        expanded += [(r, variant) for variant in variants]
    split = any(variant for _, variant in expanded)
    ours = {(i, c): found[(r, c)].get(variant) for i, (r, variant) in enumerate(expanded) for c in range(len(columns))}
    keys = [(str(conf["rows"][r].get("method")), str(row_model(conf, conf["rows"][r])),
             str(conf["rows"][r].get("rank")), variant) for r, variant in expanded]  # fmt: skip
    boots, marks = _significance(len(columns), ours, keys, results, baseline)
    models = [row_model(conf, row) for row in conf["rows"]]
    params_column = params_label(conf)
    head = [*(["Model"] if len(set(models)) > 1 else []), "Method"]
    head += ["r"] if any("rank" in row for row in conf["rows"]) else []
    head += ["setting"] if split else []
    rows = []
    for i, (r, variant) in enumerate(expanded):
        row = conf["rows"][r]
        shown: list = [models[r]] if "Model" in head else []
        shown.append(row["label"] + ("" if row.get("method") else " (not in peftbench)"))
        if "r" in head:
            shown.append("–" if row.get("rank") is None else str(row["rank"]))
        shown += [variant] if split else []
        if params_column:
            adapter = results.adapter_counts.get((row.get("method"), models[r], row_rank(row)))
            shown.append(_params_text(*row_params(conf, row, adapter)))
        for c, paper in enumerate(row["values"]):
            shown.append(_cell(ours[(i, c)], paper, boots.get((i, c)), marks.get((i, c), False)))
        if "avg" in row:
            cells = [ours[(i, c)] for c in range(len(columns))]
            complete = all(cell is not None and cell.data == "hub" for cell in cells)
            ours_avg = Ours(float(np.mean([cell.mean for cell in cells])), np.nan, 1, "hub") if complete else None
            shown.append(_cell(ours_avg, row["avg"], boots.get((i, "avg")), marks.get((i, "avg"), False)))
        rows.append(shown)
    columns_out = [*head, *([params_column] if params_column else []), *conf["column_labels"]]
    columns_out += ["Avg"] if any("avg" in row for row in conf["rows"]) else []
    table = Table(columns_out, rows, len(head), notes=split_note(results) if split else [])
    return PaperTable(name, conf, table, baseline, results.strategies)


def paper_report(store_root: str | Path, sweep: str, name: str, baseline: str | None = None) -> pd.DataFrame:
    """The paper's table with our cells filled in, as display strings."""
    return paper_table(Results.load(store_root, sweep), name, baseline).table.frame()


def write_paper_table(paper: PaperTable, sweep: str, out_root: str | Path) -> dict[str, Path]:
    """`<out_root>/<sweep>/tables/paper_<table>.{md,tex,csv}`; returns the paths by kind."""
    out = Path(out_root) / sweep / "tables"
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"paper_{paper.name}.{kind}" for kind in ("md", "tex", "csv")}
    paths["md"].write_text(f"{paper.header}\n\n" + to_markdown(paper.table))
    paths["tex"].write_text(to_latex(paper.table, caption=paper.header))
    to_csv(paper.table, paths["csv"])
    return paths


def write_paper_report(
    store_root: str | Path, sweep: str, name: str, out_root: str | Path, baseline: str | None = None
) -> dict[str, Path]:
    return write_paper_table(paper_table(Results.load(store_root, sweep), name, baseline), sweep, out_root)
