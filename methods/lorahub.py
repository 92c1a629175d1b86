"""LoRAHub (Huang et al. 2023, arXiv 2307.13269): compose an upstream sweep's LoRA adapters for a new task, untrained.

Given K LoRA adapters of one model (an upstream sweep run with `store.save_adapter=true`), weights w ∈ [−1.5, 1.5]^K
compose them key by key, **both factors**: A = Σ w_i A_i, B = Σ w_i B_i, so ΔW = s·(Σ w_i B_i)(Σ w_j A_j) with its
cross terms (PEFT's `add_weighted_adapter` is not this: "linear" puts √|w| on each factor, "cat" drops the cross
terms). Every key of the adapters' state dicts is summed, the classifier heads they carry (`modules_to_save`) too.
w is found gradient-free by nevergrad's NGOpt (budget `budget` evaluations, from w = 0) minimising

    L(w) = (Σ_batches batch-mean loss) / shots + 0.05 · mean_i |w_i|

over `shots` training rows of the target task, under no_grad, `random`/`numpy` seeded with `search_seed` (42).
Nothing trains (`trains = False`): the runner evaluates the composed model as it is. Reference: sail-sg/lorahub
@df73afe `lorahub/algorithm.py` — the loss 112-135, the L1 term 137-142, the composition 144-169 and 171-184, the
seeds 253-255, the search 274-285; `reproduce_bbh.py:59-89` (5 shots, batch 5, budget 40, K = 20 sampled).
"""

from __future__ import annotations

import json
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from peftbench.core.errors import ConfigError
from peftbench.core.store import RunStore
from peftbench.methods.base import Method, RunContext, register

L1_WEIGHT = 0.05  # algorithm.py:142
BOUND = 1.5  # algorithm.py:274-278: ng.p.Array(init=0, lower=-1.5, upper=1.5)
# adapter_config.json keys that must agree for the factors to be summed
SAME_CONFIG = ("peft_type", "r", "lora_alpha", "use_rslora", "target_modules", "modules_to_save", "fan_in_fan_out")


@dataclass
class LoraHubParams:
    upstream: str | None = field(
        default=None, metadata={"help": "the sweep (in store.root) whose saved LoRA adapters are composed"}
    )
    shots: int = field(default=5, metadata={"help": "target-task training rows in the search's loss"})
    budget: int = field(default=40, metadata={"help": "NGOpt's number of loss evaluations"})
    batch_size: int | None = field(default=None, metadata={"help": "rows per forward pass; null = all shots"})
    modules: int | None = field(
        default=None, metadata={"help": "K adapters drawn at random (the run's seed) from the pool; null = all"}
    )
    search_seed: int = field(default=42, metadata={"help": "random/numpy seed of the search (the reference's 42)"})

    def check(self) -> None:
        for key in ("shots", "budget", "batch_size", "modules"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"method.{key}={value} is not valid; give a positive integer")
        if self.upstream is None:
            raise ConfigError("method.upstream is missing; give the sweep whose adapters to compose: method.upstream=X")


def compose(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Σ_i w_i · state_i key by key (algorithm.py:151-160, 174-183): both LoRA factors, and any head, alike."""
    composed: dict[str, torch.Tensor] = {}
    for i, state in enumerate(states):
        weight = float(weights[i])
        for key, value in state.items():
            composed[key] = weight * value if i == 0 else composed[key] + weight * value
    return composed


def set_composed(model: torch.nn.Module, states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> None:
    """Load Σ_i w_i · state_i into a PeftModel's adapter (algorithm.py:162, 284); every composed key must land."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, compose(states, weights))
    if result.unexpected_keys:
        raise RuntimeError(f"composed adapter keys not in the model: {result.unexpected_keys[:3]}")


def l1_term(weights: Sequence[float]) -> float:
    """0.05 · mean |w_i| (algorithm.py:137-142)."""
    return L1_WEIGHT * sum(abs(float(w)) for w in weights) / len(weights)


@torch.no_grad()
def few_shot_loss(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], rows: int) -> float:
    """Σ over batches of the batch-mean loss, divided by the number of rows (algorithm.py:124-135)."""
    device = next(model.parameters()).device
    total = 0.0
    for batch in batches:
        total += float(model(**{k: v.to(device) for k, v in batch.items()}).loss.float())
    return total / rows


def search(score: Callable[[np.ndarray], float], k: int, budget: int, seed: int) -> np.ndarray:
    """NGOpt over w ∈ [−1.5, 1.5]^K from w = 0, `budget` evaluations, random/numpy seeded (algorithm.py:253-281)."""
    import nevergrad as ng  # only when a search runs: a second or so of imports

    random.seed(seed)
    np.random.seed(seed)
    parametrization = ng.p.Array(init=[0.0] * k, upper=[BOUND] * k, lower=[-BOUND] * k)
    optimizer = ng.optimizers.NGOpt(parametrization=parametrization, budget=budget)
    with warnings.catch_warnings():  # scipy's COBYLA (NGOpt's pick for small budgets) warns on nevergrad's settings
        warnings.filterwarnings("ignore", message=".*Invalid RHOEND", category=UserWarning)
        return np.asarray(optimizer.minimize(score).value, dtype=float)


