"""OLoRA (Büyükakyüz 2024, arXiv 2406.01775) through PEFT's `init_lora_weights="olora"`.

B, A come from the QR decomposition of W0 (its first r columns / rows); W_res = W0 − s·B·A.
"""

from __future__ import annotations

from typing import Any

from peftbench.methods.base import RunContext, register
from peftbench.methods.lora import LoraParams, ResidualInitLora


@register
class Olora(ResidualInitLora):
    name = "olora"
    Params = LoraParams

    def peft_options(self, params: Any, ctx: RunContext) -> dict[str, Any]:
        return {"init_lora_weights": "olora"}
