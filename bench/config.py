"""Checks on a run's configuration and the run_id that names the experiment it defines.

Everything here runs before any model or data is loaded, so bad input costs nothing and writes no
record. The run_id hashes only what defines the experiment (method and its hyper-parameters, model,
task, rank, lr, seed, data source, trainer settings), never paths, loggers or bookkeeping flags.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from peftbench.core.errors import ConfigError, one_line
from peftbench.core.paths import CONF_DIR
from peftbench.core.validation import check_choice

GROUPS = ("method", "model", "task", "trainer", "logger", "sweep")
DATA_SOURCES = ("hub", "offline")
# Trainer keys that change how a run is watched or kept, not what it computes.
# how a run is carried out, not what it computes: not in the run_id (compile: the same results up to float rounding)
BOOKKEEPING_TRAINER_KEYS = frozenset({"progress_bar", "checkpoint_steps", "compile"})
# Keys that moved: the old spelling stops with a one-line error instead of being ignored.
MOVED_KEYS = {"trainer.save_adapter": "store.save_adapter"}


def _times(*factors: Any) -> float | int:
    """`${times:2,${rank}}`: the product of numbers, for a value a paper ties to another (Subspace Tuning's LoRA
    alpha = 2r at every swept rank). Registered on import: every entry point that composes a config imports this."""
    product: float | int = 1
    for factor in factors:
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            raise ConfigError(f"times: {factor!r} is not a number; give numbers, e.g. ${{times:2,${{rank}}}}")
        product *= factor
    return product


OmegaConf.register_new_resolver("times", _times, replace=True)


def group_choices(group: str, search_dirs: Iterable[Path] = ()) -> list[str]:
    """The option names of a config group: the YAML files in conf/<group>/ and in `<dir>/<group>/` of each
    folder added to Hydra's search path."""
    return sorted({p.stem for folder in (CONF_DIR, *search_dirs) for p in (Path(folder) / group).glob("*.yaml")})


def search_path_dirs(argv: list[str]) -> list[Path]:
    """The config folders that `hydra.searchpath=[pkg://my_pkg.conf, file:///x/conf, /y/conf]` adds on a command line.

    `pkg://a.b` is the folder of the importable package `a.b`; `file://` and bare entries are folders (relative to
    the working directory). An entry that names nothing is a one-line error.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    folders: list[Path] = []
    for token in argv:
        key, sep, _ = token.lstrip("+~").partition("=")
        if not sep or key != "hydra.searchpath":
            continue
        try:
            (override,) = OverridesParser.create().parse_overrides([token.lstrip("+~")])
        except Exception as exc:  # Hydra's parser errors span lines
            hint = "give hydra.searchpath=[pkg://my_pkg.conf]"
            raise ConfigError(f"{token!r} is not valid; {hint} ({one_line(exc)})") from None
        value = override.value()
        for entry in value if isinstance(value, list) else [value]:
            folders.append(_search_path_folder(str(entry)))
    return folders


def _search_path_folder(entry: str) -> Path:
    if entry.startswith("pkg://"):
        package = entry.removeprefix("pkg://").replace("/", ".")
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"hydra.searchpath entry {entry!r}: no importable package {package!r}")
        return Path(next(iter(spec.submodule_search_locations)))
    folder = Path(entry.removeprefix("file://"))
    if not folder.is_dir():
        raise ConfigError(f"hydra.searchpath entry {entry!r}: no such folder")
    return folder


def check_overrides(argv: list[str]) -> None:
    """Check command-line group overrides (`method=foo`, `task=a,b`) before Hydra sees them.

    Hydra's own message for an unknown option spans several lines; this gives one. The choices are the YAML
    files of conf/<group>/ and of the folders that `hydra.searchpath=[...]` adds (a method from another package).
    """
    search_dirs = search_path_dirs(argv)
    for token in argv:
        key, sep, value = token.lstrip("+~").partition("=")
        if sep and key in MOVED_KEYS:
            raise ConfigError(f"{key} is now {MOVED_KEYS[key]}; give {MOVED_KEYS[key]}={value}")
        if not sep or key not in GROUPS or value.startswith(("glob(", "choice(", "range(")):
            continue
        choices = group_choices(key, search_dirs)
        for option in value.split(","):
            if key == "method" and option.strip() not in choices:
                _check_entry_point_method(option.strip())
            check_choice(key, option.strip(), choices)


def _check_entry_point_method(name: str) -> None:
    """A method installed through an entry point still needs its YAML on Hydra's search path: say so."""
    from peftbench.core.registry import entry_points

    for point in entry_points("peftbench.methods"):
        if point.name == name:
            package = point.value.split(":")[0].split(".")[0]
            raise ConfigError(
                f"method {name!r} (entry point {point.value!r}) has no method/{name}.yaml on Hydra's search path; "
                f"add hydra.searchpath=[pkg://{package}.conf] (the package folder holding method/{name}.yaml)"
            )


def check_moved_keys(cfg: DictConfig) -> None:
    """A config (a sweep file) that still sets a moved key stops with a one-line error instead of ignoring it."""
    for old, new in MOVED_KEYS.items():
        if OmegaConf.select(cfg, old) is not None:
            raise ConfigError(f"{old} is now {new}; set {new} instead")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} is not valid; give a positive integer such as 8")
    return value


def _positive_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a number; give a positive number such as 5e-4") from None
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{name}={value!r} is not valid; give a positive number such as 5e-4")
    return number