def adapter_dir(store_root: str | Path, sweep: str, record: dict[str, Any]) -> Path | None:
    """Where a record's saved adapter is: its `adapter_dir` (relative to its sweep folder), or adapters/<run_id>
    for records written before the field existed; None if it has none."""
    folder = RunStore(store_root).sweep_dir(sweep)
    path = folder / (record.get("adapter_dir") or f"adapters/{record['run_id']}")
    return path if (path / "adapter_config.json").is_file() else None


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    files = sorted(path.glob("adapter_model.safetensors"))
    if not files:
        raise ConfigError(f"the adapter in {path} has no adapter_model.safetensors; LoRAHub reads PEFT's safetensors")
    with safe_open(str(files[0]), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118


@register
class LoraHub(Method):
    name = "lorahub"
    Params = LoraHubParams
    uses_rank = False  # the rank is the upstream adapters'
    trains = False

    def inputs(self, params: Any, cfg: DictConfig) -> dict[str, Any]:
        """The upstream adapters to compose: the `ok` runs of `params.upstream` with a saved PEFT LoRA adapter of this
        run's model, the target task's own left out (LoRAHub composes for a task it has no adapter for)."""
        store = RunStore(cfg.store.root)
        sweeps = store.sweeps()
        if params.upstream not in sweeps:
            raise ConfigError(
                f"method.upstream={params.upstream!r} is not a sweep in store.root={str(cfg.store.root)!r}; "
                f"valid choices: {', '.join(sweeps) or '(none)'}"
            )
        saved = [
            r for r in store.iter_records(params.upstream)
            if r["status"] == "ok" and adapter_dir(store.root, params.upstream, r) is not None
        ]  # fmt: skip
        if not saved:
            raise ConfigError(
                f"method.upstream={params.upstream!r} has no saved adapters; run it with store.save_adapter=true"
            )
        pool = sorted((r for r in saved if r["model"] == cfg.model.name), key=lambda r: r["run_id"])
        if not pool:
            models = sorted({r["model"] for r in saved})
            raise ConfigError(
                f"method.upstream={params.upstream!r} has no adapters of model {cfg.model.name!r}; "
                f"valid choices: model={', model='.join(models)}"
            )
        pool = [r for r in pool if r["task"] != cfg.task.name]
        if not pool:
            raise ConfigError(
                f"method.upstream={params.upstream!r} has adapters of model {cfg.model.name!r} only for the target "
                f"task {cfg.task.name!r}; LoRAHub composes adapters of other tasks"
            )
        if params.modules is not None:
            if params.modules > len(pool):
                raise ConfigError(
                    f"method.modules={params.modules} is more than the {len(pool)} adapters of "
                    f"method.upstream={params.upstream!r}; give 1 to {len(pool)} or null"
                )
            # reproduce_bbh.py:76-82 draws K modules per seed; sorted again: the run_id ignores the draw order
            pool = sorted(random.Random(int(cfg.seed)).sample(pool, params.modules), key=lambda r: r["run_id"])
        dirs = [adapter_dir(store.root, params.upstream, r) for r in pool]
        self._check_same_arch(list(zip(pool, dirs, strict=True)))
        folder = store.sweep_dir(params.upstream)
        relative = [d.relative_to(folder).as_posix() for d in dirs]  # the run_id hashes no absolute path
        return {
            "upstream_sweep": params.upstream,
            "upstream": [
                {"run_id": r["run_id"], "task": r["task"], "method": r["method"], "adapter_dir": d}
                for r, d in zip(pool, relative, strict=True)
            ],
        }

    @staticmethod
    def _check_same_arch(adapters: list[tuple[dict[str, Any], Path]]) -> None:
        """Every adapter is a plain PEFT LoRA with the first one's config and tensor shapes (algorithm.py:57-63)."""
        first_config: dict[str, Any] | None = None
        first_shapes: dict[str, tuple[int, ...]] = {}
        for record, path in adapters:
            config = json.loads((path / "adapter_config.json").read_text())
            if config.get("peft_type") != "LORA" or config.get("use_dora"):
                kind = "DoRA" if config.get("use_dora") else config.get("peft_type")
                raise ConfigError(
                    f"upstream run {record['run_id']} ({record['method']}) saved a {kind} adapter; "
                    "LoRAHub composes plain LoRA adapters"
                )
            shapes = _shapes(path)
            if first_config is None:
                first_config, first_shapes, first_id = config, shapes, record["run_id"]
                continue
            for key in SAME_CONFIG:
                if _normal(config.get(key)) != _normal(first_config.get(key)):
                    raise ConfigError(
                        f"upstream run {record['run_id']} has {key}={config.get(key)!r} but run {first_id} has "
                        f"{first_config.get(key)!r}; LoRAHub composes adapters of one architecture"
                    )
            if shapes != first_shapes:
                different = sorted(set(shapes) ^ set(first_shapes))
                different = different or [k for k in shapes if shapes[k] != first_shapes[k]]
                raise ConfigError(
                    f"upstream run {record['run_id']} cannot be composed with run {first_id}: its tensors differ "
                    f"({different[0]}); LoRAHub composes adapters of one architecture"
                )

    def _dirs(self, params: Any, ctx: RunContext) -> list[Path]:
        folder = RunStore(ctx.store_root or ".").sweep_dir(params.upstream)
        return [folder / entry["adapter_dir"] for entry in ctx.inputs["upstream"]]

    def validate(self, params: Any, model: torch.nn.Module, ctx: RunContext) -> None:
        """The adapters fit this model (layers and head shapes), and the target has `shots` training rows."""
        state = model.state_dict()
        modules = dict(model.named_modules())
        for key, shape in _shapes(self._dirs(params, ctx)[0]).items():
            name = key.removeprefix("base_model.model.")
            if ".lora_A." in name or ".lora_B." in name:
                sizes = _in_out(modules.get(name.split(".lora_")[0]))
                fits = sizes is not None and (shape[1] == sizes[0] if ".lora_A." in name else shape[0] == sizes[1])
            else:
                fits = name in state and tuple(state[name].shape) == shape
            if not fits:
                raise ConfigError(
                    f"the upstream adapters of method.upstream={params.upstream!r} do not fit this model and task: "
                    f"{name} {list(shape)} (a head with another number of labels, or another model)"
                )
        rows = sum(len(next(iter(b.values()))) for b in ctx.sample_batches(1, batch_size=params.shots))
        if rows < params.shots:
            raise ConfigError(f"method.shots={params.shots} is more than the {rows} training rows; give 1 to {rows}")

    def apply(self, model: torch.nn.Module, params: Any, ctx: RunContext) -> torch.nn.Module:
        from peft import PeftModel
        from peft.utils import load_peft_weights

        dirs = self._dirs(params, ctx)
        hub = PeftModel.from_pretrained(model, str(dirs[0]))  # the first module's config (algorithm.py:38)
        if torch.cuda.is_available():
            hub.to("cuda")
        hub.eval()
        states = [load_peft_weights(str(d), device=str(next(hub.parameters()).device)) for d in dirs]
        (shots,) = ctx.sample_batches(1, batch_size=params.shots)
        size = params.batch_size or params.shots
        batches = [{k: v[i : i + size] for k, v in shots.items()} for i in range(0, params.shots, size)]

        def score(weights: np.ndarray) -> float:  # algorithm.py:144-169
            set_composed(hub, states, weights)
            return few_shot_loss(hub, batches, params.shots) + l1_term(weights)

        started = time.perf_counter()
        weights = search(score, len(states), params.budget, params.search_seed)
        set_composed(hub, states, weights)  # algorithm.py:282-284; not merged: the same function, a saveable adapter
        loss = few_shot_loss(hub, batches, params.shots)
        for param in hub.parameters():
            param.requires_grad_(False)
        upstream = ctx.inputs["upstream"]
        hub._peftbench_lorahub = {
            "weights": {entry["run_id"]: float(w) for entry, w in zip(upstream, weights, strict=True)},
            "upstream": [entry["run_id"] for entry in upstream],
            "upstream_tasks": {entry["run_id"]: entry["task"] for entry in upstream},
            "objective": loss + l1_term(weights),
            "few_shot_loss": loss,
            "shots": params.shots,
            "budget": params.budget,
            "search_seconds": time.perf_counter() - started,
        }
        return hub

    def extra_metrics(self, model: torch.nn.Module) -> dict[str, Any]:
        """The weights found, keyed by upstream run_id, and the search's objective (under `metrics.lorahub`)."""
        return {"lorahub": dict(model._peftbench_lorahub)}


def _normal(value: Any) -> Any:
    return sorted(value) if isinstance(value, list) else value


def _in_out(module: torch.nn.Module | None) -> tuple[int, int] | None:
    """(in, out) features of a layer LoRA adapts: nn.Linear, or GPT-2's Conv1D (weight stored in × out)."""
    if module is None:
        return None
    if hasattr(module, "in_features"):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    return (weight.shape[0], weight.shape[1]) if weight is not None and weight.dim() == 2 else None
