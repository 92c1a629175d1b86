"""LoRA-GA (Wang et al. 2024, arXiv 2407.05000): LoRA initialised from the SVD of the weight gradient.

Before training, the gradient G (out × in) of each target weight is estimated on a few batches of the
task's training split (`calibration_batches`, PEFT's `preprocess_loraga`). With G ≈ U·diag(S)·Vᵀ (a
randomised SVD of rank min(4r, out, in), 4 iterations, as both implementations) and the `direction`
choosing which singular vectors go where (default ArB2r: A = V[:, :r]ᵀ, B = U[:, r:2r]), two forms:

- `init_form: reference` (default; the LoRA-GA reference code, Outsider565/LoRA-GA, its `layer.py`
  `reproduce/run_exp.py`): A = c·V[:, :r]ᵀ, B = c·U[:, r:2r], c = out^(1/4)/√γ (the "stable" scale on
  both factors), no singular values;
- `init_form: peft`: PEFT's `init_lora_weights="lora_ga"`: A = V[:, :r]ᵀ, B = U[:, r:2r]·diag(S[r:2r])·c,
  the singular values on B and the scale on B only (`scale` chooses PEFT's other scalings).

The directions agree, the sizes do not (‖s·B·A‖ differs by the gradient's singular values). Both keep
W_res = W0 − s·B·A, so the model's output at init is the base model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from peft import LoraGAConfig, get_peft_model
from peft.tuners.lora import LoraLayer, preprocess_loraga
from peftbench.core.errors import ConfigError
from peftbench.methods.base import RunContext, register
from peftbench.methods.lora import LoraParams, ResidualInitLora, lora_config


@dataclass
class LoraGaParams(LoraParams):
    calibration_batches: int = field(default=8, metadata={"help": "training batches used to estimate gradients"})
    init_form: Literal["reference", "peft"] = field(
        default="reference",
        metadata={"help": "reference: A, B scaled by out^(1/4)/√γ, no singular values; peft: PEFT's lora_ga init"},
    )
    direction: Literal["ArBr", "A2rBr", "ArB2r", "random"] = field(
        default="ArB2r", metadata={"help": "which gradient singular vectors go to A and B (PEFT's option)"}
    )
    scale: Literal["stable", "weight_svd", "gd_scale", "unit"] = field(
        default="stable", metadata={"help": "init_form=peft: PEFT's scaling of the init (the paper's 'stable')"}
    )
    stable_gamma: int = field(default=16, metadata={"help": "γ of the stable scaling"})

    def check(self) -> None:
        super().check()
        if self.calibration_batches < 1:
            raise ConfigError(
                f"method.calibration_batches={self.calibration_batches} is not valid; give a positive integer"
            )
        if self.init_form == "reference" and self.scale != "stable":
            raise ConfigError(f"method.scale={self.scale!r} applies to init_form=peft only; the reference is 'stable'")


def direction_indices(direction: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of the 2r leading singular vectors go to A (rows of Vᵀ) and to B (columns of U)."""
    if direction == "ArBr":
        return torch.arange(1, 2 * rank, 2), torch.arange(0, 2 * rank, 2)
    if direction == "A2rBr":
        return torch.arange(rank, 2 * rank), torch.arange(rank)
    if direction == "ArB2r":
        return torch.arange(rank), torch.arange(rank, 2 * rank)
    chosen = torch.randperm(2 * rank)[:rank]
    return chosen, chosen


@torch.no_grad()
def reference_init(layer: LoraLayer, grad: torch.Tensor, direction: str, gamma: float) -> None:
    """Re-initialise a PEFT LoRA layer as the LoRA-GA reference does; W_res + s·B·A stays W0."""
    weight = layer.get_base_layer().weight
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    rank, scale = a.shape[0], layer.scaling["default"]
    w0 = weight.float() + scale * b.float() @ a.float()  # undo PEFT's residual
    grad = grad.float().T if layer.fan_in_fan_out else grad.float()
    u, _, v = torch.svd_lowrank(grad, q=min(4 * rank, min(grad.shape)), niter=4)
    a_index, b_index = direction_indices(direction, rank)
    c = grad.shape[0] ** 0.25 / gamma**0.5  # out_features^(1/4) / √γ
    a.copy_(c * v[:, a_index].T)
    b.copy_(c * u[:, b_index])
    weight.copy_((w0 - scale * b.float() @ a.float()).to(weight.dtype))


@register
class LoraGa(ResidualInitLora):
    name = "lora_ga"
    Params = LoraGaParams

    def peft_options(self, params: LoraGaParams, ctx: RunContext) -> dict[str, Any]:
        ga = LoraGAConfig(direction=params.direction, scale=params.scale, stable_gamma=params.stable_gamma)
        return {"init_lora_weights": "lora_ga", "lora_ga_config": ga}

    def apply(self, model: torch.nn.Module, params: LoraGaParams, ctx: RunContext) -> torch.nn.Module:
        config = lora_config(params, ctx, **self.peft_options(params, ctx))
        batches = ctx.sample_batches(params.calibration_batches)
        device = next(model.parameters()).device

        def train_step() -> None:
            for batch in batches:
                model(**{k: v.to(device) for k, v in batch.items()}).loss.backward()

        preprocess_loraga(model, config, train_step)
        # PEFT deletes each estimated gradient once it has used it: keep them for the reference form
        grads = {id(m): m._peft_loraga_grad for m in model.modules() if hasattr(m, "_peft_loraga_grad")}
        peft_model = get_peft_model(model, config)
        if params.init_form == "reference":
            for module in peft_model.modules():
                if isinstance(module, LoraLayer) and "default" in module.lora_A:
                    grad = grads[id(module.get_base_layer())]
                    reference_init(module, grad, params.direction, float(params.stable_gamma))
        return self._keep_initial(peft_model)
