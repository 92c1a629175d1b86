"""Full fine-tuning of an upcycled mixture of experts (GOAT's "Full FT MoE" rows; upcycling as Komatsuzaki et al.
2022, arXiv 2212.05055, here on every linear of every block; GOAT arXiv 2502.16894 gives no code).

Every nn.Linear (or GPT-2 Conv1D) inside each transformer block becomes E copies (W_i, b_i) = (W0, b0)
behind a router g = Linear(in, E, bias=False) (nn.Linear's Kaiming-uniform init, as GOAT's gate), softmax,
top-k renormalised (k = 2):

    y = Σ_{i ∈ topk(x)} g_i·(W_i·x + b_i),    g_i = softmax over the top-k logits

Since the copies are identical and the gates sum to 1, the upcycled model equals the dense one at init for
any router. Switch load-balancing loss E·Σ_i f_i·P_i per layer (f_i = tokens routed to i / N, so Σ f_i = k;
P_i = mean router probability), summed over layers, weight `aux_loss_coef` (1e-3). Every parameter trains
(embeddings, norms, head). `experts_on=all_linear` (q, k, v, o, fc1, fc2; LLaMA: q, k, v, o, gate, up, down)
matches GOAT's params column; `ffn` upcycles only the feed-forward linears (Komatsuzaki's layout).
Parameters: P + (E−1)·P_lin + E·Σ in, P_lin the replaced linears' weights and biases. Experts are stacked
(E, out, in) tensors. Two paths, equal up to float rounding: `routed`, each expert computes only the tokens
routed to it (gather, matmul, scatter per expert, a host sync each: launch-bound on small shapes), and `dense`,
every expert on every token in one matmul with the top-k gates as a dense mask (E/k times the FLOPs, no
sync, no data-dependent shape, so it compiles as one graph). The rule, measured on CPU: dense up to 16 tokens or
while E·N·in·out ≤ 2^24 (`dense_is_faster`, docs/perf/2026-12-04_cpu_moe_paths.md). Routed by the input: no merge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.injection import linear_features
from peftbench.methods.targets import in_head
from safetensors.torch import load_model, save_model
from torch import nn
from transformers.pytorch_utils import Conv1D

WEIGHTS = "model.safetensors"
# The rule, read off CPU measurements (scripts/moe_paths.py, docs/perf/2026-12-04_cpu_moe_paths.md; GPUs: not
# measured): the dense path up to 16 tokens whatever the shape (both paths then cost the experts' weight gradient,
# E·in·out, and the routed path adds E gathers and scatters) or while E·N·in·out ≤ 2^24 (tiny layers, where the
# routed path's per-expert launches cost more than the dense path's extra FLOPs).
DENSE_MAX_TOKENS = 16
DENSE_MAX_MACS = 2**24


def dense_is_faster(experts: int, tokens: int, in_features: int, out_features: int) -> bool:
    """The measured rule of `UpcycledLinear`'s path; either path gives the same output."""
    return tokens <= DENSE_MAX_TOKENS or experts * tokens * in_features * out_features <= DENSE_MAX_MACS


ATTENTION_PARTS = ("attention", "attn")  # a block's attention sub-module: RoBERTa/BERT, LLaMA, CLIP, GPT-2


@dataclass
class FtMoeParams:
    num_experts: int = field(default=8, metadata={"help": "E, the number of copies of each linear"})
    top_k: int = field(default=2, metadata={"help": "experts used per token"})
    experts_on: Literal["all_linear", "ffn"] = field(
        default="all_linear", metadata={"help": "all_linear: every linear of each block (GOAT's count); ffn: the MLP"}
    )
    aux_loss_coef: float = field(default=1e-3, metadata={"help": "weight of the load-balancing loss"})

    def check(self) -> None:
        if self.num_experts < 1:
            raise ConfigError(f"method.num_experts={self.num_experts} is not valid; give a positive integer")
        if not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(f"method.top_k={self.top_k} is not valid; give 1..num_experts={self.num_experts}")
        if self.aux_loss_coef < 0:
            raise ConfigError(f"method.aux_loss_coef={self.aux_loss_coef} is not valid; give a value >= 0")


