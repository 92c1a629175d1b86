"""What a method may know about the run it is part of, built in one place by `RunContext.build`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch


def method_targets(params: Any, model_targets: Iterable[str]) -> list[str]:
    """The modules a method adapts: its own `target_modules` when its parameters set them, else the model's."""
    return list(getattr(params, "target_modules", None) or model_targets)


@dataclass(frozen=True)
class RunContext:
    """What a method may know about the run it is part of.

    `sample_batches(n)` gives n collated training batches (for data-driven inits such as LoRA-GA);
    `sample_batches(n, batch_size=b)` batches of b rows. `store_root` is the results store, `inputs` what
    the method's `inputs` hook resolved before the run.
    """

    rank: int | None
    lr: float
    seed: int
    target_modules: list[str]
    head_modules: list[str]
    total_steps: int
    weight_decay: float = 0.0
    sample_batches: Callable[..., list[dict[str, torch.Tensor]]] | None = None
    store_root: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, params: Any, model_targets: Iterable[str], **fields: Any) -> RunContext:
        """The context of a run (or a count, a timing, a standalone wrap) of a method with `params` on a model whose
        config targets `model_targets`; the other fields as the dataclass names them."""
        return cls(target_modules=method_targets(params, model_targets), **fields)
