"""SingLoRA (Bensaïd et al. 2025, arXiv 2507.05566): one low-rank matrix, W = W0 + (α/r)·u(t)·A·Aᵀ.

A ∈ R^{n×r}, n = max(in, out), initialised with entries of order n^(−1/2) as the paper asks (§3.2, §4.2,
appendix A.1: "Θ(n^{−1/2}) (known as Kaiming initialization)"): U(±1/√n), i.e. Kaiming-uniform(a=√5) with
the fan taken over the layer width n (`init: paper`). `init: fan_r` is what the unofficial codes
(kyegomez/SingLoRA, peft-singlora) do — Kaiming with PyTorch's default fan_in, which on an (n, r) tensor is r,
so U(±1/√r) and (α/r)·A·Aᵀ comes out n/r times larger; it is kept only to reproduce those codes (the
authors released none). For a non-square layer the update is
Δ(x) = (α/r)·u(t)·A[:out]·(A[:in]ᵀ·x), computed right to left so no out×in matrix is formed.
u(t) = min(t/T, 1) with t the optimizer steps taken: the output equals the base model's at t = 0.
T is `ramp_share` of the run's steps (the paper's appendix: 1%, robust for 0.5–8%) unless
`ramp_steps` fixes it (the paper's GLUE setup: 1000). Square layers get a symmetric ΔW.
Trainable: max(in, out)·r per layer (half of LoRA's on square layers). ΔW has rank ≤ r, so the adapter
exports exactly to PEFT LoRA: B = (α/r)·u·A[:out], A_lora = A[:in]ᵀ, with scale 1 (`to_peft`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.injection import AdapterLayer, InjectedModel, NativeMethod, adapter_layers_of
from torch import nn
from transformers import TrainerCallback


@dataclass
class SingLoraParams:
    alpha: float | None = field(default=None, metadata={"help": "scale numerator α; null = r (the paper's α = r)"})
    ramp_share: float = field(default=0.01, metadata={"help": "T as a share of the run's optimizer steps"})
    ramp_steps: int | None = field(default=None, metadata={"help": "T in optimizer steps; overrides ramp_share"})
    init: Literal["paper", "fan_r"] = field(
        default="paper",
        metadata={"help": "paper: A ~ U(±1/√n), n = max(in, out); fan_r: U(±1/√r), the unofficial codes' init"},
    )
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "layer names to adapt; null = the model config's target_modules"}
    )

    def check(self) -> None:
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"method.alpha={self.alpha} is not valid; give a positive number or null")
        if not 0.0 < self.ramp_share <= 1.0:
            raise ConfigError(f"method.ramp_share={self.ramp_share} is not valid; give a value in (0, 1]")
        if self.ramp_steps is not None and self.ramp_steps < 1:
            raise ConfigError(f"method.ramp_steps={self.ramp_steps} is not valid; give a positive integer or null")


class SingLoraLayer(AdapterLayer):
    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, init: str = "paper") -> None:
        super().__init__(base_layer)
        self.rank, self.scale = rank, alpha / rank
        self.A = nn.Parameter(torch.empty(max(self.in_features, self.out_features), rank, **self.factory))
        # on the (n, r) tensor, fan_out is n (the layer width) and fan_in is r
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5), mode="fan_out" if init == "paper" else "fan_in")
        # u(t) and (α/r)·u(t), kept as 0-d tensors: updating them never synchronises with the device,
        # and a 0-d float32 factor keeps the activations' dtype (no cast kernel)
        self.register_buffer("ramp", torch.zeros((), **self.factory))
        self.register_buffer("coef", torch.zeros((), **self.factory), persistent=False)

    def set_ramp(self, value: float) -> None:
        self.ramp.fill_(value)
        self.coef.fill_(self.scale * value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.coef.copy_(self.scale * self.ramp)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        a = self.A.to(x.dtype)
        return ((x @ a[: self.in_features]) @ a[: self.out_features].T) * self.coef

    def delta_weight(self) -> torch.Tensor:
        return self.coef * self.A[: self.out_features] @ self.A[: self.in_features].T


def ramp_value(step: int, ramp_steps: int) -> float:
    """u(t) = min(t / T, 1)."""
    return min(step / ramp_steps, 1.0)


def set_ramp(model: nn.Module, value: float) -> None:
    for layer in adapter_layers_of(model, SingLoraLayer):
        layer.set_ramp(value)


class RampCallback(TrainerCallback):
    """After each optimizer step t, set u(t) in every SingLoRA layer."""

    def __init__(self, model: nn.Module, ramp_steps: int) -> None:
        self.model, self.ramp_steps = model, ramp_steps

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer's signature)
        set_ramp(self.model, ramp_value(state.global_step, self.ramp_steps))

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        set_ramp(self.model, ramp_value(state.global_step, self.ramp_steps))


@register
class SingLora(NativeMethod, Method):
    name = "singlora"
    Params = SingLoraParams

    def make_layer(self, name: str, linear: nn.Linear, params: SingLoraParams, ctx: RunContext) -> SingLoraLayer:
        alpha = params.alpha if params.alpha is not None else float(ctx.rank)
        return SingLoraLayer(linear, ctx.rank, alpha, params.init)

    def ramp_steps(self, params: SingLoraParams, ctx: RunContext) -> int:
        return params.ramp_steps or max(1, round(params.ramp_share * ctx.total_steps))

    def callbacks(self, model: nn.Module, params: SingLoraParams, ctx: RunContext) -> list[TrainerCallback]:
        return [RampCallback(model, self.ramp_steps(params, ctx))]

    def to_peft(self, model: InjectedModel) -> PeftModel:
        """The same model as a PEFT LoRA model (scale 1, B = (α/r)·u·A[:out], A_lora = A[:in]ᵀ)."""
        layers = dict(model.adapter_layers())
        rank = next(iter(layers.values())).rank
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=list(layers), modules_to_save=model.adapter_config["head_modules"]
        )
        peft_model = get_peft_model(model.base_copy(), config)
        with torch.no_grad():
            for name, layer in layers.items():
                target = peft_model.base_model.model.get_submodule(name)
                target.lora_A["default"].weight.copy_(layer.A[: layer.in_features].T)
                target.lora_B["default"].weight.copy_(layer.coef * layer.A[: layer.out_features])
        return peft_model
