"""Bottleneck adapters placed inside a block: HAdapter and PAdapter (Subspace Tuning's GLUE rows), and LLM-Adapters'
Series and Parallel adapters (its LLaMA rows).

The bottleneck is f(z) = W_up·σ(W_down·z + b_down) + b_up, with W_down ∈ R^{m×d} and W_up ∈ R^{d×m}.

- `hadapter` (Houlsby et al., arXiv 1902.00751). Two per block, inside the attention-output and FFN-output
  sub-layers of a post-LN encoder (BERT, RoBERTa, DeBERTa-v2). Each sits after dense → dropout and before the
  residual add + LayerNorm: h = Drop(W_o·a), out = LN(h + f(h) + x). σ = SiLU ("swish"), biases on, no scaling,
  m = 4r. Params per block: 2·(2dm + m + d).
- `padapter` (Pfeiffer et al., arXiv 2005.00247). FFN sub-layer only, in AdapterHub's Pfeiffer layout:
  h = Drop(W_2·u), z = LN(h + x), out = LN(h + f(z) + x). The block's own frozen LN is applied twice, and the
  adapter's residual is the pre-LN h. σ = ReLU, m = 8r. Params per block: 2dm + m + d.
- `series_adapter` (LLM-Adapters, Hu et al., arXiv 2304.01933; Houlsby's adapter on a decoder). After the FFN's
  output linear (LLaMA's down_proj): y = h + s·U·tanh(D·Drop(h)), with h = W_down(·). No biases, m = 256, s = 1.
  Params 2dm per block.
- `parallel_adapter` (LLM-Adapters; He et al., arXiv 2110.04366, applied per linear). Beside each of up_proj and
  down_proj: y = W·x + s·U·tanh(D·Drop(x)). Params m(in + out) per linear.

Init. `bert` gives both weights N(0, 0.02²) and zero biases; it is the default of both references, so the
adapter is only near-identity at init. `zero_up` (HAdapter/PAdapter) and `mam_adapter` (Series/Parallel,
D Kaiming-uniform(a=√5)) set W_up = 0, which makes the output exactly the base model's.

Rank. HAdapter/PAdapter take the run's rank: m = size_per_rank·r (4 and 8, derived from Subspace Tuning's
params columns), or a fixed `bottleneck`. Series/Parallel do not use the rank (`uses_rank = False`, recorded
as null): m is `bottleneck` (256), as in LLM-Adapters' tables. Series/Parallel also place on GPT-2 (mlp.c_fc /
mlp.c_proj) and CLIP (fc1 / fc2), by LLM-Adapters' role of each FFN linear (its mapping for GPT-Neo and OPT).

The LLM-Adapters layers compute the adapter in float32 and cast back to the activations' dtype, as the
reference does. A nonlinear adapter cannot merge into the base weights, so `merge_and_unload` raises NotMergeable.

References:
- Subspace Tuning @2c63d06: NLU/src/transformers/models/adapter.py:5-16; roberta/modeling_roberta.py:341-348,
  450-461; deberta_v2/modeling_deberta_v2.py:240-248, 333-346.
- LLM-Adapters @8166572: peft/src/peft/tuners/bottleneck.py:17-24, 54-68, 303-339, 351-390.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.injection import AdapterLayer, InjectedModel, NativeMethod, NotMergeable, inject, install
from peftbench.methods.targets import matches, require_targets
from torch import nn
from transformers.pytorch_utils import Conv1D

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "relu": F.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
}
Activation = Literal["silu", "relu", "tanh", "gelu"]

# Post-LN encoders, by model type: the classes of (attention-output, FFN-output) sub-layers. Each has `dense`,
# `dropout` and `LayerNorm`, and computes LayerNorm(dropout(dense(h)) + input_tensor).
ENCODER_SUBLAYERS: dict[str, tuple[str, str]] = {
    "bert": ("BertSelfOutput", "BertOutput"),
    "deberta-v2": ("DebertaV2SelfOutput", "DebertaV2Output"),
    "roberta": ("RobertaSelfOutput", "RobertaOutput"),
}

# Decoders, by model type: the FFN's linears and their role, as in LLM-Adapters' mapping (bottleneck.py:17-24).
# A Series adapter on an "input" linear runs before it (LA's mh_adapter), on the "output" linear after it
# (LA's output_adapter). Names are suffixes of module names (GPT-2's attention also has a c_proj).
FFN_LINEARS: dict[str, dict[str, Literal["input", "output"]]] = {
    "llama": {"mlp.gate_proj": "input", "mlp.up_proj": "input", "mlp.down_proj": "output"},
    "gpt2": {"mlp.c_fc": "input", "mlp.c_proj": "output"},
    "clip": {"mlp.fc1": "input", "mlp.fc2": "output"},
    "clip_vision_model": {"mlp.fc1": "input", "mlp.fc2": "output"},
}
# Default placements: Series after the FFN's output linear; Parallel beside its up and down linears (LLaMA's
# gate_proj is not adapted: math_running_commands:11).
SERIES_DEFAULT = {
    "llama": ["mlp.down_proj"],
    "gpt2": ["mlp.c_proj"],
    "clip": ["mlp.fc2"],
    "clip_vision_model": ["mlp.fc2"],
}
PARALLEL_DEFAULT = {
    "llama": ["mlp.up_proj", "mlp.down_proj"],
    "gpt2": ["mlp.c_fc", "mlp.c_proj"],
    "clip": ["mlp.fc1", "mlp.fc2"],
    "clip_vision_model": ["mlp.fc1", "mlp.fc2"],
}


def model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def require_architecture(method: str, model: nn.Module, supported: Iterable[str]) -> str:
    """The model's type, or a one-line ConfigError naming the architectures `method` supports."""
    supported = sorted(supported)
    kind = model_type(model)
    if kind not in supported:
        raise ConfigError(
            f"method {method!r} does not apply to model type {kind!r} ({type(model).__name__}); "
            f"valid choices: {', '.join(supported)}"
        )
    return kind


