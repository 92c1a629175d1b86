"""KaSA (Wang et al. 2024, arXiv 2412.06071) through PEFT's `KasaConfig`.

W0 loses its r smallest singular components (a one-time SVD truncation); Δ = s·B·diag(σ)·A with a
trainable diagonal σ. The paper's two regularisers, β·‖σ‖² and γ·(‖BᵀB − I‖_F + ‖AAᵀ − I‖_F), come
from PEFT's `_get_kasa_loss` and are added to the training loss through `aux_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from peft import KasaConfig

from bench.errors import ConfigError
from methods.base import RunContext, register
from methods.lora import Lora, LoraParams


@dataclass
class KasaParams(LoraParams):
    beta: float = field(default=1e-4, metadata={"help": "weight of the L2 penalty on the singular values σ"})
    gamma: float = field(default=1e-3, metadata={"help": "weight of the orthogonality penalty on A and B"})

    def check(self) -> None:
        super().check()
        for key in ("beta", "gamma"):
            if getattr(self, key) < 0:
                raise ConfigError(f"method.{key}={getattr(self, key)} is not valid; give a number >= 0")


@register
class Kasa(Lora):
    name = "kasa"
    Params = KasaParams

    def peft_options(self, params: KasaParams, ctx: RunContext) -> dict[str, Any]:
        return {"kasa_config": KasaConfig(beta=params.beta, gamma=params.gamma)}

    def aux_loss(self, model: torch.nn.Module, params: Any) -> torch.Tensor | None:
        loss = model.base_model._get_kasa_loss()
        return loss if torch.is_tensor(loss) else None