class UpcycledLinear(nn.Module):
    """E stacked copies of a linear layer (weight (E, out, in), bias (E, out)) behind a top-k router.

    Two paths with the same result (up to float rounding): `dense` and `routed`, chosen per forward by the rule of
    `uses_dense`; `path` = "dense" or "routed" forces one (the equality tests and the measurement).
    """

    path: Literal["auto", "dense", "routed"] = "auto"

    def __init__(self, base: nn.Linear | Conv1D, experts: int, top_k: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear_features(base)
        self.experts, self.top_k = experts, top_k
        weight = base.weight.detach()
        weight = weight.T if isinstance(base, Conv1D) else weight  # (out, in)
        self.weight = nn.Parameter(weight.unsqueeze(0).repeat(experts, 1, 1))
        bias = base.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().unsqueeze(0).repeat(experts, 1))
        self.router = nn.Linear(self.in_features, experts, bias=False, device=weight.device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.router.weight, a=math.sqrt(5))
        self.register_buffer("expert_load", torch.zeros(experts, device=weight.device), persistent=False)
        self.balance_loss: torch.Tensor | None = None

    def uses_dense(self, tokens: int) -> bool:
        """The measured rule (`dense_is_faster`) unless `path` forces one."""
        if self.path != "auto":
            return self.path == "dense"
        return dense_is_faster(self.experts, tokens, self.in_features, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        logits = nn.functional.linear(flat, self.router.weight.to(flat.dtype))
        top_logits, top_index = logits.topk(self.top_k, dim=-1)
        gates = torch.softmax(top_logits.float(), dim=-1)  # = p_i / Σ_topk p_j
        counts = torch.zeros(self.experts, device=flat.device).scatter_add_(
            0, top_index.reshape(-1), torch.ones(top_index.numel(), device=flat.device)
        )
        if self.training:  # Switch balance: E · Σ_i f_i · P_i, f_i = tokens to i / N
            mean_prob = torch.softmax(logits.float(), dim=-1).mean(0)
            self.balance_loss = self.experts * ((counts / max(flat.shape[0], 1)) * mean_prob).sum()
        else:
            self.expert_load += counts
        if self.uses_dense(flat.shape[0]):
            out = self.dense(flat, gates, top_index)
        else:
            out = self.routed(flat, gates, top_index)
        return out.reshape(*x.shape[:-1], self.out_features)

    def dense(self, flat: torch.Tensor, gates: torch.Tensor, top_index: torch.Tensor) -> torch.Tensor:
        """Every expert on every token in one matmul, the top-k gates as a dense (N, E) mask (zero elsewhere): no
        gather or scatter of tokens, no host sync, no data-dependent shape (compiles as one graph); E/k times the
        routed path's FLOPs."""
        mask = torch.zeros(flat.shape[0], self.experts, device=flat.device, dtype=gates.dtype)
        mask = mask.scatter(-1, top_index, gates).to(flat.dtype)
        weight = self.weight.to(flat.dtype).reshape(self.experts * self.out_features, self.in_features)
        bias = None if self.bias is None else self.bias.to(flat.dtype).reshape(-1)
        y = nn.functional.linear(flat, weight, bias).unflatten(-1, (self.experts, self.out_features))
        return (mask.unsqueeze(1) @ y).squeeze(1)  # Σ_i g_i·y_i per token

    def routed(self, flat: torch.Tensor, gates: torch.Tensor, top_index: torch.Tensor) -> torch.Tensor:
        """Each expert computes only the tokens routed to it (k/E of the dense FLOPs; a host sync per expert)."""
        out: torch.Tensor | None = None
        # unbound once: indexing the stacked weight per expert would make each expert's backward write a zero
        # gradient of all E experts (E times the weights' size, E times over)
        weights = self.weight.unbind(0)
        biases = [None] * self.experts if self.bias is None else self.bias.unbind(0)
        for expert in range(self.experts):
            token, slot = (top_index == expert).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            bias = None if biases[expert] is None else biases[expert].to(flat.dtype)
            y = nn.functional.linear(flat[token], weights[expert].to(flat.dtype), bias)
            y = y * gates[token, slot].unsqueeze(-1).to(y.dtype)
            if out is None:
                out = y.new_zeros(flat.shape[0], self.out_features)
            out.index_add_(0, token, y.to(out.dtype))
        if out is None:  # no tokens
            out = flat.new_zeros(flat.shape[0], self.out_features)
        return out

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, experts={self.experts}, top_k={self.top_k}"


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks: the items of every outermost nn.ModuleList whose items all hold a linear layer
    (RoBERTa's `encoder.layer`, LLaMA's `model.layers`, CLIP's `encoder.layers`, GPT-2's `h`)."""
    blocks: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(f"{outer}.") for outer, _ in blocks):
            continue
        if all(any(isinstance(m, nn.Linear | Conv1D) for m in item.modules()) for item in module):
            blocks.extend((f"{name}.{i}" if name else str(i), item) for i, item in enumerate(module))
    return blocks


def expert_linears(model: nn.Module, experts_on: str, head_modules: list[str]) -> list[str]:
    """Dotted names of the linears to upcycle: inside a block, not in the head; `ffn` skips attention's."""
    names = []
    for block_name, block in transformer_blocks(model):
        for name, module in block.named_modules():
            if not isinstance(module, nn.Linear | Conv1D) or in_head(f"{block_name}.{name}", head_modules):
                continue
            if experts_on == "ffn" and any(part in name for part in ATTENTION_PARTS):
                continue
            names.append(f"{block_name}.{name}")
    return names


def upcycled_layers(model: nn.Module) -> list[UpcycledLinear]:
    return [m for m in model.modules() if isinstance(m, UpcycledLinear)]


@register
class FtMoe(Method):
    name = "ft_moe"
    Params = FtMoeParams
    uses_rank = False

    def validate(self, params: FtMoeParams, model: nn.Module, ctx: RunContext) -> None:
        if not expert_linears(model, params.experts_on, ctx.head_modules):
            raise ConfigError(
                f"method ft_moe found no linear layer to upcycle in {type(model).__name__} with "
                f"experts_on={params.experts_on!r}; valid: a model whose transformer blocks are an nn.ModuleList"
            )

    def apply(self, model: nn.Module, params: FtMoeParams, ctx: RunContext) -> nn.Module:
        for name in expert_linears(model, params.experts_on, ctx.head_modules):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, UpcycledLinear(getattr(parent, child), params.num_experts, params.top_k))
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def aux_loss(self, model: nn.Module, params: FtMoeParams) -> torch.Tensor | None:
        losses = [layer.balance_loss for layer in upcycled_layers(model) if layer.balance_loss is not None]
        if not losses or params.aux_loss_coef == 0:
            return None
        return params.aux_loss_coef * torch.stack(losses).sum()

    def extra_metrics(self, model: nn.Module) -> dict[str, list[float]]:
        """`expert_load`: each expert's share of the token-slots routed during evaluation, over all layers."""
        total = torch.stack([layer.expert_load for layer in upcycled_layers(model)]).sum(0)
        return {"expert_load": [round(float(v), 6) for v in (total / total.sum().clamp_min(1e-12)).tolist()]}

    def save(self, model: nn.Module, out_dir: str) -> None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_model(model, str(Path(out_dir) / WEIGHTS))  # the whole model (all of it trains); handles tied weights

    def load(self, base_model: nn.Module, out_dir: str, params: Any, ctx: RunContext) -> nn.Module:
        model = self.adapt(base_model, params, ctx)
        load_model(model, str(Path(out_dir) / WEIGHTS))
        return model
