"""The shared injection layer for methods PEFT does not have (SingLoRA, SSL/SSB, MPCn, the LoRA-MoE family).

It mirrors PEFT's semantics: wrap the target `nn.Linear`s, freeze everything but the adapters and the
task head, `merge_and_unload()`, `disable_adapter()`, and save/load adapter weights as safetensors plus
a JSON config. Usable outside the harness:

    from peftbench.methods.base import get_method
    singlora = get_method("singlora")
    model = singlora.wrap(base_model, rank=8, target_modules=["query", "value"], head_modules=["classifier"])
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from peftbench.core.context import RunContext
from peftbench.core.errors import ConfigError, NotMergeable
from peftbench.methods.targets import in_head, matches
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def linear_features(layer: nn.Linear | Conv1D) -> tuple[int, int]:
    """(in, out) of an nn.Linear or a GPT-2 Conv1D (whose weight is stored as in × out)."""
    if isinstance(layer, Conv1D):
        return tuple(layer.weight.shape)
    return layer.in_features, layer.out_features


class AdapterLayer(nn.Module):
    """A frozen base linear plus an adapter. Subclasses give `delta(x)` and, if mergeable, `delta_weight()`.

    Layers whose update is not additive (SSL, SSB) override `adapted(x)` instead and read the base weight
    as (out, in), so they set `supports_conv1d = False`; additive layers also wrap GPT-2's Conv1D, whose
    weight is stored transposed (in, out).
    """

    supports_conv1d = True

    def __init__(self, base_layer: nn.Linear | Conv1D) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.transposed = isinstance(base_layer, Conv1D)
        self.in_features, self.out_features = linear_features(base_layer)
        self.disabled = False
        # adapter tensors live where the base weight lives but always in float32, as PEFT keeps them
        # (`autocast_adapter_dtype`): on a bf16 base, updates below bf16's resolution would be lost.
        # The forward computes in the activations' dtype (the weights are cast, gradients flow back).
        self.factory = {"dtype": torch.float32, "device": base_layer.weight.device}

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adapted(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.delta(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) if self.disabled else self.adapted(x)

    def delta_weight(self) -> torch.Tensor:
        raise NotMergeable(f"{type(self).__name__} has no input-independent weight update")

    def merged_weight(self) -> torch.Tensor:
        delta = self.delta_weight()  # (out, in)
        return self.base_layer.weight + (delta.T if self.transposed else delta)

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.named_parameters() if not n.startswith("base_layer."))


class InjectedModel(nn.Module):
    """A model whose target linears are wrapped by adapter layers; forwards everything to the model."""

    def __init__(self, model: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.adapter_config = config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    @property
    def config(self) -> Any:
        """The wrapped model's config: the Trainer reads `keys_to_ignore_at_inference` from it (without it a
        decoder classifier's cache would be gathered as a prediction), as PEFT's wrapper exposes it too."""
        return self.model.config

    def get_base_model(self) -> nn.Module:
        """The wrapped model, its adapters in place (as PEFT's method of the same name): for `generate`."""
        return self.model

    def adapter_layers(self) -> Iterator[tuple[str, AdapterLayer]]:
        return ((n, m) for n, m in self.model.named_modules() if isinstance(m, AdapterLayer))

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model (the head stays as trained), like PEFT's context manager of the same name."""
        layers = [layer for _, layer in self.adapter_layers()]
        for layer in layers:
            layer.disabled = True
        try:
            yield
        finally:
            for layer in layers:
                layer.disabled = False

    def merge_and_unload(self) -> nn.Module:
        """The plain model with every adapter merged into its base weight (NotMergeable if impossible)."""
        merged = {name: layer.merged_weight().detach() for name, layer in self.adapter_layers()}
        for name, layer in list(self.adapter_layers()):
            base = layer.base_layer
            with torch.no_grad():
                base.weight.copy_(merged[name])
            _replace(self.model, name, base)
        return self.model

    def save_pretrained(self, out_dir: str) -> None:
        """Trainable tensors (adapter + head) and any base weight the method changed, as safetensors + JSON."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        layers = [name for name, _ in self.adapter_layers()]
        keep_base = bool(self.adapter_config.get("saves_base_weights"))
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}

        def kept(key: str) -> bool:
            for name in layers:
                if key.startswith(f"{name}."):
                    rest = key[len(name) + 1 :]
                    return not rest.startswith("base_layer.") or (keep_base and rest == "base_layer.weight")
            return key in trainable

        state = {n: t.detach().contiguous() for n, t in self.model.state_dict().items() if kept(n)}
        save_file(state, str(out / WEIGHTS))
        (out / CONFIG).write_text(json.dumps(self.adapter_config, indent=2, sort_keys=True))

    def load_adapter(self, out_dir: str) -> None:
        state = load_file(str(Path(out_dir) / WEIGHTS))
        result = self.model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"adapter weights do not fit this model: {result.unexpected_keys[:3]}")

    def base_copy(self) -> nn.Module:
        """A deep copy of the model with every adapter layer replaced by its base linear."""
        clone = copy.deepcopy(self.model)
        for name, module in list(clone.named_modules()):
            if isinstance(module, AdapterLayer):
                _replace(clone, name, module.base_layer)
        return clone


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def inject(
    model: nn.Module,
    target_modules: list[str],
    head_modules: list[str],
    make_layer: Callable[[str, nn.Linear], AdapterLayer],
    config: dict[str, Any],
) -> InjectedModel:
    """Freeze `model`, wrap each target nn.Linear with `make_layer(name, linear)`, unfreeze adapters and head."""
    for param in model.parameters():
        param.requires_grad_(False)
    targets = [(n, m) for n, m in model.named_modules() if matches(n, target_modules)]
    for name, module in targets:
        if not isinstance(module, nn.Linear | Conv1D):
            raise ConfigError(f"target layer {name!r} is a {type(module).__name__}; valid: nn.Linear, Conv1D")
    layers = {name: make_layer(name, module) for name, module in targets}
    for name, layer in layers.items():
        if layer.transposed and not layer.supports_conv1d:
            raise ConfigError(
                f"target layer {name!r} is a GPT-2 Conv1D, which {type(layer).__name__} does not wrap; "
                "valid: nn.Linear targets"
            )
    return install(model, layers, head_modules, config)


def install(
    model: nn.Module, layers: dict[str, nn.Module], head_modules: list[str], config: dict[str, Any]
) -> InjectedModel:
    """Put each layer in place of the module of its name, unfreeze its adapters and the task head."""
    for name, layer in layers.items():
        _replace(model, name, layer)
        for param in layer.adapter_parameters():
            param.requires_grad_(True)
    for name, param in model.named_parameters():
        if in_head(name, head_modules):
            param.requires_grad_(True)
    return InjectedModel(model, config)


class NativeMethod:
    """Mixin for methods built on this injection layer: `apply`, `save`, `load` and a standalone `wrap`.

    Subclasses (also `peftbench.methods.base.Method`s) implement `make_layer(name, linear, params, ctx)`.
    """

    saves_base_weights = False  # True when the method rewrites W0 (its residual must travel with it)

    def make_layer(self, name: str, linear: nn.Linear, params: Any, ctx: Any) -> AdapterLayer:
        raise NotImplementedError

    def apply(self, model: nn.Module, params: Any, ctx: Any) -> InjectedModel:
        config = {
            "method": self.name,
            "params": dataclasses.asdict(params),
            "rank": ctx.rank,
            "target_modules": list(ctx.target_modules),
            "head_modules": list(ctx.head_modules),
            "saves_base_weights": self.saves_base_weights,
        }
        return inject(
            model, ctx.target_modules, ctx.head_modules, lambda n, m: self.make_layer(n, m, params, ctx), config
        )

    def save(self, model: InjectedModel, out_dir: str) -> None:
        model.save_pretrained(out_dir)

    def own_checkpoints(self, model: nn.Module) -> bool:
        return isinstance(model, InjectedModel)

    def load_weights(self, model: InjectedModel, out_dir: str) -> None:
        model.load_adapter(out_dir)

    def load(self, base_model: nn.Module, out_dir: str, params: Any, ctx: Any) -> InjectedModel:
        model = self.adapt(base_model, params, ctx)
        model.load_adapter(out_dir)
        return model

    def wrap(
        self, model: nn.Module, rank: int | None, target_modules: list[str], head_modules: list[str] = (), **values: Any
    ) -> InjectedModel:
        """Use the method outside the harness: wrap `model` in place and return the injected model."""
        params = self.parse(values)
        ctx = RunContext.build(params, target_modules, rank=rank, lr=0.0, seed=0, head_modules=list(head_modules),
                               total_steps=1)  # fmt: skip
        self.validate(params, model, ctx)
        return self.adapt(model, params, ctx)


def adapter_layers_of(model: nn.Module, kind: type[AdapterLayer] = AdapterLayer) -> list[AdapterLayer]:
    """Every adapter layer of a given kind in a (wrapped) model."""
    return [m for m in model.modules() if isinstance(m, kind)]
