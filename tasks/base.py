"""The task interface and the registry of task families (`family:` in conf/task/*.yaml).

A task entry is data (its YAML: hub id, fields, metrics, primary metric, offline source); a family
module (`tasks/glue.py`, …) is the code that loads, tokenizes and scores every task of that family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from omegaconf import DictConfig

from bench.errors import ConfigError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase


@dataclass
class TaskData:
    """Tokenized train split, the eval splits (metric-key suffix -> split), and how they were made."""

    train: Dataset
    evals: dict[str, Dataset]
    protocol: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class of a task family. `cfg` is the task's YAML entry."""

    family: ClassVar[str]

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

    def prepare(self, data: str, tokenizer: PreTrainedTokenizerBase) -> TaskData:
        raise NotImplementedError

    def score(self, predictions: np.ndarray, references: np.ndarray, suffix: str = "") -> dict[str, float]:
        raise NotImplementedError


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
