"""HydraLoRA (Tian et al. 2024, arXiv 2404.19245; GOAT's baseline): one shared A, E heads B_i.

A ∈ R^{r_A×in} (Kaiming) is shared, B_i ∈ R^{out×r_A} start at zero; the router is a dense softmax over
all heads (no top-k, so `top_k` is ignored and no load-balancing loss applies):
h = W0·x + Σ_i g_i·s·B_i·A·drop_i(x), s = α/r_A, each head with its own dropout mask. As the official code
builds it (Clin0212/HydraLoRA `HydraLoRA/peft/tuners/lora.py:279-284`: `lora_A` = Linear(in, r), E heads
`lora_B{i}` = Linear(r, out), `scaling = lora_alpha / r`, r being A's rank; `:339-342` the forward). A's rank
is GOAT's split of the total rank, r_A = r/E (GOAT `goat/peta/src/goat/layer.py:108,150-155` builds HydraLoRA
from the r/E experts, keeping one A; its `scaling` is α/(r/E) too, `:142`), which GOAT Table 4's params column
confirms (2.75% at r 32, E 8 on RoBERTa-large = r_A·in + E·r_A·out + in·E per layer). So s = α/r_e, E times
α/r. GOAT Table 3 prints LoRA's 0.84% for HydraLoRA; this layout trains 0.57% there (no integer r_A gives
0.84%: r_A ≈ 6.2), as in Table 4's own count. See `peftbench.methods.moe`.
Trainable: r_e·in + E·out·r_e + in·E per layer.
"""

from __future__ import annotations

from peftbench.methods.base import register
from peftbench.methods.moe import MoeMethod, MoeParams


@register
class HydraLora(MoeMethod):
    name = "hydralora"
    Params = MoeParams
    shared_a = True

    def top_k(self, params: MoeParams) -> None:
        return None

    # the scale is MoeMethod's α/r_e: α over A's rank, as the official code's `lora_alpha / self.r`
