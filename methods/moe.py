"""The LoRA mixture-of-experts layer shared by MoLoRA, HydraLoRA and GOAT (GOAT's code base, arXiv 2502.16894).

E experts split the total rank r (r_e = r/E each); a router g = Linear(in, E, bias=False) with softmax,
top-k renormalised to sum to 1 (HydraLoRA: dense, no top-k):

    h = W_res·x + Σ_{i∈topk} g_i · s · B_i·A_i·x

All experts are one batched contraction (einsum over the expert axis, no Python loop, no gather or scatter of
tokens per expert, no host sync): with the non-selected gates at zero this is exactly the top-k sum, at the cost
of a single rank-r LoRA. The experts are LoRA-sized (E·r_e = r), so computing every expert for every token costs
less than a per-expert gather/scatter would save (issue 25; the full-size upcycled experts of `peftbench.methods.ft_moe`
choose between the two by a measured rule).
The Switch load-balancing loss E·Σ_i f_i·P_i is summed over layers and added to the training loss with
`aux_loss_coef` (1e-3). As in GOAT's released layer, f_i = (tokens routing to expert i) / N tokens, so the
f_i sum to k (with k = 1 this is Switch's classic loss); P_i = the mean router probability of expert i.
`lora_dropout` (GOAT's scripts: 0.05) drops the experts' input, not the router's, with one mask per expert as the
references' one `nn.Dropout` per expert (GOAT `goat/peta/src/goat/layer.py:113-116`, AdaMoLE
`src/adamole/layer.py:94-97`; HydraLoRA calls its dropout once per head, `peft/tuners/lora.py:341-342`): a top-k
token's k experts see k masks (k copies of x, as the references' per-expert inputs), a dense router's E experts E.
MoE adapters cannot merge into one weight: the update depends on the input through the router.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext
from peftbench.methods.injection import AdapterLayer, NativeMethod, NotMergeable, adapter_layers_of, linear_features
from peftbench.methods.targets import check_rank, require_targets
from torch import nn


@dataclass
class MoeParams:
    num_experts: int = field(default=8, metadata={"help": "E, the number of experts; rank must be a multiple"})
    top_k: int = field(default=2, metadata={"help": "experts used per token"})
    lora_alpha: float = field(default=16, metadata={"help": "scale numerator α"})
    aux_loss_coef: float = field(default=1e-3, metadata={"help": "weight of the load-balancing loss"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the experts' input (not the router's)"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "layer names to adapt; null = the model config's target_modules"}
    )

    def check(self) -> None:
        if self.num_experts < 1:
            raise ConfigError(f"method.num_experts={self.num_experts} is not valid; give a positive integer")
        if not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(f"method.top_k={self.top_k} is not valid; give 1..num_experts={self.num_experts}")
        if self.lora_alpha <= 0 or self.aux_loss_coef < 0:
            raise ConfigError("method.lora_alpha must be > 0 and method.aux_loss_coef >= 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"method.lora_dropout={self.lora_dropout} is not valid; give a value in [0, 1)")


class MoeLoraLayer(AdapterLayer):
    """Experts A ∈ R^{E×r_e×in} (or one shared A) and B stored as B_iᵀ ∈ R^{E×r_e×out}; router; balance loss.

    B is kept transposed so that all experts flatten into one (E·r_e)×out matrix without a copy.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        experts: int,
        expert_rank: int,
        top_k: int | None,
        scale: float,
        shared_a: bool,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(base_layer)
        self.experts, self.expert_rank, self.top_k, self.scale = experts, expert_rank, top_k, scale
        self.dropout = nn.Dropout(dropout)
        self.router = nn.Linear(self.in_features, experts, bias=False, **self.factory)
        self.lora_A = nn.Parameter(
            torch.empty(1 if shared_a else experts, expert_rank, self.in_features, **self.factory)
        )
        self.lora_B = nn.Parameter(torch.zeros(experts, expert_rank, self.out_features, **self.factory))
        for matrix in self.lora_A:
            nn.init.kaiming_uniform_(matrix, a=math.sqrt(5))
        self.register_buffer("expert_load", torch.zeros(experts, device=self.factory["device"]), persistent=False)
        self.balance_loss: torch.Tensor | None = None

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(gates (..., E) with zeros outside the top-k, router logits, top-k indices or None when dense).

        The renormalised top-k probabilities p_i / Σ_topk p_j equal a softmax over the top-k logits.
        """
        logits = nn.functional.linear(x, self.router.weight.to(x.dtype))  # float32 router on any activations
        if self.top_k is None:
            return torch.softmax(logits.float(), dim=-1).to(logits.dtype), logits, None
        top_logits, top_index = logits.topk(self.top_k, dim=-1)
        weights = torch.softmax(top_logits.float(), dim=-1).to(logits.dtype)  # under autocast: the router's dtype
        return torch.zeros_like(logits).scatter(-1, top_index, weights), logits, top_index

    def _token_counts(self, top_index: torch.Tensor) -> torch.Tensor:
        """How many tokens route to each expert (a token counts once for each of its k experts)."""
        flat = top_index.reshape(-1)
        return torch.zeros(self.experts, device=flat.device).scatter_add_(
            0, flat, torch.ones_like(flat, dtype=torch.float)
        )

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """The (..., E) expert weights of each token (zero for unused experts), in x's dtype or the router's.

        Records the balance loss while training and the expert load in evaluation. The one hook a layer with
        another router overrides (AdaMoLE's thresholds); `delta` applies the experts to whatever it returns.
        """
        gates, logits, top_index = self.gates(x)
        if top_index is not None:
            if self.training:  # Switch balance: E · Σ_i f_i · P_i, f_i = tokens to i / N (Σ f_i = k)
                tokens = top_index.numel() // self.top_k
                routed = self._token_counts(top_index) / tokens
                mean_prob = torch.softmax(logits.float(), dim=-1).reshape(-1, self.experts).mean(0)
                self.balance_loss = self.experts * (routed * mean_prob).sum()
            else:
                self.expert_load += self._token_counts(top_index.detach())
        elif not self.training:
            self.expert_load += gates.detach().reshape(-1, self.experts).sum(0).float()
        return gates

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.route(x)
        if self.training and self.dropout.p > 0:
            return self.delta_with_expert_masks(x, gates)
        a = self.lora_A.to(x.dtype)
        # all experts in two flat matmuls: (N, in) @ (in, E·r_e), then (N, E·r_e) @ (E·r_e, out)
        projected = (x @ a.reshape(-1, self.in_features).T).unflatten(-1, (a.shape[0], self.expert_rank))
        # the scale rides on the (N, E) gates rather than on the (N, out) output: one big kernel less
        weighted = (projected * (gates * self.scale).unsqueeze(-1)).flatten(-2)
        return weighted @ self.lora_B.to(x.dtype).reshape(self.experts * self.expert_rank, self.out_features)

    def delta_with_expert_masks(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """`delta` in training with dropout: each expert a token uses drops its own copy of x (the router saw x
        undropped). Still batched over the experts, without a gather or scatter of tokens."""
        a = self.lora_A.to(x.dtype)  # (E or 1, r_e, in)
        b = self.lora_B.to(x.dtype).reshape(self.experts * self.expert_rank, self.out_features)
        gates = gates * self.scale
        if self.top_k is not None:
            # slot j of a token holds its j-th expert (found again from the gates: the others' are 0) and its own
            # mask; each slot goes through every expert's A (E·r_e = r: one LoRA's cost per slot) and keeps its own
            weights, index = gates.topk(self.top_k, dim=-1)
            slots = nn.functional.one_hot(index, self.experts).to(gates.dtype) * weights.unsqueeze(-1)  # (..., k, E)
            dropped = self.dropout(x.unsqueeze(-2).expand(*x.shape[:-1], self.top_k, self.in_features))
            projected = (dropped @ a.reshape(-1, self.in_features).T).unflatten(-1, (a.shape[0], self.expert_rank))
            weighted = (projected * slots.unsqueeze(-1)).sum(-3)  # (..., E, r_e)
        else:  # a dense router: every expert may be used, each on its own dropped copy of x
            dropped = self.dropout(x.unsqueeze(-2).expand(*x.shape[:-1], self.experts, self.in_features))
            # one shared A (HydraLoRA): A·drop_i(x) per head, as the reference; else A_i·drop_i(x) per expert
            projected = dropped @ a[0].T if a.shape[0] == 1 else torch.einsum("...ei,eri->...er", dropped, a)
            weighted = projected * gates.unsqueeze(-1)
        return weighted.flatten(-2) @ b

    def expert_update(self, i: int) -> torch.Tensor:
        """s·B_i·A_i of expert i (out × in)."""
        return self.scale * self.lora_B[i].T @ self.lora_A[0 if self.lora_A.shape[0] == 1 else i]

    def delta_weight(self) -> torch.Tensor:
        raise NotMergeable(
            f"{type(self).__name__}: a mixture of experts cannot merge into one weight, since its router "
            "weights depend on the input; keep the adapter unmerged"
        )


class MoeMethod(NativeMethod, Method):
    """Base of the MoE methods: validation, the load-balancing loss and the expert-load metric."""

    Params = MoeParams
    shared_a = False

    def top_k(self, params: MoeParams) -> int | None:
        return params.top_k

    def expert_rank(self, params: MoeParams, ctx: RunContext) -> int:
        return ctx.rank // params.num_experts

    def scale(self, params: MoeParams, ctx: RunContext, in_features: int) -> float:
        return params.lora_alpha / self.expert_rank(params, ctx)

    def validate(self, params: MoeParams, model: nn.Module, ctx: RunContext) -> None:
        if ctx.rank % params.num_experts:
            raise ConfigError(
                f"rank={ctx.rank} is not a multiple of method.num_experts={params.num_experts}; "
                f"valid ranks: {params.num_experts}, {2 * params.num_experts}, …"
            )
        check_rank(ctx.rank, require_targets(model, ctx.target_modules))

    def make_layer(self, name: str, linear: nn.Linear, params: MoeParams, ctx: RunContext) -> MoeLoraLayer:
        return MoeLoraLayer(
            linear, params.num_experts, self.expert_rank(params, ctx), self.top_k(params),
            self.scale(params, ctx, linear_features(linear)[0]), self.shared_a, params.lora_dropout,
        )  # fmt: skip

    def aux_loss(self, model: nn.Module, params: MoeParams) -> torch.Tensor | None:
        losses = [layer.balance_loss for layer in adapter_layers_of(model, MoeLoraLayer)]
        losses = [loss for loss in losses if loss is not None]
        if not losses or params.aux_loss_coef == 0:
            return None
        return params.aux_loss_coef * torch.stack(losses).sum()

    def extra_metrics(self, model: nn.Module) -> dict[str, list[float]]:
        """`expert_load`: each expert's share of the token-slots (a token with top-k counts k times; dense
        routers count their gates) routed during evaluation, summed over layers; the shares sum to 1."""
        loads = [layer.expert_load for layer in adapter_layers_of(model, MoeLoraLayer)]
        total = torch.stack(loads).sum(0)
        return {"expert_load": [round(float(v), 6) for v in (total / total.sum().clamp_min(1e-12)).tolist()]}
