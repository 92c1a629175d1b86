"""The papers' params columns recomputed: each row's method, applied as its sweep applies it, counted on the
model's real architecture (meta device, `peftbench.bench.param_count`) and written in the table's own unit.

A table says how its column reads under `params:` in `conf/paper/<table>.yaml`:

    params: {key: params_pct, unit: percent, base: 354.0e6, decimals: 2}

- `unit`: `percent` or `permille` of `base`; `millions` of parameters; `llm_adapters` for LLM-Adapters' strings
  ("0.83%" of base + adapter, "+ 877k" parameters on top of LoRA at the same rank and model).
- `base`: a number (the paper's own denominator, e.g. Subspace Tuning's flat 125M for RoBERTa-base) or
  `backbone` (the model as loaded for the task, without its task head).
- `task`: the column whose point is counted (default: the first); a table whose protocol changes the count on some
  columns (Subspace Tuning's AdaLoRA starts at 1.5 r on MNLI and CoLA) names one the printed column describes.
- `decimals`: the printed precision (default: the printed value's own; a row's `params_decimals` overrides
  it). Ours agrees when, printed to that precision, it is at most one in the last digit from the paper's: the
  papers round their intermediate counts (Subspace Tuning prints r 16 as twice its rounded r 8), so demanding
  the same digits would fail rows that are right.
Trainable parameters exclude the task head, which every method trains in full (the tables leave it out).
A row that cannot match (the paper's own count is off, or a method's count is inferred) carries a
`params_note` saying why; `check_table_params` reports every row, the note included. `row_params` gives the
report's params cell (`peftbench report --paper`): the paper's value and ours, ours from the runs' records when the
row was run (their trainable parameters without the head), else counted here.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from dataclasses import dataclass

from peftbench.bench.grid import sweep_config
from peftbench.bench.paper_tables import load_paper_table, trains_base
from peftbench.bench.param_count import MetaCount, count_on_meta
from peftbench.methods.base import get_method

log = logging.getLogger(__name__)
UNITS = ("percent", "permille", "millions", "llm_adapters")
_LA_PLUS = re.compile(r"^\+\s*([\d.]+)\s*(k?)$")
_LA_PERCENT = re.compile(r"^([\d.]+)%$")


@dataclass(frozen=True)
class ParamsCheck:
    """One row: the paper's printed value, ours in the same unit, whether they agree within print rounding."""

    label: str
    model: str
    rank: int | None
    paper: str
    ours: str
    matches: bool
    note: str | None


def _decimals(printed: str) -> int:
    return len(printed.split(".")[1]) if "." in printed else 0


@functools.cache
def _count(sweep: str, overrides: tuple[str, ...]) -> MetaCount:
    return count_on_meta(sweep_config(sweep, list(overrides)))


def _row_overrides(table: dict, row: dict, method: str | None = None) -> tuple[str, ...]:
    method = method or row["method"]
    task = table["params"].get("task") or next(c for c in table["columns"] if c)
    values = [f"method={method}", f"task={task}"]
    if row.get("model"):
        values.append(f"model={row['model']}")
    if get_method(method).uses_rank and row.get("rank") is not None:
        values.append(f"rank={row['rank']}")
    return tuple(values)


def _needs_count(spec: dict, row: dict) -> bool:
    """Whether the row's value needs more than its adapter count: a backbone denominator, or LoRA's count."""
    if spec["unit"] == "llm_adapters":
        return True
    return spec["unit"] in ("percent", "permille") and (spec["base"] == "backbone" or trains_base(row["method"]))


