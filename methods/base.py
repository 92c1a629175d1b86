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
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

import torch
from transformers import TrainerCallback

from bench.errors import ConfigError
from methods.targets import check_rank, require_targets


@dataclass(frozen=True)
class RunContext:
    """What a method may know about the run it is part of.

    `sample_batches(n)` gives n collated training batches (for data-driven inits such as LoRA-GA);
    `sample_batches(n, batch_size=b)` batches of b rows. `store_root` is the results store, `inputs` what
    the method's `inputs` hook resolved before the run.
    """

    rank: int | None
    lr: float
    seed: int
    target_modules: list[str]
    head_modules: list[str]
    total_steps: int
    weight_decay: float = 0.0
    sample_batches: Callable[..., list[dict[str, torch.Tensor]]] | None = None
    store_root: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)


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


_REGISTRY: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under `cls.name` (its conf/method/<name>.yaml)."""
    if cls.name in _REGISTRY:
        raise ValueError(f"method {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def register_class(cls: Any, origin: str) -> None:
    """Register a Method subclass found outside this package (an entry point); no-op if it already is."""
    if not (isinstance(cls, type) and issubclass(cls, Method)) or not isinstance(getattr(cls, "name", None), str):
        raise ConfigError(f"{origin} is neither a module nor a Method subclass with a `name`")
    registered = _REGISTRY.get(cls.name)
    if registered is None:
        register(cls)
    elif type(registered) is not cls:
        raise ConfigError(f"{origin} registers method {cls.name!r}, which {type(registered).__module__} already has")


def get_method(name: str, module: str | None = None) -> Method:
    """The registered method `name`; `module` (an import path) is imported first (`method.module=...`)."""
    from methods import load_all, load_module

    load_all()
    if module is not None:
        load_module(module)
        if name not in _REGISTRY:
            raise ConfigError(
                f"method.module={module!r} registers no method {name!r}; valid choices: {', '.join(sorted(_REGISTRY))}"
            )
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; valid choices: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    from methods import load_all

    load_all()
    return sorted(_REGISTRY)
