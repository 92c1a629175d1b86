"""LoRA-Dash (Si et al. 2024, arXiv 2409.01035): LoRA, then a boost of the task-specific directions of W0.

Phase 1, the first `t` forward calls of each layer (the reference's counter; `count_forwards: false` counts
optimizer steps instead): plain LoRA, h = W0·x + s·B·A·x with s = α/r (A Kaiming, B = 0). At the switch, per
adapted matrix: ΔW = s·B·A, the thin SVD W0 = U·diag(σ)·Vᵀ (float32), the projections
δσ_i = u_iᵀ·ΔW·v_i and the change rates ρ_i = |δσ_i|/σ_i; the top `s_dash` (s_d) indices by ρ become the
frozen U_s ∈ R^{out×s_d}, V_s ∈ R^{in×s_d}. Phase 2: a trainable δ ∈ R^{s_d} (initialised 0) joins,

    h = W0·x + s·B·A·drop(x) + U_s·diag(δ)·V_sᵀ·drop(x)        (no scale on the δ term, as the reference)

and LoRA keeps training. δ is created at injection (zero, trainable, in the optimizer from the start) but
left out of the forward until the switch, so it has no effect and no gradient before then (an optimizer skips
a parameter without a gradient, so AdamW neither moves nor decays it, and its moments start then). A
parameter created at the switch would never reach the Trainer's optimizer, which is built before training.
U_s, V_s and the phase are buffers, saved with the adapter. Trainable: r·(in + out) + s_d per matrix.

When: `count_forwards: true` (default) switches inside the forward, at the layer's call numbered t (0-based:
calls 0..t−1 are plain LoRA, call t selects and already adds δ = 0), as both reference files count (`self.FLAG`,
`layers_LoRA-Dash.py:73-93`, `CR_MR/peft/src/peft/tuners/lora-dash.py:371-395`): every forward call counts —
evaluation, gradient-accumulation micro-batches, checkpoint recomputation — so with gradient accumulation k
the switch comes near optimizer step t/k (≈ step 86 in the reference's commonsense run, not 100).
`count_forwards: false` switches at the end of optimizer step t instead (a callback), whatever the accumulation.
The update is linear: it merges exactly (W0 + s·B·A + U_s·diag(δ)·V_sᵀ).
Reference: Subspace-Tuning `loralib/loralib/layers_LoRA-Dash.py`, `CR_MR/peft/src/peft/tuners/lora-dash.py`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.injection import AdapterLayer, NativeMethod, adapter_layers_of
from peftbench.methods.targets import check_rank, require_targets
from torch import nn
from transformers import TrainerCallback
from transformers.pytorch_utils import Conv1D

log = logging.getLogger("peftbench")


@dataclass
class LoraDashParams:
    lora_alpha: float = field(default=16, metadata={"help": "scaling numerator: s = lora_alpha / r"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input, in [0, 1)"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "layer names to adapt; null = the model config's target_modules"}
    )
    t: int = field(
        default=100, metadata={"help": "LoRA-only warm-up: δ joins after t forward calls (or optimizer steps) (>= 1)"}
    )
    s_dash: int = field(default=8, metadata={"help": "s_d, the number of singular directions of W0 boosted"})
    count_forwards: bool = field(
        default=True,
        metadata={"help": "true: switch at each layer's forward call t (the reference); false: at optimizer step t"},
    )

    def check(self) -> None:
        if self.lora_alpha <= 0:
            raise ConfigError(f"method.lora_alpha={self.lora_alpha} is not valid; give a positive number")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"method.lora_dropout={self.lora_dropout} is not valid; give a value in [0, 1)")
        if self.t < 1:
            raise ConfigError(f"method.t={self.t} is not valid; give a number of calls (or steps) >= 1")
        if self.s_dash < 1:
            raise ConfigError(f"method.s_dash={self.s_dash} is not valid; give a positive integer")


def _sync_from_state(layer: LoraDashLayer, incompatible_keys: Any) -> None:
    """After a state dict is loaded (adapter, checkpoint): the Python mirror of the phase follows the buffer."""
    layer.active, layer.calls = bool(layer.dash_state[0]), int(layer.dash_state[1])


class LoraDashLayer(AdapterLayer):
    """LoRA factors A (r×in), B (out×r), the boost δ (s_d) and the frozen directions U_s, V_sᵀ (buffers)."""

    def __init__(
        self, base_layer: nn.Linear | Conv1D, rank: int, scale: float, s_dash: int, dropout: float, warmup: int | None
    ) -> None:
        super().__init__(base_layer)
        self.rank, self.scale, self.s_dash = rank, scale, s_dash
        self.warmup = warmup  # None: the callback switches at optimizer step t; an int: the forward-call count
        self.dropout = nn.Dropout(dropout)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **self.factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **self.factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dash_delta = nn.Parameter(torch.zeros(s_dash, **self.factory))
        self.register_buffer("dash_u", torch.zeros(self.out_features, s_dash, **self.factory))
        self.register_buffer("dash_vt", torch.zeros(s_dash, self.in_features, **self.factory))
        self.register_buffer("dash_index", torch.zeros(s_dash, dtype=torch.long, device=self.factory["device"]))
        # [switched (0/1), forward calls counted]; mirrored in Python so that the forward needs no device sync
        self.register_buffer("dash_state", torch.zeros(2, dtype=torch.long, device=self.factory["device"]))
        self.active, self.calls = False, 0
        self.register_load_state_dict_post_hook(_sync_from_state)

    def base_weight(self) -> torch.Tensor:
        """W0 as (out, in), whatever the layer's storage (GPT-2's Conv1D stores in × out)."""
        weight = self.base_layer.weight
        return weight.T if self.transposed else weight

    @torch.no_grad()
    def change_rates(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ρ, U, σ, Vᵀ): ρ_i = |u_iᵀ·s·B·A·v_i| / σ_i for the thin SVD W0 = U·diag(σ)·Vᵀ, all float32."""
        with torch.autocast(self.lora_A.device.type, enabled=False):
            u, sigma, vt = torch.linalg.svd(self.base_weight().float(), full_matrices=False)
            # diag(Uᵀ·ΔW·V) without forming ΔW: (Uᵀ·B)_ij·(A·V)_ji summed over the rank index j
            projected = self.scale * ((u.T @ self.lora_B.float()) * (self.lora_A.float() @ vt.T).T).sum(1)
            return projected.abs() / sigma.clamp_min(torch.finfo(torch.float32).tiny), u, sigma, vt

    @torch.no_grad()
    def switch(self) -> None:
        """Select the top-s_d directions by change rate and let δ join the forward (δ itself is untouched: 0)."""
        rates, u, _, vt = self.change_rates()
        index = rates.topk(self.s_dash).indices
        self.dash_u.copy_(u[:, index])
        self.dash_vt.copy_(vt[index])
        self.dash_index.copy_(index)
        self.active = True
        self.dash_state[0] = 1

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        if self.warmup is not None and not self.active:
            if self.calls >= self.warmup:  # the reference: the call numbered t switches and already uses δ (= 0)
                self.switch()
            else:
                self.calls += 1
                self.dash_state[1] = self.calls
        a, b = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        out = self.scale * ((self.dropout(x) @ a.T) @ b.T)
        if self.active:  # its own dropout draw, as the reference calls lora_dropout(x) once per term
            boosted = (self.dropout(x) @ self.dash_vt.to(x.dtype).T) * self.dash_delta.to(x.dtype)
            out = out + boosted @ self.dash_u.to(x.dtype).T
        return out

    def delta_weight(self) -> torch.Tensor:
        delta = self.scale * self.lora_B @ self.lora_A
        if self.active:
            delta = delta + self.dash_u @ torch.diag(self.dash_delta) @ self.dash_vt
        return delta


