"""Each method's name and defaults, stated once — its registration and its `Params` dataclass — given to Hydra.

`conf/config.yaml` composes `method_defaults/<method>` (stored here, in Hydra's ConfigStore) under `method`, then
the method's own `conf/method/<name>.yaml`, which holds only comments (what the defaults are and why) in this
repository and may set keys in an outside package. A grid-wide knob a paper's sweep sets once (`alpha`, `dropout`,
…) is read by every method that has the matching field, through `${oc.select:<knob>,<the field's default>}`.
Call `install()` before anything composes a config (the runner, `sweep_config`, the tests' compose helpers);
Hydra's launchers carry the ConfigStore to their jobs with the rest of its singleton state.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hydra.core.config_store import ConfigStore
from peftbench.methods.base import METHODS, Method

GROUP = "method_defaults"
# Params field -> the sweep-level key that sets it for every method of a grid that has the field
KNOBS = {
    "lora_alpha": "alpha",
    "alpha": "alpha",
    "lora_dropout": "dropout",
    "aux_loss_coef": "moe_aux_loss_coef",
    "rank_means": "adalora_rank_means",
    "goat_variant": "goat_variant",
    "loraplus_lr_ratio": "loraplus_lr_ratio",
}
_installed: set[str] = set()


def _literal(value: Any) -> str:
    """`value` as it reads inside an interpolation's default (`null`, `false`, `1.0e-3`, `target`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def method_defaults(method: Method) -> dict[str, Any]:
    """The config node of a method: its name, then each `Params` field's default (knobs as interpolations)."""
    node: dict[str, Any] = {"name": method.name}
    for field in dataclasses.fields(method.Params):
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            raise TypeError(f"{type(method).__name__}.Params.{field.name} has no default")
        knob = KNOBS.get(field.name)
        node[field.name] = f"${{oc.select:{knob},{_literal(value)}}}" if knob else value
    return node


def install() -> None:
    """Store every registered method's defaults (the package's and entry points'); idempotent."""
    store = ConfigStore.instance()
    for name in METHODS.names():
        if name not in _installed:
            store.store(group=GROUP, name=name, node=method_defaults(METHODS.get(name)))
            _installed.add(name)
