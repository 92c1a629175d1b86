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

W0's truncation, in one of two forms:

- `truncation: reference` (default): the reference's rule, `svd_rank = self.in_features - r` and
  `U[:, :svd_rank] @ diag(S[:svd_rank]) @ Vh[:svd_rank]` (juyongjiang/KaSA
  `peft/src/peft/tuners/lora/layer.py:134-138`):
  it keeps min(in − r, min(in, out)) components, so on a layer with in > out (LLaMA's down_proj, LLaMA-3's k/v
  at GQA) it drops fewer than r — none when in − r ≥ out — and W0 is only re-assembled from its SVD.
- `truncation: peft`: PEFT's `KasaLinearVariant`, which drops the r smallest of min(in, out) components on
  every layer (what the two forms share when in ≤ out).

PEFT builds the layer either way; the reference rule replaces PEFT's truncation step (its static
`_truncate_base_weight`) while the adapter is built (`apply`) or loaded (`load`), so PEFT's save format and merging
stay PEFT's. (A truncation PEFT defers to the first forward — adapters built on the meta device with
`low_cpu_mem_usage`, which the harness does not use — would run PEFT's rule.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from peft import KasaConfig, PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.variants import KasaLinearVariant
from peftbench.core.errors import ConfigError
from peftbench.methods.base import RunContext, register
from peftbench.methods.lora import Lora, LoraParams
from peftbench.methods.targets import require_targets


@dataclass
class KasaParams(LoraParams):
    beta: float = field(default=1e-4, metadata={"help": "weight of the L2 penalty on the singular values σ"})
    gamma: float = field(default=1e-3, metadata={"help": "weight of the orthogonality penalty on A and B"})
    aux_form: Literal["reference", "peft"] = field(
        default="reference",
        metadata={"help": "reference: mean over layers, in×in / out×out identities; peft: PEFT's sum, r×r form"},
    )
    truncation: Literal["reference", "peft"] = field(
        default="reference",
        metadata={"help": "reference: W0 keeps min(in − r, min(in, out)) components; peft: min(in, out) − r"},
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


def kept_components(in_features: int, out_features: int, rank: int, truncation: str) -> int:
    """How many singular components of W0 (out×in) the truncation keeps."""
    k = min(in_features, out_features)
    return min(in_features - rank, k) if truncation == "reference" else k - rank


def _reference_truncate(module: LoraLayer, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's truncation, in the signature of PEFT's `KasaLinearVariant._truncate_base_weight`.

    The reference slices `[:in − r]` out of a thin SVD of min(in, out) components, so a slice end past k keeps all
    k; it always re-assembles W0 from the kept triplets (in float32, cast back). Returns the dropped components as
    PEFT's does, `(U_d·S_d, Vh_d)` (empty when nothing is dropped), for its deferred-truncation correction.
    """
    base_layer = module.get_base_layer()
    weight = base_layer.weight
    out_features, in_features = weight.shape
    keep = kept_components(in_features, out_features, r, "reference")
    if keep < 1:
        raise ValueError(f"KaSA (reference truncation) needs r ({r}) < in_features ({in_features})")
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float32), full_matrices=False)
    base_layer.weight.data = (u[:, :keep] @ torch.diag(s[:keep]) @ vh[:keep]).to(weight.dtype)
    return u[:, keep:] * s[keep:], vh[keep:]


@contextlib.contextmanager
def truncation_rule(truncation: str) -> Iterator[None]:
    """While a KaSA adapter is built or loaded: PEFT's truncation step follows `truncation`."""
    if truncation == "peft":
        yield
        return
    original = KasaLinearVariant.__dict__["_truncate_base_weight"]
    KasaLinearVariant._truncate_base_weight = staticmethod(_reference_truncate)
    try:
        yield
    finally:
        KasaLinearVariant._truncate_base_weight = original


@register
class Kasa(Lora):
    name = "kasa"
    Params = KasaParams

    def validate(self, params: KasaParams, model: torch.nn.Module, ctx: RunContext) -> None:
        """W0 must keep at least one singular component (reference: in − r ≥ 1; peft: min(in, out) − r ≥ 1)."""
        for layer in require_targets(model, ctx.target_modules):
            if kept_components(layer.in_features, layer.out_features, ctx.rank, params.truncation) < 1:
                size, limit = (
                    ("in", layer.in_features)
                    if params.truncation == "reference"
                    else ("min(in, out)", min(layer.in_features, layer.out_features))
                )
                raise ConfigError(
                    f"rank={ctx.rank} leaves no singular component of target layer {layer.name!r} "
                    f"({size} = {limit}) for KaSA (truncation={params.truncation}); valid ranks: 1..{limit - 1}"
                )

    def apply(self, model: torch.nn.Module, params: KasaParams, ctx: RunContext) -> torch.nn.Module:
        with truncation_rule(params.truncation):
            return super().apply(model, params, ctx)

    def load(self, base_model: torch.nn.Module, out_dir: str, params: KasaParams, ctx: RunContext) -> torch.nn.Module:
        """PEFT re-truncates the fresh base while loading: by the rule the adapter was trained with."""
        with truncation_rule(params.truncation):
            return PeftModel.from_pretrained(base_model, out_dir)

    def peft_options(self, params: KasaParams, ctx: RunContext) -> dict[str, Any]:
        return {"kasa_config": KasaConfig(beta=params.beta, gamma=params.gamma)}

    def aux_loss(self, model: torch.nn.Module, params: KasaParams) -> torch.Tensor | None:
        if params.aux_form == "reference":
            return reference_kasa_loss(kasa_factors(model), params.beta, params.gamma)
        loss = model.base_model._get_kasa_loss()
        return loss if torch.is_tensor(loss) else None
