"""Tiny models for method tests: built from conf/model/tiny-roberta.yaml, no download."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from bench.config import CONF_DIR
from bench.models import load_classifier, load_tokenizer
from methods.base import RunContext

TINY = OmegaConf.load(CONF_DIR / "model" / "tiny-roberta.yaml")


def tiny_classifier(num_labels: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return load_classifier(TINY, num_labels, load_tokenizer(TINY)).eval()


def tiny_batch(batch: int = 3, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY.config.vocab_size, (batch, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def context(rank: int | None = 4, targets: list[str] | None = None, total_steps: int = 10) -> RunContext:
    return RunContext(
        rank=rank, lr=1e-3, seed=0, target_modules=targets or list(TINY.target_modules),
        head_modules=list(TINY.head_modules), total_steps=total_steps,
    )  # fmt: skip
