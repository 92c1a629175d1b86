"""Expand a sweep's grid (`hydra.sweeper.params` of conf/sweep/<name>.yaml) into its points, and its points into runs.

A grid point is one combination of the axes' values; a run is what a point trains once its sweep's
`protocol_rules` and `targets` have been applied (`bench.config.resolve_point`), named by its run_id. Rules can
make several points one run (GLUE's LoRA runs at its script's lr whatever the lr axis says), so sizes are counted
in runs. `resolve_grid` composes each point exactly as `bench.run` does (the same run_ids), but composes with Hydra
only once per combination of the config-group axes (method, task, model, ...) and the keys rules match on: the
other axes (rank, lr, seed, ...) are probed once per combination and, where a value only lands in its own place
of the experiment (or nowhere, when a rule overrides it), substituted there instead of composed again. A sweep of
12,160 points then resolves in seconds.

Used for `make reproduce-* DRY=1` (`peftbench grid`: the axes, what each rule changed, the distinct runs),
`peftbench status --grid` (runs without a record) and `peftbench plan` (the cost of every run).
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from omegaconf import DictConfig, OmegaConf, open_dict
from peftbench.bench import config as bench_config
from peftbench.bench.config import CONF_DIR, GROUPS, check_choice, compute_run_id, group_choices, normalized_axes
from peftbench.bench.method_defaults import install as install_method_defaults
from peftbench.core.errors import ConfigError

# Values no grid uses: a probe sets an axis to one of these and looks where it lands in the experiment.
_PROBE_INT = 7919
_PROBE_FLOAT = 1.23456789e-4
EXPERIMENT_TREES = ("method", "model", "task", "trainer")


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


def narrowed_axes(axes: dict[str, list[str]], overrides: list[str]) -> dict[str, list[str]]:
    """The axes as a multirun with these command-line overrides sweeps them: an override of a swept key replaces
    its values (`task=glue_rte` narrows the task axis), a sweep override of another key (`seed=0,1`) adds an axis."""
    parser = OverridesParser.create()
    axes = dict(axes)
    for text in overrides:
        key = text.partition("=")[0]
        if key.startswith(("+", "~", "hydra")):
            continue
        override = parser.parse_overrides([text])[0]
        if override.is_sweep_override():
            axes[key] = list(override.sweep_string_iterator())
        elif key in axes:
            axes[key] = [override.get_value_element_as_str()]
    return axes


def launch_grid(sweep: str, overrides: list[str]) -> tuple[DictConfig, dict[str, list[str]], list[str]]:
    """What `python -m bench.run sweep=<sweep> <overrides>` sweeps: the sweep's config composed with the launch's
    plain overrides, its axes (the launch's own sweep values, `seed=2,3`, narrow or add axes), and the overrides
    that stay the same at every point."""
    parser = OverridesParser.create()
    plain = [o for o in overrides if not parser.parse_overrides([o])[0].is_sweep_override()]
    base = sweep_config(sweep, plain)
    axes = narrowed_axes(grid_axes(base), overrides)
    return base, axes, [o for o in overrides if o.partition("=")[0] not in axes]


def grid_points(axes: dict[str, list[str]]) -> list[dict[str, str]]:
    """The cartesian product, as override mappings, in Hydra's basic-sweeper order."""
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes.values())]


@dataclass
class RuleEffect:
    """What one entry of `protocol_rules` did over the grid: the points it matched, and per key it sets, how many
    points it changed from which value to which."""

    index: int
    when: dict[str, Any]
    matched: int = 0
    changes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def describe(self) -> str:
        when = ", ".join(f"{k}={v}" for k, v in self.when.items())
        head = f"  {self.index}. when {when}: {self.matched} points"
        parts = []
        for key, counter in self.changes.items():
            changed = sum(n for (before, after), n in counter.items() if before != after)
            befores = sorted({_short(b) for (b, a), n in counter.items() if b != a})
            afters = sorted({_short(a) for (b, a), n in counter.items()})
            if changed:
                parts.append(f"{key} {'/'.join(befores)} -> {'/'.join(afters)} on {changed}")
            else:
                parts.append(f"{key} = {'/'.join(afters)} (already)")
        return head + ("; " + "; ".join(parts) if parts else "; no key it sets is in the config")


