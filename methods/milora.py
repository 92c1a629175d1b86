"""MiLoRA (Wang et al. 2024, arXiv 2406.09044): PiSSA with the r *smallest* singular triplets.

With W0 = U·diag(S)·Vᵀ: A = diag(√(S_min/s))·V_minᵀ, B = U_min·diag(√(S_min/s)), W_res = W0 − s·B·A,
so W_res + s·B·A = W0 and s·B·A is W0's minor rank-r part. Built on PEFT's LoRA layer (only the init
is ours), so a saved adapter is a plain PEFT LoRA adapter relative to the original W0 (rank 2r,
converted like PiSSA's) that `PeftModel.from_pretrained` loads onto the untouched base model.
`goat_variant: true` reproduces GOAT's in-repo MiLoRA: S divided by an extra ρ = 10 and s = 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from peft.tuners.lora import LoraLayer

from methods.base import RunContext, register
from methods.lora import LoraParams, ResidualInitLora

GOAT_RHO, GOAT_SCALE = 10.0, 2.0


@dataclass
class MiLoraParams(LoraParams):
    goat_variant: bool = field(default=False, metadata={"help": "GOAT's in-repo variant: S/ρ with ρ = 10, s = 2"})


@torch.no_grad()
def minor_init(layer: LoraLayer, rho: float) -> None:
    """A, B from the r smallest singular triplets of W0 (divided by ρ); W0 ← W0 − s·B·A."""
    weight = layer.base_layer.weight
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    rank, scale = a.shape[0], layer.scaling["default"]
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    root = torch.sqrt(s[-rank:] / (scale * rho))
    a.copy_(root[:, None] * vh[-rank:])
    b.copy_(u[:, -rank:] * root[None, :])
    weight.copy_((weight.float() - scale * b.float() @ a.float()).to(weight.dtype))


@register
class MiLora(ResidualInitLora):
    name = "milora"
    Params = MiLoraParams

    def apply(self, model: torch.nn.Module, params: MiLoraParams, ctx: RunContext) -> torch.nn.Module:
        if params.goat_variant:
            params = MiLoraParams(**{**params.__dict__, "lora_alpha": GOAT_SCALE * ctx.rank})
        peft_model = super(ResidualInitLora, self).apply(model, params, ctx)
        for module in peft_model.modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                minor_init(module, GOAT_RHO if params.goat_variant else 1.0)
        return self._keep_initial(peft_model)

    def peft_options(self, params: Any, ctx: RunContext) -> dict[str, Any]:
        return {}
