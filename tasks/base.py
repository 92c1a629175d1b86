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
from peftbench.core.errors import ConfigError
from peftbench.core.registry import Registry
from transformers import DataCollatorWithPadding

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import Trainer


@dataclass(frozen=True)
class HubLoad:
    """One `datasets.load_dataset` call a task makes under data=hub: the run and `peftbench prefetch` make the
    same call, so the cache a prefetch fills is the cache the run reads. `revision` is the task entry's pin
    (`revision:` beside `path:`; None: the main branch); the hub lock's commit, where it has one, is read instead."""

    path: str
    name: str | None = None
    split: str | None = None
    revision: str | None = None

    def load(self) -> Any:
        from peftbench.core.hub_lock import Asset, read_dataset, revision_to_read

        return read_dataset(self, revision_to_read(Asset("dataset", self.path, self.revision)))

    @classmethod
    def of(cls, hub: DictConfig, split: str | None = None) -> HubLoad:
        """The call a task entry's hub mapping (`{path, name, split?, revision?}`) makes; `split` where it has none."""
        return cls(hub.path, hub.get("name"), hub.get("split", split), hub.get("revision"))

    def __str__(self) -> str:
        return f"{self.path}{'/' + self.name if self.name else ''}{':' + self.split if self.split else ''}"


@dataclass
class Evaluation:
    """A task's metrics on its eval splits, and one row per evaluated example (the predictions sidecar):
    `split` (the eval split or set), `id` (the row's index in it), `prediction`, `reference`, `correct`
    (None where the metric is not a per-example hit, as a regression's), and `text` for generated answers."""

    metrics: dict[str, float]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    generated_tokens_per_second: float | None = None  # generation tasks: this process's rate


@dataclass
class TaskData:
    """Tokenized train split, the eval splits (metric-key suffix -> split), and how they were made."""

    train: Dataset
    evals: dict[str, Dataset]
    protocol: dict[str, Any] = field(default_factory=dict)
    processor: Any = None  # the tokenizer or image processor, for tasks that evaluate by generating
    held_out: Dataset | None = None  # training rows kept out of training (`task.held_out`), tokenized as training


class Task:
    """Base class of a task family. `cfg` is the task's YAML entry; `processor` is the model's tokenizer
    (modality "text") or image processor ("image")."""

    family: ClassVar[str]
    model_kind: ClassVar[str] = "sequence-classification"  # a key of peftbench.bench.models.KINDS
    modality: ClassVar[str] = "text"
    fresh_head: ClassVar[bool] = True  # a new task head, trained with the adapter (not for causal LMs)
    # sizes every family reads from its YAML: a positive integer or null; `required_sizes` may not be null
    sizes: ClassVar[tuple[str, ...]] = (
        "max_train_samples",
        "max_eval_samples",
        "max_seq_length",
        "eval_max_seq_length",
    )
    required_sizes: ClassVar[tuple[str, ...]] = ()
    holds_out: ClassVar[bool] = False  # whether the family can keep `task.held_out` training rows aside

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def primary(self) -> str:
        return self.cfg.primary

    def validate(self, data: str) -> None:
        """One-line ConfigErrors for a bad task entry or an unavailable data source; families extend it."""
        for key in self.sizes:
            value = self.cfg.get(key)
            if value is None and key not in self.required_sizes:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                valid = "a positive integer" if key in self.required_sizes else "a positive integer or null"
                raise ConfigError(f"task.{key}={value!r} is not valid; give {valid}")

    def prepare(self, data: str, processor: Any, seed: int = 0) -> TaskData:
        """Load and preprocess the splits; `seed` drives any randomness of the training data (augmentation)."""
        raise NotImplementedError

    def hub_loads(self) -> list[HubLoad]:
        """Every `load_dataset` call the task makes under data=hub (what prefetch repeats)."""
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

    def evaluate(self, trainer: Trainer, data: TaskData) -> Evaluation:
        """The task's metrics on every eval split of `data` for the trained model in `trainer`, and the
        per-example predictions behind them. Under several processes every process gets the same result,
        computed once over the whole eval set."""
        raise NotImplementedError


class ClassificationTask(Task):
    """A task scored from the logits of a classification (or 1-output regression) head, with `cfg.metrics`."""

    regression = False

    def decide(self, logits: np.ndarray) -> np.ndarray:
        """The predicted label of each row (the value itself for a 1-output regression head)."""
        return logits.reshape(-1) if self.regression else logits.argmax(axis=-1)

    def score(self, logits: np.ndarray, references: np.ndarray, suffix: str = "") -> dict[str, float]:
        from peftbench.tasks.metrics import METRICS

        predicted = self.decide(np.asarray(logits))
        return {f"{m}{suffix}": METRICS[m](predicted, np.asarray(references)) for m in self.cfg.metrics}

    def evaluate(self, trainer: Trainer, data: TaskData) -> Evaluation:
        metrics: dict[str, float] = {}
        rows: list[dict[str, Any]] = []
        for suffix, split in data.evals.items():
            prediction = trainer.predict(split)  # gathered over processes, each example once
            logits = prediction.predictions
            logits = np.asarray(logits[0] if isinstance(logits, tuple) else logits)
            references = np.asarray(prediction.label_ids)
            metrics.update(self.score(logits, references, suffix))
            predicted = self.decide(logits)
            rows += [
                {"split": suffix or "eval", "id": i, "prediction": p.item(), "reference": r.item(),
                 "correct": None if self.regression else bool(p == r)}
                for i, (p, r) in enumerate(zip(predicted, references, strict=True))
            ]  # fmt: skip
        return Evaluation(metrics, rows)


TASKS: Registry[type[Task]] = Registry(
    kind="task",
    base=Task,
    key="family",
    package="peftbench.tasks",
    skip={"base", "generation", "metrics", "offline"},
    group="peftbench.tasks",
    make=lambda cls: cls,
)
# class decorator: tasks whose YAML says `family: <cls.family>` are built by `cls`
register_family = TASKS.register


def build_task(cfg: DictConfig) -> Task:
    """The task of a conf/task entry, built by its family (`task.module=` imports an outside family first)."""
    return TASKS.get(cfg.get("family"), cfg.get("module"), what="task family")(cfg)


def classifier_head(num_labels: int, pad_token_id: int | None = None) -> dict[str, Any]:
    """Config values of a fresh classification head of `num_labels` outputs (1 = regression)."""
    head: dict[str, Any] = {"num_labels": num_labels, "pad_token_id": pad_token_id}
    if num_labels == 1:
        head["problem_type"] = "regression"
    return head
