"""Find the layers a method adapts, with PEFT's matching rule, and check a rank against them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from peftbench.core.errors import ConfigError
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class TargetLayer:
    """A linear layer to adapt: its dotted name and its (in, out) features."""

    name: str
    in_features: int
    out_features: int


def matches(module_name: str, targets: Iterable[str]) -> bool:
    """PEFT's rule for a list of names: the module's name is a target or ends in `.target`."""
    return any(module_name == t or module_name.endswith(f".{t}") for t in targets)


def in_head(param_name: str, head_modules: Iterable[str]) -> bool:
    """Whether a parameter belongs to the task head: one of its dotted name's parts is a head module."""
    parts = param_name.split(".")
    return any(head in parts for head in head_modules)


def target_layers(model: torch.nn.Module, targets: Iterable[str]) -> list[TargetLayer]:
    """Every nn.Linear / GPT-2 Conv1D whose name matches `targets`, in model order."""
    targets = list(targets)
    found = []
    for name, module in model.named_modules():
        if not matches(name, targets):
            continue
        if isinstance(module, torch.nn.Linear):
            found.append(TargetLayer(name, module.in_features, module.out_features))
        elif isinstance(module, Conv1D):
            in_features, out_features = module.weight.shape
            found.append(TargetLayer(name, in_features, out_features))
    return found


def require_targets(model: torch.nn.Module, targets: Iterable[str]) -> list[TargetLayer]:
    """The target layers, or a one-line ConfigError naming the unmatched targets and what exists."""
    targets = list(targets)
    layers = target_layers(model, targets)
    missing = [t for t in targets if not any(matches(layer.name, [t]) for layer in layers)]
    if missing:
        linear_leaves = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear | Conv1D)
            }
        )
        raise ConfigError(
            f"target_modules {missing} match no linear layer of this model; valid choices: {', '.join(linear_leaves)}"
        )
    return layers


def check_rank(rank: int, layers: Iterable[TargetLayer]) -> None:
    """A rank must not exceed min(in, out) of any target layer."""
    for layer in layers:
        limit = min(layer.in_features, layer.out_features)
        if rank > limit:
            raise ConfigError(
                f"rank={rank} exceeds min(in, out)={limit} of target layer {layer.name!r}; valid ranks: 1..{limit}"
            )
