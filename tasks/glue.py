"""GLUE (Wang et al. 2018): the 8 tasks the PEFT papers report, with their official metrics.

Hub protocol (the papers'): fit on `train`, report on `validation` (MNLI: matched and mismatched).
The text fields go to the tokenizer as a sentence pair, or through `input_template` as one string (GOAT's
train_nlu.py feeds "<instruction>: {s1}\n{s2}\nresult: ", goat/peta/tasks/data.py:71-218).
Inputs are truncated to `max_seq_length` tokens; an entry's optional `eval_max_seq_length` truncates the eval
splits at another length (GOAT trains at 128 and evaluates at the tokenizer's 512, goat/train_nlu.py:103,243-250).
Metrics: CoLA Matthews corr.; STS-B Pearson and Spearman with a 1-output regression head; MRPC and
QQP F1 and accuracy; the others accuracy. Offline protocol: see `tasks/offline.py`.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from peftbench.core.errors import ConfigError
from peftbench.core.validation import check_choice
from peftbench.tasks.base import ClassificationTask, HubLoad, TaskData, classifier_head, register_family
from peftbench.tasks.metrics import METRICS
from peftbench.tasks.offline import load_split, require_offline, tasks_with_offline
from transformers import PreTrainedTokenizerBase


@register_family
class Glue(ClassificationTask):
    family = "glue"

    @property
    def regression(self) -> bool:
        return self.cfg.num_labels == 1

    def validate(self, data: str) -> None:
        super().validate(data)
        cfg = self.cfg
        for metric in cfg.metrics:
            check_choice("metric", metric, METRICS)
        check_choice("primary metric", cfg.primary, list(cfg.metrics))
        if not isinstance(cfg.num_labels, int) or cfg.num_labels < 1:
            raise ConfigError(f"task.num_labels={cfg.num_labels!r} is not valid; give 1 (regression) or more")
        if data == "offline":
            require_offline(cfg, tasks_with_offline("glue_"))

    def hub_loads(self) -> list[HubLoad]:
        return [HubLoad.of(self.cfg.hub)]  # the config's splits together (test included)

    def model_head(self, processor: PreTrainedTokenizerBase) -> dict[str, Any]:
        return classifier_head(self.cfg.num_labels, processor.pad_token_id)

    def _raw_splits(self, data: str) -> tuple[Dataset, dict[str, Dataset], dict[str, Any]]:
        cfg = self.cfg
        if data == "offline":
            train, held_out, protocol = load_split(cfg, tasks_with_offline("glue_"))
            return train, {"": held_out}, protocol
        (load,) = self.hub_loads()
        hub = load.load()
        evals = {suffix: hub[split] for split, suffix in cfg.eval_splits.items()}
        protocol = {
            "name": "paper",
            "description": f"fit on {cfg.train_split}, report on {', '.join(cfg.eval_splits)}",
            "source": f"{cfg.hub.path}/{cfg.hub.name}",
        }
        return hub[cfg.train_split], evals, protocol

    def prepare(self, data: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> TaskData:
        cfg = self.cfg
        train, evals, protocol = self._raw_splits(data)
        if cfg.max_train_samples is not None:
            train = train.shuffle(seed=0).select(range(min(cfg.max_train_samples, len(train))))
        if cfg.max_eval_samples is not None:
            evals = {k: v.select(range(min(cfg.max_eval_samples, len(v)))) for k, v in evals.items()}
        protocol["train_rows"] = len(train)
        protocol["eval_rows"] = {suffix or "eval": len(v) for suffix, v in evals.items()}
        evaluated_at = self.cfg.get("eval_max_seq_length") or self.cfg.max_seq_length
        return TaskData(
            train=self._tokenize(train, tokenizer),
            evals={suffix: self._tokenize(v, tokenizer, evaluated_at) for suffix, v in evals.items()},
            protocol=protocol,
        )

    def _tokenize(self, rows: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None) -> Dataset:
        """Encode `rows`, truncated to `max_length` tokens (default: the task's max_seq_length)."""
        max_length = max_length or self.cfg.max_seq_length
        fields = list(self.cfg.text_fields)
        regression = self.cfg.num_labels == 1
        template = self.cfg.get("input_template")

        def encode(batch: dict[str, list]) -> dict[str, list]:
            if template is None:  # a sentence pair, as the tokenizer joins them
                texts = [batch[f] for f in fields]
            else:  # one string from a template over the text fields (GOAT's instruction-prefixed inputs)
                texts = [
                    [
                        template.format(**dict(zip(fields, values, strict=True)))
                        for values in zip(*(batch[f] for f in fields), strict=True)
                    ]
                ]
            encoded = tokenizer(*texts, truncation=True, max_length=max_length)
            encoded["labels"] = [float(x) for x in batch["label"]] if regression else batch["label"]
            return encoded

        return rows.map(encode, batched=True, remove_columns=rows.column_names, desc=f"tokenize {self.name}")