class Bottleneck(nn.Module):
    """f(z) = W_up·σ(W_down·Drop(z) + b_down) + b_up, computed in z's dtype (the float32 weights are cast)."""

    def __init__(
        self,
        features_in: int,
        size: int,
        features_out: int,
        activation: str,
        bias: bool,
        dropout: float = 0.0,
        factory: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        factory = factory or {"dtype": torch.float32}
        # torch.empty + in-place init: works on the meta device (parameter counts of a 7B model, no memory)
        self.down_weight = nn.Parameter(torch.empty(size, features_in, **factory))
        self.up_weight = nn.Parameter(torch.empty(features_out, size, **factory))
        if bias:
            self.down_bias = nn.Parameter(torch.zeros(size, **factory))
            self.up_bias = nn.Parameter(torch.zeros(features_out, **factory))
        else:
            self.register_parameter("down_bias", None)
            self.register_parameter("up_bias", None)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)

    def initialise(self, init: str) -> None:
        """bert: N(0, 0.02²) weights; zero_up: W_down as bert, W_up = 0; mam_adapter: W_down Kaiming, W_up = 0.
        Biases are always zero (BERT's init_weights, which set the reference adapters' init)."""
        with torch.no_grad():
            if init == "mam_adapter":
                nn.init.kaiming_uniform_(self.down_weight, a=math.sqrt(5))
            else:
                nn.init.normal_(self.down_weight, mean=0.0, std=0.02)
            if init == "bert":
                nn.init.normal_(self.up_weight, mean=0.0, std=0.02)
            else:
                nn.init.zeros_(self.up_weight)
            for bias in (self.down_bias, self.up_bias):
                if bias is not None:
                    nn.init.zeros_(bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        dtype = z.dtype
        down_bias = None if self.down_bias is None else self.down_bias.to(dtype)
        up_bias = None if self.up_bias is None else self.up_bias.to(dtype)
        hidden = ACTIVATIONS[self.activation](F.linear(self.dropout(z), self.down_weight.to(dtype), down_bias))
        return F.linear(hidden, self.up_weight.to(dtype), up_bias)


class _Nonlinear:
    """Refuses merging: W_up·σ(W_down·h) depends on the input, no single weight equals it."""

    def delta_weight(self) -> torch.Tensor:
        raise NotMergeable(
            f"{type(self).__name__}: a bottleneck adapter is nonlinear in its input and cannot merge into the base "
            "weights; keep the adapted model, or use disable_adapter() for the base"
        )


class SublayerAdapter(_Nonlinear, AdapterLayer):
    """A post-LN output sub-layer (dense → dropout → LayerNorm(· + residual)) with a bottleneck adapter inside.

    The forward re-runs the wrapped module's own frozen dense, dropout and LayerNorm. The whole sub-layer is
    `base_layer`, so InjectedModel saves, disables and unwraps it like a wrapped linear.
    `layout` is "houlsby" (LN(h + f(h) + x)) or "pfeiffer" (LN(h + f(LN(h + x)) + x)).
    """

    supports_conv1d = False

    def __init__(self, sublayer: nn.Module, size: int, activation: str, init: str, layout: str) -> None:
        for part in ("dense", "dropout", "LayerNorm"):
            if not hasattr(sublayer, part):
                raise ConfigError(f"{type(sublayer).__name__} has no {part}; valid: dense → dropout → LayerNorm")
        super().__init__(sublayer.dense)  # features, device and the disabled flag, from the sub-layer's dense
        self.base_layer = sublayer  # re-registered: the frozen base is the whole sub-layer
        self.layout = layout
        self.adapter = Bottleneck(self.out_features, size, self.out_features, activation, True, 0.0, self.factory)
        self.adapter.initialise(init)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        sub = self.base_layer
        if self.disabled:
            return sub(hidden_states, input_tensor)
        h = sub.dropout(sub.dense(hidden_states))
        # Pfeiffer (original_ln_before, residual_before_ln): f reads LN(h + x) and adds to the pre-LN h
        z = sub.LayerNorm(h + input_tensor) if self.layout == "pfeiffer" else h
        return sub.LayerNorm(h + self.adapter(z) + input_tensor)


class SeriesLayer(_Nonlinear, AdapterLayer):
    """LLM-Adapters' series adapter on one linear: after it, y = h + s·U·σ(D·Drop(h)), h = W·x ("output"),
    or before it, y = W·(x + s·U·σ(D·Drop(x))) ("input", LA's mh_adapter). No biases; float32 compute."""

    def __init__(
        self,
        base_layer: nn.Linear | Conv1D,
        size: int,
        activation: str,
        dropout: float,
        scaling: float,
        init: str,
        position: Literal["input", "output"],
    ) -> None:
        super().__init__(base_layer)
        features = self.out_features if position == "output" else self.in_features
        self.position, self.scaling = position, scaling
        self.adapter = Bottleneck(features, size, features, activation, False, dropout, self.factory)
        self.adapter.initialise(init)

    def bottleneck(self, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The reference's `adapter_up(act(adapter_down(drop(z.float())))).to(dtype) * scaling`."""
        return self.adapter(z.float()).to(dtype) * self.scaling

    def adapted(self, x: torch.Tensor) -> torch.Tensor:
        if self.position == "input":
            return self.base_layer(x + self.bottleneck(x, x.dtype))
        h = self.base_layer(x)
        return h + self.bottleneck(h, h.dtype)


class ParallelLayer(_Nonlinear, AdapterLayer):
    """LLM-Adapters' parallel adapter on one linear: y = W·x + s·U·σ(D·Drop(x)). No biases; float32 compute."""

    def __init__(
        self, base_layer: nn.Linear | Conv1D, size: int, activation: str, dropout: float, scaling: float, init: str
    ) -> None:
        super().__init__(base_layer)
        self.scaling = scaling
        self.adapter = Bottleneck(self.in_features, size, self.out_features, activation, False, dropout, self.factory)
        self.adapter.initialise(init)

    def adapted(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        return result + self.adapter(x.float()).to(result.dtype) * self.scaling


def wrap_modules(
    model: nn.Module,
    names: list[str],
    head_modules: list[str],
    make_layer: Callable[[nn.Module], AdapterLayer],
    config: dict[str, Any],
) -> InjectedModel:
    """Freeze `model`, replace each named module by `make_layer(module)`, unfreeze the adapters and the head."""
    for param in model.parameters():
        param.requires_grad_(False)
    return install(model, {name: make_layer(model.get_submodule(name)) for name in names}, head_modules, config)


# ---------- HAdapter, PAdapter ----------


@dataclass
class HAdapterParams:
    size_per_rank: int = field(
        default=4, metadata={"help": "m = size_per_rank · rank (4: derived from Subspace Tuning's params column)"}
    )
    bottleneck: int | None = field(
        default=None, metadata={"help": "a fixed bottleneck size m instead; the run's rank is then ignored"}
    )
    init: Literal["bert", "zero_up"] = field(
        default="bert",
        metadata={"help": "bert: N(0, 0.02²) weights, zero biases (the reference's); zero_up: W_up = 0, exact base"},
    )
    activation: Activation = field(default="silu", metadata={"help": "σ of the bottleneck (Houlsby: swish = SiLU)"})

    def check(self) -> None:
        if self.size_per_rank < 1:
            raise ConfigError(f"method.size_per_rank={self.size_per_rank} is not valid; give a positive integer")
        if self.bottleneck is not None and self.bottleneck < 1:
            raise ConfigError(f"method.bottleneck={self.bottleneck} is not valid; give a positive integer or null")


@dataclass
class PAdapterParams(HAdapterParams):
    size_per_rank: int = field(
        default=8, metadata={"help": "m = size_per_rank · rank (8: derived from Subspace Tuning's params column)"}
    )
    activation: Activation = field(default="relu", metadata={"help": "σ of the bottleneck (Pfeiffer: ReLU)"})


class EncoderAdapter(NativeMethod, Method):
    """Bottleneck adapters inside a post-LN encoder's output sub-layers; `layout` says which and how."""

    Params: ClassVar[type] = HAdapterParams
    layout: ClassVar[Literal["houlsby", "pfeiffer"]]

    def bottleneck_size(self, params: HAdapterParams, rank: int | None) -> int:
        if params.bottleneck is not None:
            return params.bottleneck
        if rank is None:
            raise ConfigError(f"method {self.name!r} needs a rank (m = {params.size_per_rank}·r); valid: rank >= 1")
        return params.size_per_rank * rank

    def sublayer_names(self, model: nn.Module) -> list[str]:
        attention, ffn = ENCODER_SUBLAYERS[require_architecture(self.name, model, ENCODER_SUBLAYERS)]
        kinds = {ffn} if self.layout == "pfeiffer" else {attention, ffn}
        names = [name for name, module in model.named_modules() if type(module).__name__ in kinds]
        if not names:
            raise ConfigError(f"method {self.name!r} found no {' or '.join(sorted(kinds))} in this model")
        return names

    def validate(self, params: HAdapterParams, model: nn.Module, ctx: RunContext) -> None:
        self.sublayer_names(model)
        self.bottleneck_size(params, ctx.rank)

    def apply(self, model: nn.Module, params: HAdapterParams, ctx: RunContext) -> InjectedModel:
        size = self.bottleneck_size(params, ctx.rank)
        names = self.sublayer_names(model)
        config = {
            "method": self.name, "params": dataclasses.asdict(params), "rank": ctx.rank, "bottleneck": size,
            "modules": names, "head_modules": list(ctx.head_modules),
        }  # fmt: skip

        def make(sublayer: nn.Module) -> SublayerAdapter:
            return SublayerAdapter(sublayer, size, params.activation, params.init, self.layout)

        return wrap_modules(model, names, list(ctx.head_modules), make, config)


@register
class HAdapter(EncoderAdapter):
    name = "hadapter"
    Params = HAdapterParams
    layout = "houlsby"


@register
class PAdapter(EncoderAdapter):
    name = "padapter"
    Params = PAdapterParams
    layout = "pfeiffer"


# ---------- LLM-Adapters: Series, Parallel ----------


@dataclass
class LlmAdapterParams:
    bottleneck: int = field(default=256, metadata={"help": "bottleneck size m (LLM-Adapters' bottleneck_size)"})
    activation: Activation = field(default="tanh", metadata={"help": "σ of the bottleneck (non_linearity)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input (adapter_dropout)"})
    scaling: float = field(default=1.0, metadata={"help": "s, the factor on the adapter's output"})
    init: Literal["bert", "mam_adapter"] = field(
        default="bert",
        metadata={"help": "bert: D, U ~ N(0, 0.02²) (the reference's default); mam_adapter: D Kaiming, U = 0"},
    )
    adapter_modules: list[str] | None = field(
        default=None, metadata={"help": "linears to adapt; null = the method's FFN placement for the architecture"}
    )

    def check(self) -> None:
        if self.bottleneck < 1:
            raise ConfigError(f"method.bottleneck={self.bottleneck} is not valid; give a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"method.dropout={self.dropout} is not valid; give a value in [0, 1)")
        if not math.isfinite(self.scaling):
            raise ConfigError(f"method.scaling={self.scaling} is not valid; give a finite number")


class LlmAdapter(NativeMethod, Method):
    """An LLM-Adapters bottleneck on decoder linears; the bottleneck size is a setting, not the run's rank."""

    Params: ClassVar[type] = LlmAdapterParams
    uses_rank = False
    defaults: ClassVar[dict[str, list[str]]]

    def placements(self, model: nn.Module, params: LlmAdapterParams) -> dict[str, Literal["input", "output"]]:
        raise NotImplementedError

    def layer_for(self, linear: nn.Linear, params: LlmAdapterParams, position: str) -> AdapterLayer:
        raise NotImplementedError

    def validate(self, params: LlmAdapterParams, model: nn.Module, ctx: RunContext) -> None:
        self.placements(model, params)

    def apply(self, model: nn.Module, params: LlmAdapterParams, ctx: RunContext) -> InjectedModel:
        placements = self.placements(model, params)
        config = {
            "method": self.name, "params": dataclasses.asdict(params), "rank": None, "bottleneck": params.bottleneck,
            "modules": placements, "head_modules": list(ctx.head_modules),
        }  # fmt: skip
        return inject(
            model,
            list(placements),
            list(ctx.head_modules),
            lambda name, linear: self.layer_for(linear, params, placements[name]),
            config,
        )


@register
class SeriesAdapter(LlmAdapter):
    name = "series_adapter"
    defaults = SERIES_DEFAULT

    def placements(self, model: nn.Module, params: LlmAdapterParams) -> dict[str, Literal["input", "output"]]:
        """Each adapted linear's full name and side: LA's role of that FFN linear (bottleneck.py:147)."""
        roles = FFN_LINEARS[require_architecture(self.name, model, self.defaults)]
        wanted = params.adapter_modules or self.defaults[model_type(model)]
        found: dict[str, Literal["input", "output"]] = {}
        for name, module in model.named_modules():
            if not isinstance(module, nn.Linear | Conv1D) or not matches(name, wanted):
                continue
            role = next((side for suffix, side in roles.items() if matches(name, [suffix])), None)
            if role is None:
                raise ConfigError(
                    f"method.adapter_modules={wanted} matches {name!r}, which is not an FFN linear; "
                    f"valid choices: {', '.join(roles)}"
                )
            found[name] = role
        missing = [t for t in wanted if not any(matches(n, [t]) for n in found)]
        if missing:
            raise ConfigError(f"method.adapter_modules {missing} match no linear; valid choices: {', '.join(roles)}")
        return found

    def layer_for(self, linear: nn.Linear, params: LlmAdapterParams, position: str) -> SeriesLayer:
        return SeriesLayer(
            linear, params.bottleneck, params.activation, params.dropout, params.scaling, params.init, position
        )


@register
class ParallelAdapter(LlmAdapter):
    name = "parallel_adapter"
    defaults = PARALLEL_DEFAULT

    def placements(self, model: nn.Module, params: LlmAdapterParams) -> dict[str, Literal["input", "output"]]:
        """Every linear matching adapter_modules (any linear, as LA allows), default the FFN's up and down."""
        kind = require_architecture(self.name, model, self.defaults)
        wanted = params.adapter_modules or self.defaults[kind]
        return {layer.name: "output" for layer in require_targets(model, wanted)}

    def layer_for(self, linear: nn.Linear, params: LlmAdapterParams, position: str) -> ParallelLayer:
        return ParallelLayer(linear, params.bottleneck, params.activation, params.dropout, params.scaling, params.init)
