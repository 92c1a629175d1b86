"""HydraLoRA (Tian et al. 2024, arXiv 2404.19245; GOAT's baseline): one shared A, E heads B_i.

A ∈ R^{r_e×in} (Kaiming) is shared, B_i ∈ R^{out×r_e} start at zero; the router is a dense softmax over
all heads (no top-k, so `top_k` is ignored and no load-balancing loss applies):
h = W0·x + Σ_i g_i·(α/r)·B_i·A·x, with r the total rank as the spec writes it. See `methods.moe`.
Trainable: r_e·in + E·out·r_e + in·E per layer.
"""

from __future__ import annotations

from methods.base import RunContext, register
from methods.moe import MoeMethod, MoeParams


@register
class HydraLora(MoeMethod):
    name = "hydralora"
    Params = MoeParams
    shared_a = True

    def top_k(self, params: MoeParams) -> None:
        return None

    def scale(self, params: MoeParams, ctx: RunContext, in_features: int) -> float:
        return params.lora_alpha / ctx.rank
