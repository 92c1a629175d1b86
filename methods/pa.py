"""PA, the parallel adapter (He et al. 2022, arXiv 2110.04366) as Subspace Tuning (arXiv 2407.05417) runs it.

Δ(x) = B·drop(ReLU(A·x)) on every target linear, A ∈ R^{r×in} Kaiming-uniform(a=√5), B ∈ R^{out×r} zero, no
biases and no α/r factor (the reference computes `scaling` and never uses it): Subspace-Tuning
`loralib/loralib/layers_PA.py:52-54, 65-66, 75-79`. That file is also what the paper's tables print as
"LoRA+MPCn" (the rows are equal cell for cell), so PA is the harness's `lora_mpcn` with the activation
pinned to ReLU and the scale to one: the same layer, the same init for the same seed. It differs from He et
al.'s block-level adapter beside the whole FFN. Trainable: r(in+out) per target layer. Not mergeable (ReLU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftbench.core.errors import ConfigError
from peftbench.methods.base import RunContext, register
from peftbench.methods.mpc import LoraMpcn, MpcnLayer, MpcnParams
from torch import nn


@dataclass
class PaParams:
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout after the ReLU (the reference's), in [0, 1)"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "layer names to adapt; null = the model config's target_modules"}
    )

    def check(self) -> None:
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"method.lora_dropout={self.lora_dropout} is not valid; give a value in [0, 1)")


@register
class Pa(LoraMpcn):
    name = "pa"
    Params = PaParams

    @staticmethod
    def as_mpcn(params: PaParams) -> MpcnParams:
        """The `lora_mpcn` settings PA stands for: ReLU, scale one."""
        return MpcnParams(lora_dropout=params.lora_dropout, target_modules=params.target_modules, activation="relu",
                          scale="one")  # fmt: skip

    def make_layer(self, name: str, linear: nn.Linear, params: PaParams, ctx: RunContext) -> MpcnLayer:
        return super().make_layer(name, linear, self.as_mpcn(params), ctx)