def normalized_axes(cfg: DictConfig, uses_rank: bool) -> dict[str, Any]:
    """Validate and normalise the grid axes: rank, lr, seed, data. Raise ConfigError on bad input."""
    rank = _positive_int("rank", cfg.rank) if uses_rank else None
    lr = _positive_float("lr", cfg.lr)
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r} is not valid; give an integer >= 0")
    check_choice("data source", cfg.data, DATA_SOURCES)
    return {"rank": rank, "lr": lr, "seed": seed, "data": cfg.data}


# How a sweep spends its runs (the top-level `strategy`; bench/strategy.py runs them, docs/sweeps.md): every point, or
# the first seed over the lr grid and then the other seeds at each cell's best lr. The sweeper tells each job its stage
# with `++strategy_stage=N`; neither key enters the run_id.
STRATEGIES = ("grid", "lr_then_seeds")
STAGE_KEY = "strategy_stage"


def sweep_strategy(cfg: DictConfig) -> dict[str, Any]:
    """The record's `strategy`: the sweep strategy's name (a one-line ConfigError naming the valid ones when it is
    unknown) and the stage that ran the point (1 or 2 under lr_then_seeds; None under grid or outside a sweep)."""
    name = cfg.get("strategy", "grid")
    check_choice("sweep strategy", name, STRATEGIES)
    return {"name": name, "stage": cfg.get(STAGE_KEY)}


POINT_KEYS = ("method", "model", "task", "rank")


def _point_matches(when: DictConfig, cfg: DictConfig) -> bool:
    for key, wanted in when.items():
        if key not in POINT_KEYS:
            raise ConfigError(f"protocol_rules: `when` key {key!r} is not valid; valid keys: {', '.join(POINT_KEYS)}")
        values = [wanted] if isinstance(wanted, str | int) else list(wanted)
        if key == "rank":  # the grid's rank (a value, not a config group): a printed row's rank, e.g. DoRA's r 32
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise ConfigError(f"protocol_rules: `when` rank {wanted!r} is not valid; give an integer or a list")
            if cfg.rank not in values:
                return False
        elif cfg[key].name not in values:
            return False
    return True


def apply_protocol_rules(cfg: DictConfig) -> None:
    """Merge a sweep's per-point settings into the point's config (recorded, and hashed into the run_id).

    A paper's protocol varies settings by task, model, method or rank (RTE trains 50 epochs, full FT uses lr 1e-5,
    one LoRA+ cell uses ratio 80, DoRA's r 32 row ran at lr 1e-4); a sweep lists them in order, and each entry
    whose `when` matches the point is merged: `protocol_rules: [{when: {task: glue_rte}, set: {trainer:
    {num_train_epochs: 50}}}]`. Entries see the point as the entries before them left it (one that sets `rank`
    changes what a later `when: {rank: ...}` matches).
    """
    for rule in cfg.get("protocol_rules") or []:
        if set(rule) != {"when", "set"}:
            raise ConfigError(f"protocol_rules entry {dict(rule)} is not valid; give `when` and `set`")
        if _point_matches(rule.when, cfg):
            with open_dict(cfg):
                cfg.merge_with(OmegaConf.to_container(rule.set, resolve=False))


def resolve_point(cfg: DictConfig) -> None:
    """A sweep's per-point settings, then its per-method targets (see both): what the point really runs."""
    apply_protocol_rules(cfg)
    apply_sweep_targets(cfg)


def apply_sweep_targets(cfg: DictConfig) -> None:
    """Resolve a sweep's per-method target sets into `method.target_modules` (recorded and hashed).

    A sweep may say which layers each method adapts, by the name of one of the model's `target_sets` or as a
    list: `targets: {default: all_linear, ssl: qkv}` (the papers' params columns differ per method), or per
    model when a grid spans several: `targets: {default: {roberta-base: qv, gpt2: all_linear}}`. A method
    config that names its own `target_modules` keeps them; methods without the key (full FT) are untouched.
    """
    targets = cfg.get("targets")
    if not targets or "target_modules" not in cfg.method or cfg.method.target_modules is not None:
        return
    key = cfg.method.name if cfg.method.name in targets else "default"
    choice = targets.get(key)
    if isinstance(choice, DictConfig):  # per model
        choice = choice.get(cfg.model.name)
    if choice is None:
        return
    if isinstance(choice, str):
        sets = cfg.model.get("target_sets") or {}
        if choice not in sets:
            raise ConfigError(
                f"targets.{key}={choice!r} is not a target set of model {cfg.model.name!r}; "
                f"valid choices: {', '.join(sets) or '(none)'}"
            )
        choice = sets[choice]
    with open_dict(cfg.method):
        cfg.method.target_modules = list(choice)


def check_store_writable(root: str | os.PathLike) -> Path:
    """Create the store folder if needed and make sure records can be written there."""
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"store.root={str(root)!r} cannot be created: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"store.root={str(root)!r} is not writable; pick another with store.root=PATH")
    return path


def experiment_config(cfg: DictConfig, axes: dict[str, Any], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resolved fields that define the experiment (the run_id's input); `inputs`, what a method reads from
    outside its config (LoRAHub's upstream adapters), only when there are any (other run_ids stay as they were)."""
    # only the experiment's subtrees: a composed config may carry Hydra's node, whose `${hydra:...}`
    # values resolve only inside a running job
    container = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("method", "model", "task", "trainer")}
    trainer = {k: v for k, v in container["trainer"].items() if k not in BOOKKEEPING_TRAINER_KEYS}
    return {
        "method": container["method"],
        "model": container["model"],
        "task": container["task"],
        "trainer": trainer,
        **axes,
        **({"inputs": inputs} if inputs else {}),
    }


def compute_run_id(experiment: dict[str, Any]) -> str:
    """A short, stable hash of the experiment-defining fields (12 hex digits)."""
    canonical = json.dumps(experiment, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