class DashSwitch(TrainerCallback):
    """At the end of optimizer step t: every LoRA-Dash layer selects its directions and δ starts training."""

    def __init__(self, model: nn.Module, step: int) -> None:
        self.model, self.step = model, step
        self.switched_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer's signature)
        if state.global_step == self.step:
            for layer in adapter_layers_of(self.model, LoraDashLayer):
                if not layer.active:
                    layer.switch()
            self.switched_at = state.global_step
        return control


@register
class LoraDash(NativeMethod, Method):
    name = "lora_dash"
    Params = LoraDashParams

    def validate(self, params: LoraDashParams, model: nn.Module, ctx: RunContext) -> None:
        layers = require_targets(model, ctx.target_modules)
        check_rank(ctx.rank, layers)
        for layer in layers:
            if params.s_dash > min(layer.in_features, layer.out_features):
                raise ConfigError(
                    f"method.s_dash={params.s_dash} exceeds min(in, out)="
                    f"{min(layer.in_features, layer.out_features)} of target layer {layer.name!r}; "
                    f"valid: 1..{min(layer.in_features, layer.out_features)}"
                )

    def make_layer(self, name: str, linear: nn.Linear, params: LoraDashParams, ctx: RunContext) -> LoraDashLayer:
        warmup = params.t if params.count_forwards else None
        return LoraDashLayer(linear, ctx.rank, params.lora_alpha / ctx.rank, params.s_dash, params.lora_dropout, warmup)

    def callbacks(self, model: nn.Module, params: LoraDashParams, ctx: RunContext) -> list[TrainerCallback]:
        if params.count_forwards:
            return []
        if params.t >= ctx.total_steps:
            log.warning("lora_dash: t=%d >= the run's %d optimizer steps: δ never trains (plain LoRA)", params.t,
                        ctx.total_steps)  # fmt: skip
        return [DashSwitch(model, params.t)]
