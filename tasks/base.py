"""The task interface and the registry of task families (`family:` in conf/task/*.yaml).

A task entry is data (its YAML: hub id, fields, metrics, primary metric, offline source); a family
module (`tasks/glue.py`, `tasks/gsm8k.py`, …) is the code that loads, preprocesses and scores every
task of that family. A family also says which kind of model it needs (a classifier with a fresh head,
a causal LM) and how to batch and evaluate it, so the runner never branches on a task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from omegaconf import DictConfig
from transformers import DataCollatorWithPadding

from bench.errors import ConfigError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import Trainer


@dataclass
class TaskData:
    """Tokenized train split, the eval splits (metric-key suffix -> split), and how they were made."""

    train: Dataset
    evals: dict[str, Dataset]
    protocol: dict[str, Any] = field(default_factory=dict)
    processor: Any = None  # the tokenizer or image processor, for tasks that evaluate by generating


class Task:
    """Base class of a task family. `cfg` is the task's YAML entry; `processor` is the model's tokenizer
    (modality "text") or image processor ("image")."""

    family: ClassVar[str]
    model_kind: ClassVar[str] = "sequence-classification"  # a key of bench.models.KINDS
    modality: ClassVar[str] = "text"
    fresh_head: ClassVar[bool] = True  # a new task head, trained with the adapter (not for causal LMs)

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def primary(self) -> str:
        return self.cfg.primary

    def validate(self, data: str) -> None:
        """One-line ConfigErrors for a bad task entry or an unavailable data source."""

    def prepare(self, data: str, processor: Any, seed: int = 0) -> TaskData:
        """Load and preprocess the splits; `seed` drives any randomness of the training data (augmentation)."""
        raise NotImplementedError

    def hub_datasets(self) -> list[tuple[str, str | None]]:
        """The (path, config name) of every hub dataset the task reads under data=hub (for prefetch)."""
        return []

    def model_head(self, processor: Any) -> dict[str, Any]:
        """Config values for the model's head (num_labels, ...); nothing for a causal LM."""
        return {}

    def head_modules(self, model_cfg: DictConfig) -> list[str]:
        """The modules trained in full next to the adapter: the model's fresh task head, if any."""
        return list(model_cfg.head_modules) if self.fresh_head else []

    def collator(self, processor: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """Turn a list of preprocessed rows into a batch."""
        return DataCollatorWithPadding(processor)

    def evaluate(self, trainer: Trainer, data: TaskData) -> dict[str, float]:
        """The task's metrics on every eval split of `data` for the trained model in `trainer`."""
        raise NotImplementedError


class ClassificationTask(Task):
    """A task scored from the logits of a classification (or 1-output regression) head."""

    def score(self, predictions: np.ndarray, references: np.ndarray, suffix: str = "") -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, trainer: Trainer, data: TaskData) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for suffix, split in data.evals.items():
            prediction = trainer.predict(split)
            logits = prediction.predictions
            logits = logits[0] if isinstance(logits, tuple) else logits
            metrics.update(self.score(np.asarray(logits), np.asarray(prediction.label_ids), suffix))
        return metrics


_FAMILIES: dict[str, type[Task]] = {}


def register_family(cls: type[Task]) -> type[Task]:
    """Class decorator: tasks whose YAML says `family: <cls.family>` are built by `cls`."""
    _FAMILIES[cls.family] = cls
    return cls


def build_task(cfg: DictConfig) -> Task:
    from tasks import load_all

    load_all()
    family = cfg.get("family")
    if family not in _FAMILIES:
        raise ConfigError(f"unknown task family {family!r}; valid choices: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[family](cfg)