@dataclass
class ResolvedGrid:
    """A sweep's grid, point by point, with the run each point is (the run_id `peftbench.bench.run` computes for it)."""

    sweep: str
    axes: dict[str, list[str]]
    points: list[dict[str, str]]
    run_ids: list[str]
    experiments: dict[str, dict[str, Any]]  # run_id -> the experiment its id hashes (first point's)
    rules: list[RuleEffect]

    @property
    def runs(self) -> dict[str, list[int]]:
        """run_id -> the indices of its points, in grid order."""
        runs: dict[str, list[int]] = {}
        for i, run_id in enumerate(self.run_ids):
            runs.setdefault(run_id, []).append(i)
        return runs

    def first_points(self) -> dict[str, dict[str, str]]:
        """run_id -> the first grid point that is this run (the command that runs it)."""
        return {run_id: self.points[indices[0]] for run_id, indices in self.runs.items()}


def _short(value: Any, width: int = 40) -> str:
    """A value as `describe` prints it: a string with spaces or line breaks quoted, anything cut at `width`."""
    text = repr(value) if isinstance(value, str) and re.search(r"\s", value) else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def _get(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _with(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of `tree` with `path` set to `value`; only the dicts along the path are copied (the rest shared)."""
    head, *rest = path
    return {**tree, head: _with(tree[head], tuple(rest), value) if rest else value}


def _flat(tree: dict[str, Any]) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, (*path, key))
        else:
            out[path] = node

    walk(tree, ())
    return out


def _experiment(cfg: DictConfig) -> dict[str, Any]:
    """What `peftbench.bench.run.identify` hashes for this (composed, unresolved) point; resolves the point in place."""
    from peftbench.bench.config import experiment_config
    from peftbench.bench.run import check_config

    method, params, axes, _task = check_config(cfg)
    inputs = method.inputs(params, cfg)
    return experiment_config(cfg, axes, inputs)


def _rule_changes(cfg: DictConfig) -> list[tuple[int, list[tuple[str, Any, Any]]]]:
    """Apply the rules that match this point, in place; for each: (its index, [(key it sets, before, after)])."""
    out = []
    for index, rule in enumerate(cfg.get("protocol_rules") or [], start=1):
        if set(rule) != {"when", "set"} or not bench_config._point_matches(rule.when, cfg):
            continue
        values = OmegaConf.to_container(rule.set, resolve=False)
        keys = [key for key, _ in _leaves(values)]
        before = {key: OmegaConf.select(cfg, key, default=None) for key in keys}
        with open_dict(cfg):
            cfg.merge_with(values)
        out.append((index, [(key, before[key], OmegaConf.select(cfg, key, default=None)) for key in keys]))
    return out


def _parse_value(key: str, value: str) -> Any:
    return OverridesParser.create().parse_overrides([f"{key}={value}"])[0].value()


class _Combination:
    """The points that share their config-group choices (and the keys rules match on): composed with Hydra once."""

    def __init__(self, base: DictConfig, value_axes: dict[str, list[str]]) -> None:
        self.base = base
        self.value_axes = value_axes
        self.parsed = {key: [_parse_value(key, v) for v in values] for key, values in value_axes.items()}
        self.first = {key: values[0] for key, values in self.parsed.items()}
        self.changes: list[tuple[int, list[tuple[str, Any, Any]]]] = []
        self.text = json.dumps(OmegaConf.to_container(base, resolve=False), default=str)
        self.rule_keys = {
            key for rule in base.get("protocol_rules") or [] if "set" in rule
            for key, _ in _leaves(OmegaConf.to_container(rule.set, resolve=False))
        }  # fmt: skip

    def resolve(self, values: dict[str, Any], track: bool = False) -> dict[str, Any]:
        """The experiment of one point of this combination, composed in full (its value overrides applied as Hydra
        applies a `key=value` override: `OmegaConf.update` with merge). `track`: keep what each rule changed in
        `self.changes` (the rules are applied once more by `check_config`: merging the same values is a no-op)."""
        cfg = copy.deepcopy(self.base)
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=True)
        if track:
            self.changes = _rule_changes(cfg)
        return _experiment(cfg)

    def probe(self, first: dict[str, Any]) -> dict[str, list[tuple[str, ...]] | None]:
        """Per value axis: the experiment paths its value lands in unchanged ([] when it lands nowhere: a rule
        overrides it, or the method has no rank), or None when it does more than that (an interpolation computes
        with it, a check refuses the probe value): those axes are composed point by point.

        An axis that no interpolation of the point's config names and no rule sets lands in its own place (`lr`,
        `seed`, `rank` unless the method has none, a `task.*`-style key at its path); the others are probed: the
        point is resolved with the axis at a value no grid uses, and the paths where that value appears are its."""
        flat0 = _flat(first)
        found: dict[str, list[tuple[str, ...]] | None] = {}
        for key, values in self.parsed.items():
            if len(values) == 1:
                found[key] = []
                continue
            v1 = values[0]
            if isinstance(v1, bool) or not isinstance(v1, int | float):
                found[key] = None
                continue
            static = self._static_paths(key, first)
            if static is not None:
                found[key] = static
                continue
            probe = _PROBE_INT if isinstance(v1, int) else _PROBE_FLOAT
            try:
                flat = _flat(self.resolve({**self.first, key: probe}))
            except ConfigError:
                found[key] = None
                continue
            diff = [p for p in flat.keys() | flat0.keys() if flat.get(p, ...) != flat0.get(p, ...)]
            lands = all(flat.get(p) == probe and flat0.get(p) == v1 for p in diff)
            found[key] = diff if lands else None
        return found

    def _static_paths(self, key: str, first: dict[str, Any]) -> list[tuple[str, ...]] | None:
        """Where `key` lands without probing, or None when only a probe can tell."""
        if key in self.rule_keys or re.search(rf"\$\{{[^}}]*(?<![\w.]){re.escape(key)}(?![\w])", self.text):
            return None
        parts = tuple(key.split("."))
        if key == "rank" and first.get("rank") is None:
            return []  # the method has no rank: recorded as null whatever the axis says
        if key in ("rank", "lr", "seed") or (parts[0] in EXPERIMENT_TREES and len(parts) > 1):
            try:
                value = _get(first, parts)
            except (KeyError, TypeError):
                return []  # a bookkeeping key (trainer.progress_bar): not in the experiment
            return [parts] if value == self.first[key] else None
        return []  # a top-level key nothing interpolates: it does not enter the experiment

    def experiments(self) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
        """(the point's value overrides as strings, its experiment) for every point, in grid order."""
        first = self.resolve(self.first, track=True)
        paths = self.probe(first)
        composed = [key for key, p in paths.items() if p is None]
        cache: dict[tuple, dict[str, Any]] = {}
        keys = list(self.value_axes)
        for index in itertools.product(*(range(len(v)) for v in self.value_axes.values())):
            strings = {key: self.value_axes[key][i] for key, i in zip(keys, index, strict=True)}
            values = {key: self.parsed[key][i] for key, i in zip(keys, index, strict=True)}
            ckey = tuple(index[keys.index(k)] for k in composed)
            if ckey not in cache:
                cache[ckey] = (
                    first if not any(ckey) else self.resolve({**self.first, **{k: values[k] for k in composed}})
                )
            experiment = cache[ckey]
            for key, found in paths.items():
                for path in found or []:
                    value = values[key]
                    experiment = _with(
                        experiment, path, float(value) if isinstance(_get(first, path), float) else value
                    )
            if any(paths[k] for k in keys if k not in composed):
                _check_axes(experiment)
            yield strings, experiment


def _check_axes(experiment: dict[str, Any]) -> None:
    """The checks `normalized_axes` makes, on a substituted point's final values."""
    ns = SimpleNamespace(rank=experiment["rank"] if experiment["rank"] is not None else 1, lr=experiment["lr"],
                         seed=experiment["seed"], data=experiment["data"])  # fmt: skip
    normalized_axes(ns, experiment["rank"] is not None)


def _group_key(key: str) -> bool:
    """Axes that choose config-group options (or add keys): composed with Hydra, never substituted."""
    return key in GROUPS or "/" in key or key.startswith(("+", "~"))


def _self_contained(group: str, option: str) -> bool:
    """Whether a group option writes only under its own package (no `@package` header, no defaults reaching into
    another group): then its subtree is the same whatever the other groups chose, and can be composed once."""
    path = CONF_DIR / group / f"{option}.yaml"
    if group not in EXPERIMENT_TREES or not path.is_file():
        return False
    text = path.read_text()
    return "@package" not in text and "override" not in text and not re.search(r"^\s*-\s*/", text, re.M)


def _compose_combinations(
    sweep: str, fixed: list[str], combo_axes: dict[str, list[str]]
) -> Iterator[tuple[dict[str, str], DictConfig]]:
    """(the combination's overrides, its composed config) for every combination of the group axes, in grid order.

    Hydra composes in ~50 ms; a grid of 19 methods x 8 tasks would compose 152 times. Method, task and model options
    write only their own subtree (`_self_contained`), so each option is composed once and its subtree put into the
    first combination's config; `tests/bench/test_grid.py` checks that this equals composing each combination."""
    separable = [k for k, values in combo_axes.items() if all(_self_contained(k, v) for v in values)]
    rest = [k for k in combo_axes if k not in separable]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):

        def composed(choice: dict[str, str]) -> DictConfig:
            return compose("config", overrides=[f"sweep={sweep}", *fixed, *(f"{k}={v}" for k, v in choice.items())])

        for others in itertools.product(*(combo_axes[k] for k in rest)):
            other = dict(zip(rest, others, strict=True))
            firsts = {k: combo_axes[k][0] for k in separable}
            base = composed({**firsts, **other})
            subtrees = {
                (key, value): composed({**firsts, **other, key: value})[key]
                for key in separable for value in combo_axes[key][1:]
            }  # fmt: skip
            subtrees.update({(key, firsts[key]): base[key] for key in separable})
            for values in itertools.product(*(combo_axes[k] for k in separable)):
                choice = dict(zip(separable, values, strict=True))
                cfg = copy.copy(base)  # a new root over the same subtrees; each point deep-copies what it resolves
                for key, value in choice.items():
                    cfg[key] = subtrees[(key, value)]
                yield {k: {**choice, **other}[k] for k in combo_axes}, cfg


@functools.lru_cache(maxsize=16)
def _resolve_cached(sweep: str, overrides: tuple[str, ...]) -> ResolvedGrid:
    base, axes, fixed = launch_grid(sweep, list(overrides))
    keys = list(axes)
    combo_keys = [k for k in keys if _group_key(k) or k in bench_config.POINT_KEYS]
    value_keys = [k for k in keys if k not in combo_keys]
    results: dict[tuple[str, ...], str] = {}
    experiments: dict[str, dict[str, Any]] = {}
    rules: dict[int, RuleEffect] = {}
    when = {i: OmegaConf.to_container(r.when) for i, r in enumerate(base.get("protocol_rules") or [], start=1)
            if "when" in r}  # fmt: skip
    for chosen, cfg in _compose_combinations(sweep, fixed, {k: axes[k] for k in combo_keys}):
        combination = _Combination(cfg, {k: axes[k] for k in value_keys})
        points = 0
        for strings, experiment in combination.experiments():
            run_id = compute_run_id(experiment)
            experiments.setdefault(run_id, experiment)
            point = {**chosen, **strings}
            results[tuple(point[k] for k in keys)] = run_id
            points += 1
        for index, changes in combination.changes:
            effect = rules.setdefault(index, RuleEffect(index, when.get(index, {})))
            effect.matched += points
            for key, before, after in changes:
                if key in value_keys:  # the axis's own values, point by point
                    per_value = points // len(axes[key])
                    for value in combination.parsed[key]:
                        effect.changes[key][(value, after)] += per_value
                else:
                    effect.changes[key][(before, after)] += points
    points = grid_points(axes)
    run_ids = [results[tuple(p[k] for k in keys)] for p in points]
    return ResolvedGrid(sweep, axes, points, run_ids, experiments, [rules[i] for i in sorted(rules)])


def resolve_grid(sweep: str, overrides: list[str] | None = None) -> ResolvedGrid:
    """Every point of a sweep's grid with its run_id (as `bench.run` computes it), the distinct runs' experiments,
    and what each protocol rule changed. Bad input (an invalid point) is the ConfigError `bench.run` would give."""
    check_choice("sweep", sweep, group_choices("sweep"))
    return _resolve_cached(sweep, tuple(overrides or ()))


def _value_at(experiment: dict[str, Any], key: str) -> Any:
    """A point key's value in an experiment: group axes by their option's name, other keys by their path."""
    path = key.split(".")
    if key in GROUPS:
        path = [key, "name"]
    try:
        value = _get(experiment, tuple(path))
    except (KeyError, TypeError):
        return ...
    return value


def resolved_keys(grid: ResolvedGrid) -> list[str]:
    """The keys whose resolved values `describe` shows: the axes, then every key a rule sets, in rule order."""
    keys = list(grid.axes)
    for effect in grid.rules:
        keys += [key for key in effect.changes if key not in keys]
    return keys


def describe(grid: ResolvedGrid, extra: dict[str, Any], points: bool = False) -> str:
    """The grid: axes, what each protocol rule changed, and the values the distinct runs really train with."""
    runs = grid.runs
    lines = [f"sweep {grid.sweep!r}: {len(grid.points)} grid points, {len(runs)} runs"
             + (f" ({len(grid.points) - len(runs)} points repeat a run: a protocol rule or a method without that "
                "axis makes them the same run)" if len(runs) < len(grid.points) else "")]  # fmt: skip
    lines += [f"  {key} ({len(values)}): {', '.join(values)}" for key, values in grid.axes.items()]
    if grid.rules:
        lines.append("protocol_rules, as they resolve over the grid (in order; a later rule wins):")
        lines += [effect.describe() for effect in grid.rules]
    lines.append(f"resolved values over the {len(runs)} runs:")
    for key in resolved_keys(grid):
        counts = Counter(_short(_value_at(grid.experiments[r], key)) for r in runs)
        counts.pop("Ellipsis", None)
        if not counts:
            continue
        shown = ", ".join(f"{value} ({n})" for value, n in counts.most_common()) if len(counts) <= 8 else (
            f"{len(counts)} distinct values")  # fmt: skip
        lines.append(f"  {key}: {shown}")
    lines += [f"  {key}: {value}" for key, value in extra.items()]
    if points:
        lines.append("runs (the first grid point of each, then the values it trains with):")
        keys = [k for k in resolved_keys(grid) if k not in grid.axes]
        for run_id, point in grid.first_points().items():
            experiment = grid.experiments[run_id]
            resolved = " ".join(f"{k}={_short(_value_at(experiment, k), 24)}" for k in keys)
            values = " ".join(f"{k}={v}" for k, v in point.items())
            tail = f" {resolved}" if resolved else ""
            lines.append(f"  {run_id} {values} -> lr={experiment['lr']:g} rank={experiment['rank']}{tail}")
    return "\n".join(lines)
