"""Fold each adapter into its base weight for a while (evaluation by generation), then put the base weights back
bit for bit.

Generating token by token calls every wrapped linear hundreds of times; an unmerged adapter adds its own
matmuls and elementwise ops to each call, which on a CPU costs as much as the base layer. Merged, the layer
is one linear. The merge is the methods' own (PEFT's `merge()` of each tuner layer, our layers'
`merged_weight()`); afterwards each base weight (and bias) is restored from a copy rather than by subtracting
the update again, so training after an evaluation starts from exactly the weights it left. Only float32 base
weights are merged: W0 + ΔW rounded to bf16 would differ from the unmerged forward by more than fp32 rounding,
and greedy decoding must not change. Layers that cannot merge (routed experts, nonlinear adapters, prompt
learning) stay as they are.

Our own adapter layers are recognised by what they offer (`merged_weight()`, `base_layer`, `disabled`), not by
their class, so this kernel module needs nothing from `methods/`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peftbench.core.errors import NotMergeable
from torch import nn


def _saved(layer: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(t, t.detach().clone()) for t in (layer.weight, getattr(layer, "bias", None)) if t is not None]


def _fp32(layer: nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dtype == torch.float32


def _own_adapter(module: nn.Module) -> bool:
    """An adapter layer of ours (peftbench.methods.injection.AdapterLayer): it can fold itself into its base weight."""
    return (
        callable(getattr(module, "merged_weight", None))
        and hasattr(module, "base_layer")
        and hasattr(module, "disabled")
    )


@contextlib.contextmanager
def merged_adapters(model: nn.Module) -> Iterator[int]:
    """Within the block every mergeable adapter of `model` is folded into its fp32 base weight; yields how many
    layers were merged. On exit the base weights are the original tensors' values again and the adapters act."""
    restore: list[tuple[torch.Tensor, torch.Tensor]] = []
    undo: list[nn.Module] = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, BaseTunerLayer) and not module.merged:
                    base = module.get_base_layer()
                    if not _fp32(base):
                        continue
                    saved = _saved(base)
                    try:
                        module.merge()
                    except (ValueError, NotImplementedError, TypeError):
                        continue
                    restore += saved
                    undo.append(module)
                elif _own_adapter(module) and not module.disabled and _fp32(module.base_layer):
                    try:
                        merged = module.merged_weight()
                    except NotMergeable:
                        continue
                    restore += _saved(module.base_layer)
                    module.base_layer.weight.copy_(merged)
                    module.disabled = True
                    undo.append(module)
        yield len(undo)
    finally:
        with torch.no_grad():
            for tensor, copy in restore:
                tensor.copy_(copy)
        for module in undo:
            if _own_adapter(module):
                module.disabled = False
            else:
                module.merged_adapters.clear()