def _ours(table: dict, spec: dict, row: dict, adapter: int | None = None) -> tuple[float, str | None]:
    """(our value in the table's unit, the unit's text form for llm_adapters strings). `adapter`: a measured count
    (a run's trainable parameters without its head); None: counted on the meta device."""
    count = _count(table["sweep"], _row_overrides(table, row)) if adapter is None or _needs_count(spec, row) else None
    adapter = count.adapter if adapter is None else adapter
    printed = str(row[spec["key"]])
    unit = spec["unit"]
    if unit == "millions":
        return adapter / 1e6, None
    whole = trains_base(row["method"])  # full FT trains the whole backbone: 100% by the tables' definition
    if unit in ("percent", "permille"):
        base = count.backbone if spec["base"] == "backbone" or whole else float(spec["base"])
        return adapter / base * (100 if unit == "percent" else 1000), None
    if _LA_PERCENT.match(printed) or whole:
        return 100 * adapter / (count.backbone + (0 if whole else adapter)), "%"
    lora = _count(table["sweep"], _row_overrides(table, row, "lora"))
    return float(adapter - lora.adapter), "+"


def _agrees(ours: float, printed: str, spec: dict) -> bool:
    match = _LA_PLUS.match(printed)
    if match:  # "+ 1.3k": thousands to the printed decimals
        scale = 1000 if match.group(2) == "k" else 1
        return _near(ours / scale, float(match.group(1)), _decimals(match.group(1)))
    return _near(ours, float(printed.rstrip("%")), spec.get("decimals", _decimals(printed.rstrip("%"))))


def _near(ours: float, printed: float, decimals: int) -> bool:
    """Printed to `decimals`, ours is at most one in the last digit from the printed value."""
    return abs(round(ours, decimals) - printed) <= 10**-decimals + 1e-9


def _format(ours: float, kind: str | None, spec: dict) -> str:
    if kind == "+":
        return f"+ {ours / 1000:.1f}k" if abs(ours) >= 100 else f"+ {ours:.0f}"
    text = f"{ours:.{spec.get('decimals', 3)}f}"
    return f"{text}%" if kind == "%" else text


def _row_spec(spec: dict, row: dict) -> dict:
    return {**spec, **({"decimals": row["params_decimals"]} if "params_decimals" in row else {})}


def params_label(table: dict) -> str | None:
    """The params column's header in the table's unit (None: the table has no params column)."""
    spec = table.get("params")
    if spec is None:
        return None
    return {"percent": "Params %", "permille": "Params ‰", "millions": "Params (M)"}.get(spec["unit"], "Params")


def row_params(table: dict, row: dict, adapter: int | None = None) -> tuple[str | None, str | None]:
    """(the paper's printed params value, ours in the table's unit and precision) for one row; either may be None.

    `adapter`: the row's measured trainable parameters without the head (from its records); None: counted on the
    model's architecture (`bench.param_count`). A count that cannot be made leaves ours None, with a warning."""
    spec = table.get("params")
    printed = None if spec is None or row.get(spec["key"]) is None else str(row[spec["key"]])
    if printed is None or printed == "-" or row.get("method") is None:
        return printed, None
    try:
        with warnings.catch_warnings():  # the libraries' deprecation chatter while building the model on meta
            warnings.simplefilter("ignore")
            ours, kind = _ours(table, spec, row, adapter)
    except Exception as exc:  # a report must not fail on a params count (a plugin method missing, ...)
        log.warning("params of %s r%s (%s) not counted: %s", row["label"], row.get("rank"), row.get("model"), exc)
        return printed, None
    return printed, _format(ours, kind, _row_spec(spec, row))


def check_table_params(name: str) -> list[ParamsCheck]:
    """Every row with a method and a params value: the paper's value and ours, in the table's unit."""
    table = load_paper_table(name)
    spec = table.get("params")
    if spec is None:
        return []
    checks = []
    for row in table["rows"]:
        printed = row.get(spec["key"])
        if row.get("method") is None or printed in (None, "-"):
            continue
        printed = str(printed)
        ours, kind = _ours(table, spec, row)
        row_spec = _row_spec(spec, row)
        checks.append(
            ParamsCheck(
                label=row["label"], model=row.get("model") or table.get("model"), rank=row.get("rank"),
                paper=printed, ours=_format(ours, kind, row_spec), matches=_agrees(ours, printed, row_spec),
                note=row.get("params_note"),
            )
        )  # fmt: skip
    return checks
