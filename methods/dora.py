"""DoRA (Liu et al. 2024, arXiv 2402.09353) through PEFT's `use_dora`.

W' = m ⊙ (W0 + s·B·A) / ‖W0 + s·B·A‖_row, the norm detached from the graph; m starts as the row norms
of W0, so the output at init equals the base. Trainable: LoRA's r·(in + out) plus `out` per layer.
"""

from __future__ import annotations

from typing import Any

from peftbench.methods.base import RunContext, register
from peftbench.methods.lora import Lora, LoraParams


@register
class Dora(Lora):
    name = "dora"
    Params = LoraParams

    def peft_options(self, params: Any, ctx: RunContext) -> dict[str, Any]:
        return {"use_dora": True}
