"""AdaLoRA-MPCo (Subspace Tuning, Si et al. 2024, arXiv 2407.05417): AdaLoRA (arXiv 2303.10512) without its
orthogonality regulariser.

AdaLoRA trains W0 + s·P·diag(E)·Q with loss L + w·R_orth, R_orth = mean over every P and Q of
‖PᵀP − I‖_F / ‖QQᵀ − I‖_F (PEFT `AdaLoraModel.forward`); AdaLoRA-MPCo is the same with w = 0, i.e. PEFT's
`AdaLoraConfig(orth_reg_weight=0)`, everything else (budget, schedule, rank) as the harness's `adalora`.
The reading is from the paper's naming (it treats AdaLoRA's orth reg as MPCo; the repo has no code for it).
`orth_reg_weight` stays a key, but its only valid value is 0. Trainable: as AdaLoRA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import AdaLoraConfig
from peftbench.core.errors import ConfigError
from peftbench.methods.adalora import AdaLora, AdaLoraParams
from peftbench.methods.base import RunContext, register


@dataclass
class AdaLoraMpcoParams(AdaLoraParams):
    orth_reg_weight: float = field(
        default=0.0, metadata={"help": "fixed at 0: AdaLoRA-MPCo is AdaLoRA without its orthogonality regulariser"}
    )

    def check(self) -> None:
        super().check()
        if self.orth_reg_weight != 0.0:
            raise ConfigError(
                f"method.orth_reg_weight={self.orth_reg_weight} is not valid for adalora_mpco (AdaLoRA without "
                "its orthogonality regulariser); valid choices: 0"
            )


@register
class AdaLoraMpco(AdaLora):
    name = "adalora_mpco"
    Params = AdaLoraMpcoParams

    def adalora_config(self, params: AdaLoraParams, ctx: RunContext) -> AdaLoraConfig:
        config = super().adalora_config(params, ctx)
        config.orth_reg_weight = 0.0
        return config
