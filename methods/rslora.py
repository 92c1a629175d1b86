"""rsLoRA (Kalajdzievski 2023, arXiv 2312.03732): LoRA with the rank-stabilised scale s = α/√r (PEFT)."""

from __future__ import annotations

from typing import Any

from peftbench.methods.base import RunContext, register
from peftbench.methods.lora import Lora, LoraParams


@register
class RsLora(Lora):
    name = "rslora"
    Params = LoraParams

    def peft_options(self, params: Any, ctx: RunContext) -> dict[str, Any]:
        return {"use_rslora": True}
