"""One view across papers: every cell that more than one `conf/paper` table prints, the printed values side by side
with their sources, their spread, and ours where the store has it (`peftbench report --cross-paper`).

A cell is (method, model, task, rank) as a table prints it (the rank as printed). Where the tables print different
metrics for it (GOAT prints CoLA accuracy, Subspace Tuning CoLA's Matthews corr.), each value names its metric and
no spread is given: they are not the same number. Left out:
rows of no peftbench method (ChatGPT) and rows at one fixed learning rate (GOAT Table 6, an lr sweep, not a cell
at the best lr). Ours is the cell of each source table's own sweep (its protocol), as `--paper` computes it: the
seed-mean at the best lr ± std [95% interval], `[offline]` when only the offline protocol ran, one entry per
setting when its runs differ in more than seed and lr.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from peftbench.bench.paper import ours_cells
from peftbench.bench.paper_tables import load_paper_table, paper_tables, row_model, row_rank
from peftbench.bench.render import Table, to_csv, to_latex, to_markdown
from peftbench.bench.results import Cell, Results, rank_text
from peftbench.bench.significance import NO_INTERVAL, TEST, column_bootstrap
from peftbench.core.store import RunStore

Key = tuple[str, str, str, int | None]  # method, model, task, rank as printed
COLUMNS = ["method", "model", "task", "rank", "metric", "printed (table: row)", "spread", "ours (sweep)"]
CAPTION = (
    "Cells printed by more than one paper table: (method, model, task, rank) as each prints them, the printed "
    "values side by side with their table and row label, the spread (max − min of the printed values; none where "
    "the tables print different metrics, each value then names its own), "
    f"and ours from each table's own sweep where the store has it: mean ± std over seeds at the best lr, ×100, "
    f"[95% interval] ({TEST}; {NO_INTERVAL}: no interval). Rows at one fixed lr (GOAT Table 6) and rows of no "
    "peftbench method are left out."
)


@dataclass(frozen=True)
class Printed:
    """One table's printed value of a cell, and where to find ours (its sweep, its checkpoint selection)."""

    table: str
    label: str
    metric: str
    value: float
    sweep: str | None
    select: str
    rank: int | None  # the rank its runs record (None for a method without one)


def printed_cells() -> dict[Key, list[Printed]]:
    """Every cell of every conf/paper table that names a method, with what each table printed for it."""
    cells: dict[Key, list[Printed]] = defaultdict(list)
    for name in paper_tables():
        conf = load_paper_table(name)
        for row in conf["rows"]:
            if row.get("method") is None or isinstance(row.get("lr"), int | float):
                continue
            model = row_model(conf, row)
            for task, metric, value in zip(conf["columns"], conf["metrics"], row["values"], strict=True):
                if task is None or value is None:
                    continue
                key = (row["method"], model, task, row.get("rank"))
                cells[key].append(
                    Printed(
                        name,
                        row["label"],
                        metric,
                        float(value),
                        conf.get("sweep"),
                        conf.get("select", "final"),
                        row_rank(row),
                    )  # fmt: skip
                )
    return {key: found for key, found in cells.items() if len({p.table for p in found}) > 1}


def _ours(store_root: str | Path, sweeps: set[str], key: Key, printed: list[Printed],
          loaded: dict[str, Results]) -> str:  # fmt: skip
    """Ours for the cell from each source table's sweep the store holds, 'mean ± std [interval] (sweep)'."""
    method, model, task, _ = key
    several = len({p.metric for p in printed}) > 1
    texts = []
    for source in dict.fromkeys((p.sweep, p.select, p.rank, p.metric) for p in printed):
        sweep, select, rank, metric = source
        if sweep is None or sweep not in sweeps:
            continue
        if sweep not in loaded:
            loaded[sweep] = Results.load(store_root, sweep)
        results = loaded[sweep]
        for variant, ours in ours_cells(results.metric_rows(select), method, model, rank, task, metric).items():
            boot = column_bootstrap({0: results.bootstrap_runs(ours.runs, by_key=True)})[0]
            cell = Cell(ours.mean, ours.std if ours.seeds > 1 else float("nan"), ours.seeds, boot.interval)
            tags = [f"[{ours.data}]"] if ours.data != "hub" else []
            tags += [f"[{variant}]"] if variant else []
            texts.append(" ".join([cell.ours, *tags, f"({sweep}{', ' + metric if several else ''})"]))
    return " · ".join(texts)


def cross_paper_table(store_root: str | Path | None = None) -> Table:
    """The cross-paper view; ours from `store_root` (None: the printed values alone)."""
    loaded: dict[str, Results] = {}  # each sweep's records read once
    sweeps = set(RunStore(store_root).sweeps()) if store_root is not None else set()
    rows = []
    for key, printed in sorted(printed_cells().items(), key=lambda item: [str(part) for part in item[0]]):
        method, model, task, rank = key
        values = [p.value for p in printed]
        metrics = list(dict.fromkeys(p.metric for p in printed))
        named = len(metrics) > 1  # different metrics: each value names its own, and there is no spread
        side_by_side = " · ".join(
            f"{p.value:.2f}{' ' + p.metric if named else ''} ({p.table}: {p.label})" for p in printed
        )
        spread = "" if named else f"{max(values) - min(values):.2f}"
        ours = "" if store_root is None else _ours(store_root, sweeps, key, printed, loaded)
        rows.append([method, model, task, rank_text(rank), "differ" if named else metrics[0], side_by_side, spread,
                     ours])  # fmt: skip
    return Table(list(COLUMNS), rows, 4)


def write_cross_paper(table: Table, out_root: str | Path) -> dict[str, Path]:
    """`<out_root>/cross_paper/tables/cross_paper.{md,tex,csv}`; returns the paths by kind."""
    out = Path(out_root) / "cross_paper" / "tables"
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"cross_paper.{kind}" for kind in ("md", "tex", "csv")}
    paths["md"].write_text(f"{CAPTION}\n\n" + to_markdown(table))
    paths["tex"].write_text(to_latex(table, caption=CAPTION))
    to_csv(table, paths["csv"])
    return paths
