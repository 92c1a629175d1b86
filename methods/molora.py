"""MoLoRA (Zadouri et al. 2023, arXiv 2309.05444; GOAT's baseline): LoRA experts behind a top-k router.

Each expert: Kaiming A_i ∈ R^{r_e×in}, zero B_i ∈ R^{out×r_e}; W_res = W0; s = α/r_e. See `peftbench.methods.moe`.
Trainable: E·r_e·(in + out) + in·E per layer.
"""

from __future__ import annotations

from peftbench.methods.base import register
from peftbench.methods.moe import MoeMethod, MoeParams


@register
class MoLora(MoeMethod):
    name = "molora"
    Params = MoeParams
