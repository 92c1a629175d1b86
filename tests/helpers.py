"""Tiny models for method tests: built from conf/model/tiny-*.yaml, no download."""

from __future__ import annotations

import copy

import torch
from omegaconf import DictConfig, OmegaConf
from peftbench.bench.models import load_classifier, load_tokenizer
from peftbench.core.paths import CONF_DIR
from peftbench.methods.base import RunContext, get_method

TINY = OmegaConf.load(CONF_DIR / "model" / "tiny-roberta.yaml")
TINY_LLAMA = OmegaConf.load(CONF_DIR / "model" / "tiny-llama.yaml")


def tiny_classifier(num_labels: int = 2, seed: int = 0, spec: DictConfig = TINY) -> torch.nn.Module:
    torch.manual_seed(seed)
    return load_classifier(spec, num_labels, load_tokenizer(spec).pad_token_id).eval()


def tiny_batch(batch: int = 3, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY.config.vocab_size, (batch, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def labelled_batches(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """n small batches with labels, standing in for training batches (LoRA-GA calibration)."""
    return [{**tiny_batch(seed=seed + i), "labels": torch.tensor([0, 1, 1])} for i in range(n)]


def build(name: str, rank: int | None = 4, spec: DictConfig = TINY, **values: object) -> tuple:
    """(base, adapted, method, params) for a method on a tiny model; `base` is untouched (adapted is a copy)."""
    base = tiny_classifier(spec=spec)
    method = get_method(name)
    params = method.parse({"name": name, **values})
    ctx = context(rank, spec=spec)
    method.validate(params, base, ctx)
    torch.manual_seed(1)
    return base, method.adapt(copy.deepcopy(base), params, ctx).eval(), method, params


def context(
    rank: int | None = 4, targets: list[str] | None = None, total_steps: int = 10, spec: DictConfig = TINY
) -> RunContext:
    return RunContext(
        rank=rank, lr=1e-3, seed=0, target_modules=targets or list(spec.target_modules),
        head_modules=list(spec.head_modules), total_steps=total_steps, sample_batches=labelled_batches,
    )  # fmt: skip


def perturb(model: torch.nn.Module, seed: int = 3, size: float = 0.05) -> None:
    """Move every trainable parameter off its init (a zero-init factor hides what an identity test checks)."""
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for param in model.parameters():
            if param.requires_grad:
                param.add_(size * torch.randn(param.shape, generator=generator))


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_batch()).logits


def head_size(spec: DictConfig = TINY) -> int:
    """Parameters of the tiny classifier's task head."""
    head = spec.head_modules[0]
    return sum(p.numel() for n, p in tiny_classifier(spec=spec).named_parameters() if head in n.split("."))
