"""Shared pieces of the native low-rank variants (TriLoRA, FLoRA, LieRA; Subspace Tuning, arXiv 2407.05417).

- `LowRankParams`: the keys every such method takes (α, input dropout, targets). No `bias` key: these
  layers never train the base bias, as the reference's loralib (`mark_only_lora_as_trainable`).
- `kaiming_(t)`: PyTorch's nn.Linear init, Kaiming-uniform with a = √5, i.e. U(±1/√fan_in) over t's
  last dimension — the reference's `nn.init.kaiming_uniform_(…, a=math.sqrt(5))`. Runs on meta tensors.
- `orth_reg(pairs)`: AdaLoRA's orthogonality regulariser exactly as PEFT computes it
  (`AdaLoraModel.forward`): the mean over every factor P of ‖P·Pᵀ − I‖_F (A-side, P = A ∈ R^{r×in}) or
  ‖Pᵀ·P − I‖_F (B-side, P = B ∈ R^{out×r}), unsquared Frobenius norms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from peftbench.core.errors import ConfigError
from torch import nn


@dataclass
class LowRankParams:
    lora_alpha: float = field(default=16, metadata={"help": "scaling numerator: s = lora_alpha / r"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input, in [0, 1)"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "layer names to adapt; null = the model config's target_modules"}
    )

    def check(self) -> None:
        if self.lora_alpha <= 0:
            raise ConfigError(f"method.lora_alpha={self.lora_alpha} is not valid; give a positive number")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"method.lora_dropout={self.lora_dropout} is not valid; give a value in [0, 1)")


def kaiming_(tensor: torch.Tensor) -> torch.Tensor:
    """nn.Linear's default init, U(±1/√fan_in) with fan_in = the last dimension (works on meta)."""
    return nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))


def orth_reg(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | None:
    """PEFT AdaLoRA's R_orth: mean over all factors of ‖AAᵀ − I‖_F and ‖BᵀB − I‖_F (not squared)."""
    terms = []
    for a, b in pairs:
        for gram in (a @ a.T, b.T @ b):
            eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
            terms.append(torch.linalg.matrix_norm(gram - eye))
    return torch.stack(terms).mean() if terms else None
