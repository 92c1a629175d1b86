"""The method interface and registry: how the runner turns a base model into a trainable one.

A method is a class registered by name with `@register`. It declares its hyper-parameters as a
dataclass (every field with a `help` text), and overrides only what it needs; the defaults do
nothing. The runner calls these hooks and never branches on a method's name:

- `validate(params, model, ctx)`: one-line ConfigErrors before training (default: rank vs layers),
- `apply(model, params, ctx)`: wrap/freeze the model and return it (the runner calls `adapt`, which
  applies and then keeps every trainable parameter in float32 whatever the base model's dtype),
- `optimizer_param_groups(model, params, ctx)`: custom groups (LoRA+), or None for the Trainer's,
- `callbacks(model, params, ctx)`: Trainer callbacks (AdaLoRA budget, ReLoRA restarts, ramps),
- `aux_loss(model, params)`: a term added to the training loss (MoE balance, regularisers),
- `lr_lambda(params, ctx)`: a learning-rate schedule of its own (ReLoRA),
- `extra_metrics(model)`: measurements recorded with the metrics (MoE expert load),
- `save(model, out_dir)` / `load(base_model, out_dir, params, ctx)`: write the trained adapter and
  put it back on a fresh base model (default: PEFT's `save_pretrained` / `PeftModel.from_pretrained`),
- `inputs(params, cfg)`: what the run reads from outside its config (LoRAHub: an upstream sweep's adapters),
  checked before anything loads; it enters the run_id and the record, and reaches `apply` as `ctx.inputs`.

A method that fits its model inside `apply` without gradient steps (LoRAHub's search) sets `trains = False`:
the runner then evaluates the model it returns with no Trainer step.

Methods outside this package: an entry point in the group `peftbench.methods` (a module, imported, or a
`Method` subclass, registered), or `method.module=<import path>` (imported before the name is looked up).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union

import torch
from peftbench.core.context import RunContext
from peftbench.core.errors import ConfigError
from peftbench.core.registry import Registry
from peftbench.methods.targets import check_rank, require_targets
from transformers import TrainerCallback


@dataclass
class NoParams:
    """A method without hyper-parameters."""


class Method:
    """Base class of every method. Subclasses set `name` and `Params` and implement `apply`."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    uses_rank: ClassVar[bool] = True
    trains: ClassVar[bool] = True  # False: `apply` fits the model itself; the Trainer takes no step
    # True: every weight of the base model trains (full fine-tuning); the papers' params columns count it as 100%
    trains_base: ClassVar[bool] = False

    def parse(self, method_cfg: dict[str, Any]) -> Any:
        """Build the Params dataclass from the method's config; unknown keys and bad types are errors."""
        values = dict(method_cfg)
        values.pop("name", None)
        values.pop("module", None)  # where an outside method lives (see `get_method`), not a hyper-parameter
        fields = {f.name: f for f in dataclasses.fields(self.Params)}
        hints = typing.get_type_hints(self.Params)
        for key, value in values.items():
            if key not in fields:
                valid = ", ".join(sorted(fields)) or "(none)"
                raise ConfigError(f"unknown key method.{key} for method {self.name!r}; valid keys: {valid}")
            values[key] = _coerce(f"method.{key}", value, hints[key])
        params = self.Params(**values)
        check = getattr(params, "check", None)
        if check is not None:
            check()
        return params

    def inputs(self, params: Any, cfg: Any) -> dict[str, Any]:
        """What the run reads from outside its config, resolved from the whole run config `cfg` before anything
        loads (one-line ConfigErrors). A non-empty result enters the run_id and the record. Default: nothing."""
        return {}

    def validate(self, params: Any, model: torch.nn.Module, ctx: RunContext) -> None:
        if self.uses_rank:
            check_rank(ctx.rank, require_targets(model, ctx.target_modules))

    def apply(self, model: torch.nn.Module, params: Any, ctx: RunContext) -> torch.nn.Module:
        raise NotImplementedError

    def adapt(self, model: torch.nn.Module, params: Any, ctx: RunContext) -> torch.nn.Module:
        """`apply`, then every trainable parameter in float32 (what the runner calls)."""
        model = self.apply(model, params, ctx)
        upcast_trainable(model)
        return model

    def optimizer_param_groups(
        self, model: torch.nn.Module, params: Any, ctx: RunContext
    ) -> list[dict[str, Any]] | None:
        return None

    def callbacks(self, model: torch.nn.Module, params: Any, ctx: RunContext) -> list[TrainerCallback]:
        return []

    def aux_loss(self, model: torch.nn.Module, params: Any) -> torch.Tensor | None:
        return None

    def lr_lambda(self, params: Any, ctx: RunContext) -> Callable[[int], float] | None:
        """A learning-rate factor per optimizer step (ReLoRA's jagged cosine), or None for the Trainer's."""
        return None

    def extra_metrics(self, model: torch.nn.Module) -> dict[str, Any]:
        """Method-specific measurements recorded under `metrics` after evaluation (MoE expert load)."""
        return {}

    def save(self, model: torch.nn.Module, out_dir: str) -> None:
        model.save_pretrained(out_dir)

    def own_checkpoints(self, model: torch.nn.Module) -> bool:
        """True when training checkpoints of `model` are written by `save` and read by `load_weights` rather than
        as the Trainer's whole state dict (which fails on tied embeddings and writes a 7B frozen base each time)."""
        return False

    def load_weights(self, model: torch.nn.Module, out_dir: str) -> None:
        """Read what `save` wrote into the adapted `model` (resuming from a training checkpoint)."""
        raise NotImplementedError(f"{type(self).__name__} does not read its own checkpoints")

    def load(self, base_model: torch.nn.Module, out_dir: str, params: Any, ctx: RunContext) -> torch.nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, out_dir)


def upcast_trainable(model: torch.nn.Module) -> None:
    """Keep every trainable parameter in float32, whatever the base model's dtype.

    On a bf16 base (LLaMA on a GPU) a bf16 parameter loses every update below bf16's resolution (8 bits
    of mantissa). PEFT keeps its adapters in float32 (`autocast_adapter_dtype=True`) but not a
    `modules_to_save` head, and our own layers and full FT would train bf16: one rule for every method
    keeps the comparison fair. The forward still computes in bf16 under autocast.
    """
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()


def trainable_dtypes(model: torch.nn.Module) -> list[str]:
    """The distinct dtypes of the trainable parameters (for the record)."""
    return sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad})


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check `value` against a type hint (int, float, bool, str, list[str], Literal, Optional)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(name, value, option)
            except ConfigError:
                continue
    if hint is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if value in typing.get_args(hint):
            return value
    elif origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, list | tuple):
            return [_coerce(name, v, item) for v in value]
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint in (bool, str):
        if isinstance(value, hint):
            return value
    else:
        return value
    raise ConfigError(f"{name}={value!r} is not valid; expected {_describe(hint)}")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


METHODS: Registry[Method] = Registry(
    kind="method",
    base=Method,
    key="name",
    package="peftbench.methods",
    skip={"base", "targets"},
    group="peftbench.methods",
    make=lambda cls: cls(),
)
register = METHODS.register  # class decorator: a method available under `cls.name` (its conf/method/<name>.yaml)
register_class = METHODS.register_class


def get_method(name: str, module: str | None = None) -> Method:
    """The registered method `name`; `module` (an import path) is imported first (`method.module=...`)."""
    return METHODS.get(name, module)


def method_names() -> list[str]:
    return METHODS.names()
