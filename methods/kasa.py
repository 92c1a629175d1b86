"""KaSA (Wang et al. 2024, arXiv 2412.06071) through PEFT's `KasaConfig`, with the reference's regulariser.

W0 loses its r smallest singular components (a one-time SVD truncation); Δ = s·B·diag(σ)·A with a
trainable diagonal σ. The paper's two regularisers are added to the training loss through `aux_loss`,
in one of two forms:

- `aux_form: reference` (default; what the KaSA reference code, juyongjiang/KaSA `main.py:204-227`,
  computes and what the paper's GLUE numbers came from): the mean over the L KaSA layers of
  β·‖σ‖² + γ·(‖AᵀA − I_in‖_F + ‖B·Bᵀ − I_out‖_F), full-size identities, norms not squared.
  ‖AᵀA − I_in‖_F is computed exactly in r×r form, √(‖A·Aᵀ − I_r‖_F² + in − r) (AᵀA has A·Aᵀ's
  eigenvalues plus in − r zeros), so no in×in matrix is formed.
- `aux_form: peft`: PEFT's `_get_kasa_loss`, the sum over layers of β·‖σ‖² + γ·(‖BᵀB − I_r‖_F +
  ‖A·Aᵀ − I_r‖_F); at 768×768 its orthogonality gradient is ~14× the reference's, times L.

Truncation is PEFT's, which keeps min(in, out) − r components; the reference keeps in − r, so on a layer
with in > out (LLaMA's down_proj, LLaMA-3's k/v) it truncates nothing there, where PEFT drops r.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from peft import KasaConfig
from peft.tuners.lora import LoraLayer

from core.errors import ConfigError
from methods.base import RunContext, register
from methods.lora import Lora, LoraParams
from methods.targets import require_targets


@dataclass
class KasaParams(LoraParams):
    beta: float = field(default=1e-4, metadata={"help": "weight of the L2 penalty on the singular values σ"})
    gamma: float = field(default=1e-3, metadata={"help": "weight of the orthogonality penalty on A and B"})
    aux_form: Literal["reference", "peft"] = field(
        default="reference",
        metadata={"help": "reference: mean over layers, in×in / out×out identities; peft: PEFT's sum, r×r form"},
    )

    def check(self) -> None:
        super().check()
        for key in ("beta", "gamma"):
            if getattr(self, key) < 0:
                raise ConfigError(f"method.{key}={getattr(self, key)} is not valid; give a number >= 0")


def kasa_factors(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(σ, A, B) of every KaSA layer of the active adapter: σ ∈ R^r, A ∈ R^{r×in}, B ∈ R^{out×r}."""
    return [
        (m.lora_diag["default"], m.lora_A["default"].weight, m.lora_B["default"].weight)
        for m in model.modules()
        if isinstance(m, LoraLayer) and "default" in getattr(m, "lora_diag", {})
    ]


def _distance_to_identity(gram: torch.Tensor, size: int) -> torch.Tensor:
    """‖M − I_size‖_F for M = FᵀF of size×size and rank ≤ r, from its r×r twin gram = F·Fᵀ (exact)."""
    eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
    return torch.sqrt((gram - eye).pow(2).sum() + (size - gram.shape[0]))


def reference_kasa_loss(
    factors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], beta: float, gamma: float
) -> torch.Tensor | None:
    """The reference's (β·Σ‖σ‖² + γ·Σ(‖AᵀA − I_in‖_F + ‖BBᵀ − I_out‖_F)) / L, computed in float32."""
    if not factors:
        return None
    total = None
    for diag, a, b in factors:
        a, b = a.float(), b.float()
        orthogonality = _distance_to_identity(a @ a.T, a.shape[1]) + _distance_to_identity(b.T @ b, b.shape[0])
        term = beta * diag.float().pow(2).sum() + gamma * orthogonality
        total = term if total is None else total + term
    return total / len(factors)


@register
class Kasa(Lora):
    name = "kasa"
    Params = KasaParams

    def validate(self, params: KasaParams, model: torch.nn.Module, ctx: RunContext) -> None:
        """W0 keeps min(in, out) − r singular components: at least one must be left."""
        for layer in require_targets(model, ctx.target_modules):
            limit = min(layer.in_features, layer.out_features) - 1
            if ctx.rank > limit:
                raise ConfigError(
                    f"rank={ctx.rank} leaves no singular component of target layer {layer.name!r} "
                    f"(min(in, out) = {limit + 1}) for KaSA; valid ranks: 1..{limit}"
                )

    def peft_options(self, params: KasaParams, ctx: RunContext) -> dict[str, Any]:
        return {"kasa_config": KasaConfig(beta=params.beta, gamma=params.gamma)}

    def aux_loss(self, model: torch.nn.Module, params: KasaParams) -> torch.Tensor | None:
        if params.aux_form == "reference":
            return reference_kasa_loss(kasa_factors(model), params.beta, params.gamma)
        loss = model.base_model._get_kasa_loss()
        return loss if torch.is_tensor(loss) else None
