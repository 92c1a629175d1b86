"""The published tables, `conf/paper/<table>.yaml`, as data: which tables exist, one table, and how a row names
the runs it stands for (its model, its rank under the method's own rule).

Every module that reads the papers' tables (`bench.paper`, `bench.paper_params`, `bench.cross_paper`, the report
page) reads them here, so none of them imports another for it.
"""

from __future__ import annotations

from typing import Any

import yaml
from peftbench.bench.config import CONF_DIR, check_choice
from peftbench.methods.base import get_method

PAPER_DIR = CONF_DIR / "paper"


def paper_tables() -> list[str]:
    """The names `--paper` takes: one per `conf/paper/*.yaml`."""
    return sorted(p.stem for p in PAPER_DIR.glob("*.yaml"))


def load_paper_table(name: str) -> dict[str, Any]:
    """One table (an unknown name: one line naming the valid ones)."""
    check_choice("paper table", name, paper_tables())
    return _load(name)


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((PAPER_DIR / f"{name}.yaml").read_text())


def tables_for_sweep(sweep: str) -> list[str]:
    """The tables whose `sweep:` is this sweep (the report page shows them)."""
    return [name for name in paper_tables() if _load(name).get("sweep") == sweep]


def row_model(table: dict[str, Any], row: dict[str, Any]) -> str | None:
    """The row's model: its own `model:`, else the table's."""
    return row.get("model") or table.get("model")


def row_rank(row: dict[str, Any]) -> int | None:
    """The rank a row's runs record: the printed rank for a method that uses one, else None (full FT, FT-MoE, SSL,
    ... record a null rank whatever the paper prints beside them)."""
    method = row.get("method")
    if method is None or not get_method(method).uses_rank:
        return None
    return row.get("rank")


def trains_base(method: str | None) -> bool:
    """Whether the method trains every weight of the base model (the tables count it as 100%)."""
    return method is not None and get_method(method).trains_base


def source_label(table: dict[str, Any]) -> str:
    """'GOAT (arXiv 2502.16894) Table 4, roberta-large': how the report names a table."""
    model = f", {table['model']}" if table.get("model") else ""
    return f"{table['paper']} (arXiv {table['arxiv']}) Table {table['table']}{model}"
