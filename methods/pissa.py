"""PiSSA (Meng et al. 2024, arXiv 2404.02948) through PEFT's `init_lora_weights="pissa"`.

With W0 = U·diag(S)·Vᵀ: A = diag(√(S_r/s))·V_rᵀ, B = U_r·diag(√(S_r/s)), W_res = W0 − s·B·A, so
W_res + s·B·A = W0 and s·B·A is the best rank-r approximation of W0. `pissa_niter: K` uses PEFT's fast
randomised SVD (`pissa_niter_K`) instead of the exact one.

`goat_variant: true` reproduces the PiSSA of GOAT's code base (Facico/GOAT-PEFT
`goat/peta/src/goat/layer.py:131-132, 169-173, 209`, init_type "pissa"), which GOAT's tables ran: the
scale is fixed at s = 2 and S divided by s·ρ with ρ = 10, so the adapter holds a tenth of the principal
part, s·B·A = U_r·diag(S_r/10)·V_rᵀ, and W_res = W0 − s·B·A.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from peftbench.core.errors import ConfigError
from peftbench.methods.base import RunContext, register
from peftbench.methods.lora import LoraParams, ResidualInitLora
from peftbench.methods.milora import GOAT_RHO, svd_init_all

GOAT_PISSA_SCALE = 2.0  # GOAT's layer.py: `elif init_type == "pissa": scaling = 2`


@dataclass
class PissaParams(LoraParams):
    pissa_niter: int | None = field(
        default=None, metadata={"help": "null: exact SVD; K > 0: fast randomised SVD with K subspace iterations"}
    )
    goat_variant: bool = field(default=False, metadata={"help": "GOAT's in-repo variant: s = 2, S/(s·ρ), ρ = 10"})

    def check(self) -> None:
        super().check()
        if self.pissa_niter is not None and self.pissa_niter <= 0:
            raise ConfigError(f"method.pissa_niter={self.pissa_niter} is not valid; give a positive integer or null")


@register
class Pissa(ResidualInitLora):
    name = "pissa"
    Params = PissaParams

    def peft_options(self, params: PissaParams, ctx: RunContext) -> dict[str, Any]:
        if params.goat_variant:
            return {}  # plain LoRA first; the init is ours (apply)
        init = "pissa" if params.pissa_niter is None else f"pissa_niter_{params.pissa_niter}"
        return {"init_lora_weights": init}

    def apply(self, model: torch.nn.Module, params: PissaParams, ctx: RunContext) -> torch.nn.Module:
        if not params.goat_variant:
            return super().apply(model, params, ctx)
        params = PissaParams(**{**params.__dict__, "lora_alpha": GOAT_PISSA_SCALE * ctx.rank})
        peft_model = super(ResidualInitLora, self).apply(model, params, ctx)
        svd_init_all(peft_model, "major", GOAT_RHO)
        return self._keep_initial(peft_model)
