"""Trainable-parameter counts of a method on a model's real architecture, without its weights.

The model is built from its entry's `hub_config` (the hub config's dimensions) on the meta device, so
counting LLaMA-7B costs no memory and no download; the method is applied exactly as in a run (its
resolved targets, rank and settings). This is what the papers' params columns are checked against
(`peftbench.bench.paper`), and what `peftbench grid` can show before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from peftbench.bench.measure import count_params
from peftbench.bench.models import KINDS
from peftbench.core.errors import ConfigError
from peftbench.methods.base import RunContext, get_method
from peftbench.tasks.base import build_task
from transformers import AutoConfig

# The run length a count assumes: no count depends on it, but a schedule given in steps (AdaLoRA's tinit and tfinal
# from Subspace Tuning's scripts, up to 58,000 steps on MNLI) must fit inside it, as it fits inside the real run.
PLACEHOLDER_TOTAL_STEPS = 10**9


@dataclass(frozen=True)
class MetaCount:
    """Parameters of an adapted model: `adapter` = trainable minus the task head; `backbone` = the model as
    loaded for the task minus its head (before the method changed anything)."""

    adapter: int
    head: int
    backbone: int


def model_config_values(model_cfg: DictConfig) -> dict[str, Any]:
    """The entry's config values (`model_type` included): its `hub_config`, its `config` (the tests' tiny models), or
    the config of weights on this machine: a package's config.json (MiniLM), a GGUF file's header (SmolLM2)."""
    if model_cfg.get("hub_config") is not None:
        return OmegaConf.to_container(model_cfg.hub_config, resolve=True)
    if model_cfg.source == "config":
        return {"model_type": model_cfg.architecture, **OmegaConf.to_container(model_cfg.config, resolve=True)}
    if model_cfg.source in ("package", "gguf"):
        from peftbench.core.assets import package_path

        if model_cfg.source == "package":
            config = AutoConfig.from_pretrained(str(package_path(model_cfg.package, model_cfg.subdir)))
        else:
            gguf = package_path(model_cfg.package, model_cfg.gguf_file)
            config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        values = config.to_dict()
        return {k: v for k, v in values.items() if k not in ("architectures", "transformers_version", "_name_or_path")}
    raise ConfigError(f"model {model_cfg.name!r} has no hub_config: its dimensions are unknown offline")


def meta_model(model_cfg: DictConfig, kind: str, **head: Any) -> torch.nn.Module:
    """The entry's architecture with its real dimensions on the meta device (no weights, no memory)."""
    values = model_config_values(model_cfg)
    model_type = values.pop("model_type")
    config = AutoConfig.for_model(model_type, **values, **head)
    with torch.device("meta"):
        return KINDS[kind].from_config(config)


def _task_head(task_cfg: DictConfig, kind: str) -> dict[str, Any]:
    if kind == "causal-lm":
        return {}
    labels = int(task_cfg.get("num_labels") or 2)
    return {"num_labels": labels, **({"problem_type": "regression"} if labels == 1 else {})}


def count_on_meta(cfg: DictConfig) -> MetaCount:
    """Apply a run config's method to its model's real architecture on the meta device and count."""
    from peftbench.bench.config import resolve_point

    resolve_point(cfg)
    task = build_task(cfg.task)
    model = meta_model(cfg.model, task.model_kind, **_task_head(cfg.task, task.model_kind))
    method = get_method(cfg.method.name)
    params = method.parse(OmegaConf.to_container(cfg.method, resolve=True))
    head_modules = task.head_modules(cfg.model)
    before = count_params(model, head_modules)
    ctx = RunContext.build(
        params, cfg.model.target_modules, rank=cfg.rank if method.uses_rank else None, lr=float(cfg.lr), seed=0,
        head_modules=head_modules, total_steps=PLACEHOLDER_TOTAL_STEPS,
    )  # fmt: skip
    method.validate(params, model, ctx)
    adapted = method.adapt(model, params, ctx)
    for name, param in adapted.named_parameters():
        # PEFT re-registers AdaLoRA's constant `ranknum` as a new (trainable) Parameter when it moves an adapter
        # next to a meta base weight; on a real model it stays frozen
        if ".ranknum." in f".{name}.":
            param.requires_grad_(False)
    counts = count_params(adapted, head_modules)
    head = counts.head_params
    return MetaCount(counts.trainable_params - head, head, before.total_params - before.head_params)
