"""Expand a sweep's grid (`hydra.sweeper.params` of conf/sweep/<name>.yaml) into its points.

Used for `make reproduce-* DRY=1` (print the grid and its size, run nothing) and by
`peftbench status` to know which points of the grid have no record yet.
"""

from __future__ import annotations

import itertools
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from omegaconf import DictConfig, OmegaConf

from bench.config import CONF_DIR, GROUPS, check_choice, group_choices
from bench.method_defaults import install as install_method_defaults


def sweep_config(sweep: str, overrides: list[str] | None = None) -> DictConfig:
    """The composed config of a sweep, Hydra's own node included."""
    check_choice("sweep", sweep, group_choices("sweep"))
    install_method_defaults()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"sweep={sweep}", *(overrides or [])], return_hydra_config=True)


def grid_axes(cfg: DictConfig) -> dict[str, list[str]]:
    """Each swept key with its values as override strings, in the sweep file's order."""
    node = cfg.hydra.sweeper.params
    params = OmegaConf.to_container(node, resolve=False) if node is not None else {}
    parser = OverridesParser.create()
    axes: dict[str, list[str]] = {}
    for key, value in params.items():
        override = parser.parse_overrides([f"{key}={value}"])[0]
        parsed = override.value()
        if isinstance(parsed, Glob):
            axes[key] = parsed.filter(group_choices(key)) if key in GROUPS else []
        elif override.is_sweep_override():
            axes[key] = list(override.sweep_string_iterator())
        else:
            axes[key] = [override.get_value_element_as_str()]
    return axes


def grid_points(axes: dict[str, list[str]]) -> list[dict[str, str]]:
    """The cartesian product, as override mappings, in Hydra's basic-sweeper order."""
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes.values())]


def describe(sweep: str, axes: dict[str, list[str]], extra: dict[str, Any]) -> str:
    size = len(grid_points(axes))
    lines = [f"sweep {sweep!r}: {size} grid points"]
    lines += [f"  {key} ({len(values)}): {', '.join(values)}" for key, values in axes.items()]
    lines += [f"  {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines)


def estimate_gpu_hours(store_root: str, sweep: str, points: int) -> str:
    """GPU-hours for the whole grid from the median wall time of this sweep's runs already done on a GPU."""
    import statistics

    from core.store import RunStore

    timed = [
        r for r in RunStore(store_root).iter_records(sweep)
        if r.get("status") == "ok" and r.get("device") not in (None, "cpu") and r.get("run_seconds")
    ]  # fmt: skip
    if not timed:
        return "no GPU run of this sweep recorded yet: run one point, then DRY=1 estimates the GPU-hours"
    median = statistics.median(r["run_seconds"] for r in timed)
    devices = sorted({r["device"] for r in timed})
    return (
        f"~{points * median / 3600:.1f} GPU-hours for {points} points "
        f"(median {median:.0f} s per run over {len(timed)} recorded runs on {', '.join(devices)})"
    )
