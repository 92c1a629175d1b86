"""PiSSA (Meng et al. 2024, arXiv 2404.02948) through PEFT's `init_lora_weights="pissa"`.

With W0 = U·diag(S)·Vᵀ: A = diag(√(S_r/s))·V_rᵀ, B = U_r·diag(√(S_r/s)), W_res = W0 − s·B·A, so
W_res + s·B·A = W0 and s·B·A is the best rank-r approximation of W0. `pissa_niter: K` uses PEFT's fast
randomised SVD (`pissa_niter_K`) instead of the exact one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.errors import ConfigError
from methods.base import RunContext, register
from methods.lora import LoraParams, ResidualInitLora


@dataclass
class PissaParams(LoraParams):
    pissa_niter: int | None = field(
        default=None, metadata={"help": "null: exact SVD; K > 0: fast randomised SVD with K subspace iterations"}
    )

    def check(self) -> None:
        super().check()
        if self.pissa_niter is not None and self.pissa_niter <= 0:
            raise ConfigError(f"method.pissa_niter={self.pissa_niter} is not valid; give a positive integer or null")


@register
class Pissa(ResidualInitLora):
    name = "pissa"
    Params = PissaParams

    def peft_options(self, params: PissaParams, ctx: RunContext) -> dict[str, Any]:
        init = "pissa" if params.pissa_niter is None else f"pissa_niter_{params.pissa_niter}"
        return {"init_lora_weights": init}
