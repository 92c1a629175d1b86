"""What the causal-LM tasks share: prompt + answer rows, the loss on the answer (or the whole text), generation.

A training row is the text `prompt + target_separator + target`, tokenized as one string as the reference
codes do (GOAT's `x + " " + y`, LLM-Adapters' full prompt), then EOS. With `train_on_inputs: false` (GOAT,
MetaMath) the labels are -100 on the first len(tokenize(prompt)) tokens, so the loss is the answer's; with
`true` (LLM-Adapters' default) the loss covers the whole text. The prompt may have its own training template
(`train_prompt`: LLM-Adapters trains and evaluates with different whitespace). Evaluation generates from the
prompt alone, never cut (left-padded, greedy unless `generation.num_beams` says otherwise; without the
tokenizer's BOS when `generation.add_special_tokens` is false, as GOAT's commonsense evaluation) and hands the
decoded text to the task. `held_out: {rows, seed}` keeps training rows out of training as the references'
`train_test_split(test_size=rows, shuffle=True, seed=seed)` does (LLM-Adapters' and DoRA's `val_set_size`,
GOAT's commonsense loader); their ids go into the record, and `trainer.val_loss_every` scores them (bench.train).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from datasets import Dataset
from peftbench.core.errors import ConfigError
from peftbench.core.merging import merged_adapters
from peftbench.core.validation import check_choice
from peftbench.tasks.base import Evaluation, Task, TaskData
from transformers import (
    DataCollatorForSeq2Seq,
    GenerationConfig,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

if TYPE_CHECKING:
    from transformers import Trainer

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids a tokenizer puts before any text on its own (Llama's <s>, BERT's [CLS]; none for SmolLM2)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def end_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """EOS, or a BERT-style tokenizer's [SEP] when it has no EOS (the tiny test models)."""
    token = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if token is None:
        raise ConfigError(f"tokenizer {type(tokenizer).__name__} has no EOS or SEP token to end an answer with")
    return token


class PromptEncoder:
    """Token ids of prompts and of prompt + answer rows for one tokenizer."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int, train_on_inputs: bool = False, separator: str = ""
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.train_on_inputs = train_on_inputs
        self.separator = separator
        self.prefix = special_prefix(tokenizer)
        self.eos = end_token_id(tokenizer)

    def _ids(self, text: str) -> list[int]:
        return self.prefix + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt(self, text: str, special: bool = True) -> list[int]:
        """A generation prompt's ids, whole: cutting it would drop the BOS or the question. `special=False`: without
        the tokenizer's own leading tokens (GOAT generates from `tokenizer(..., add_special_tokens=False)`)."""
        return self._ids(text) if special else self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def example(self, prompt: str, target: str) -> dict[str, list[int]]:
        """input_ids, attention_mask and labels (-100 on the prompt unless train_on_inputs), cut at max_length."""
        ids = (self._ids(prompt + self.separator + target) + [self.eos])[: self.max_length]
        masked = 0 if self.train_on_inputs else min(len(self._ids(prompt)), len(ids))
        labels = [IGNORE_INDEX] * masked + ids[masked:]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def generation_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT or injected wrapper (adapters in place), which has `generate`.
    A prompt-learning PEFT model (prefix tuning) stays wrapped: its prefix enters through its own `generate`."""
    config = getattr(model, "active_peft_config", None)
    if config is not None and config.is_prompt_learning:
        return model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class StopAtPattern(StoppingCriteria):
    """Mark a sequence finished once its generated text holds the task's stop pattern (the end of its answer).

    Only the last `window` tokens are decoded at each step, so the check costs the same at every length; a
    match there is a match in the whole text, so a sequence never stops before its answer has ended."""

    def __init__(self, pattern: re.Pattern[str], decode: Callable[[list[int]], str], prompt_width: int) -> None:
        self.pattern, self.decode, self.prompt_width, self.window = pattern, decode, prompt_width, 24

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        tails = input_ids[:, max(self.prompt_width, input_ids.shape[1] - self.window) :].tolist()
        done = [self.pattern.search(self.decode(tail)) is not None for tail in tails]
        return torch.tensor(done, device=input_ids.device)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: list[list[int]],
    pad_id: int,
    eos_id: int,
    settings: dict[str, Any],
    bf16: bool = False,
    stop: tuple[re.Pattern[str], Callable[[list[int]], str]] | None = None,
    merge: bool = False,
) -> tuple[list[list[int]], int]:
    """(the generated ids, prompt excluded and cut at EOS, for each prompt in order; the tokens generated).

    Deterministic. Prompts are batched by length (less padding) and put back in order. With `stop` (a pattern
    and the tokenizer's decode), greedy decoding ends a batch once every sequence has finished its answer
    rather than at max_new_tokens; beam search ends at EOS (its beams would need the pattern per beam). With
    `merge`, the adapters are folded into their fp32 base weights while generating (`peftbench.core.merging`).
    """
    net = generation_model(model)
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    beams = int(settings["num_beams"])
    config = GenerationConfig(
        max_new_tokens=int(settings["max_new_tokens"]), do_sample=False, num_beams=beams,
        pad_token_id=pad_id, eos_token_id=eos_id, cache_implementation=settings.get("cache_implementation"),
    )  # fmt: skip
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else None
    outputs: list[list[int]] = [[] for _ in prompts]
    generated = 0
    batch = int(settings["batch_size"])
    order = (
        sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        if settings.get("sort_by_length", True)
        else list(range(len(prompts)))
    )
    merging = merged_adapters(model) if merge else contextlib.nullcontext()
    try:
        with merging:
            for start in range(0, len(order), batch):
                chunk = order[start : start + batch]
                width = max(len(prompts[i]) for i in chunk)
                ids = torch.tensor([[pad_id] * (width - len(prompts[i])) + prompts[i] for i in chunk], device=device)
                mask = torch.tensor(
                    [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chunk], device=device
                )
                criteria = None
                if stop is not None and beams == 1:
                    criteria = StoppingCriteriaList([StopAtPattern(stop[0], stop[1], width)])
                with autocast or contextlib.nullcontext():
                    result = net.generate(
                        input_ids=ids, attention_mask=mask, generation_config=config, stopping_criteria=criteria
                    )
                for index, row in zip(chunk, result[:, width:].tolist(), strict=True):
                    row = row[: row.index(eos_id)] if eos_id in row else row
                    while criteria is not None and row and row[-1] == pad_id:  # a stopped sequence is padded after
                        row.pop()
                    outputs[index] = row
                    generated += len(row)
    finally:
        net.train(was_training)
    return outputs, generated


def cut_at_stop(text: str, pattern: re.Pattern[str] | None) -> str:
    """The text up to the end of its answer (the stop pattern's first match), what the task scores."""
    match = pattern.search(text) if pattern is not None else None
    return text[: match.end()] if match else text


def hold_out(rows: Dataset, count: int, seed: int) -> tuple[Dataset, Dataset, list[int]]:
    """(the rows left to train on, the held-out rows, their indices in `rows`): datasets'
    `train_test_split(test_size=count, shuffle=True, seed=seed)`, the call LLM-Adapters (finetune.py:254-257),
    DoRA (commonsense_reasoning/finetune.py:288-291) and GOAT (goat/peta/tasks/data.py:482) make, so the same file
    in the same order gives the same held-out rows."""
    if count >= len(rows):
        raise ConfigError(f"task.held_out.rows={count} leaves no training row of {len(rows)}; give fewer rows")
    indexed = rows.add_column("_held_out_row", list(range(len(rows))))
    split = indexed.train_test_split(test_size=count, shuffle=True, seed=seed)
    ids = [int(i) for i in split["test"]["_held_out_row"]]
    return split["train"].remove_columns("_held_out_row"), split["test"].remove_columns("_held_out_row"), ids


def check_held_out(value: Any) -> None:
    """`task.held_out`: null, or {rows: a positive integer, seed: an integer >= 0}."""
    if value is None:
        return
    keys = set(value) if hasattr(value, "keys") else set()
    rows, seed = (value.get("rows"), value.get("seed")) if keys == {"rows", "seed"} else (None, None)
    if not (isinstance(rows, int) and not isinstance(rows, bool) and rows > 0) or not (
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
    ):
        raise ConfigError(f"task.held_out={value!r} is not valid; give null or {{rows: 120, seed: 42}}")


def check_generation_settings(cfg: Any) -> None:
    settings = cfg.get("generation")
    for key in ("max_new_tokens", "num_beams", "batch_size"):
        value = None if settings is None else settings.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"task.generation.{key}={value!r} is not valid; give a positive integer")
    for key in ("stop_early", "sort_by_length", "merge_adapters", "add_special_tokens"):
        if not isinstance(settings.get(key, True), bool):
            raise ConfigError(f"task.generation.{key}={settings.get(key)!r} is not valid; give true or false")
    check_choice("task.generation.cache_implementation", settings.get("cache_implementation"), [None, "static"])


class GenerativeTask(Task):
    """A task learnt as prompt -> answer text by a causal LM and scored on what it generates.

    Subclasses give the training rows and the eval sets as (prompt, target/reference), `score_texts` (the
    metrics of a set) and `answer` (the answer the primary metric reads from one output, for the sidecar).
    Under several processes each generates a share of the prompts and the texts are gathered in order, so the
    eval set is generated once.
    """

    model_kind = "causal-lm"
    fresh_head = False
    required_sizes = ("max_seq_length",)  # prompts and answers are cut to it: no default length
    holds_out = True

    def validate(self, data: str) -> None:
        super().validate(data)
        check_generation_settings(self.cfg)
        check_held_out(self.cfg.get("held_out"))
        if not isinstance(self.cfg.get("train_on_inputs"), bool):
            raise ConfigError(
                f"task.train_on_inputs={self.cfg.get('train_on_inputs')!r} is not valid; give true or false"
            )

    def collator(self, processor: PreTrainedTokenizerBase) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return DataCollatorForSeq2Seq(processor, padding=True, label_pad_token_id=IGNORE_INDEX)

    def format_prompt(self, **fields: str) -> str:
        """The evaluation prompt (`prompt`)."""
        return self.cfg.prompt.format(**fields)

    def format_train_prompt(self, **fields: str) -> str:
        """The training prompt: `train_prompt` where the reference trains with another template, else `prompt`."""
        return (self.cfg.get("train_prompt") or self.cfg.prompt).format(**fields)

    def splits(self, data: str, encoder: PromptEncoder) -> tuple[Dataset, dict[str, Dataset], dict[str, Any]]:
        """(train rows with `prompt`, `target`; eval sets name -> rows with `prompt`, `reference`; protocol).

        The encoder is there for selections that count tokens (GOAT's GSM8K subset)."""
        raise NotImplementedError

    def score_texts(self, name: str, outputs: list[str], references: list[str]) -> dict[str, float]:
        raise NotImplementedError

    def prepare(self, data: str, processor: PreTrainedTokenizerBase, seed: int = 0) -> TaskData:
        encoder = PromptEncoder(
            processor, self.cfg.max_seq_length, bool(self.cfg.train_on_inputs), self.cfg.get("target_separator") or ""
        )
        train, evals, protocol = self.splits(data, encoder)
        held_out = None
        if self.cfg.get("held_out") is not None:  # before any cap: the references split the whole file
            rows, seed = int(self.cfg.held_out.rows), int(self.cfg.held_out.seed)
            train, held_out, ids = hold_out(train, rows, seed)
            protocol["held_out"] = {"rows": rows, "seed": seed, "ids": ids}
        if self.cfg.max_train_samples is not None and len(train) > self.cfg.max_train_samples:
            # a task whose reference takes the first rows in file order (GOAT's GSM8K subset) says so
            rows = train if self.cfg.get("train_selection") == "first" else train.shuffle(seed=0)
            train = rows.select(range(self.cfg.max_train_samples))
        if self.cfg.max_eval_samples is not None:
            evals = {k: v.select(range(min(self.cfg.max_eval_samples, len(v)))) for k, v in evals.items()}
        protocol["train_rows"] = len(train)
        protocol["eval_rows"] = {name or "eval": len(rows) for name, rows in evals.items()}
        train_ids = train.map(
            lambda row: encoder.example(row["prompt"], row["target"]),
            remove_columns=train.column_names, desc=f"tokenize {self.name}",
        )  # fmt: skip
        if held_out is not None:  # scored as training rows are (the references' val_set: same template, same labels)
            held_out = held_out.map(
                lambda row: encoder.example(row["prompt"], row["target"]), remove_columns=held_out.column_names
            )
        special = bool(self.cfg.generation.get("add_special_tokens", True))
        evals = {
            name: rows.map(lambda row: {"prompt_ids": encoder.prompt(row["prompt"], special)})
            for name, rows in evals.items()
        }
        return TaskData(train=train_ids, evals=evals, protocol=protocol, processor=processor, held_out=held_out)

    def answer(self, name: str, output: str) -> str | None:
        """The answer the primary metric reads from one generated output (None: no answer)."""
        raise NotImplementedError

    def stop_pattern(self) -> re.Pattern[str] | None:
        """Where an answer ends (GSM8K: its "#### N" line): generation stops there and scoring reads no further,
        so stopping early changes no score. None: at EOS or max_new_tokens."""
        return None

    def evaluate(self, trainer: Trainer, data: TaskData) -> Evaluation:
        tokenizer = data.processor
        eos = end_token_id(tokenizer)
        settings = dict(self.cfg.generation)
        rank, world = trainer.args.process_index, trainer.args.world_size
        pattern = self.stop_pattern()
        stop = None if pattern is None or not settings.get("stop_early", True) else (pattern, tokenizer.decode)
        # FSDP shards the weights a merge would write to: there the adapters stay unmerged
        merge = settings.get("merge_adapters", True) and not trainer.is_fsdp_enabled
        metrics: dict[str, float] = {}
        predictions: list[dict[str, Any]] = []
        started, generated = time.perf_counter(), 0
        for name, rows in data.evals.items():
            prompts = rows["prompt_ids"]
            mine = list(range(rank, len(prompts), world))
            ids, count = generate(
                trainer.model, [prompts[i] for i in mine], tokenizer.pad_token_id, eos, settings, trainer.args.bf16,
                stop, merge,
            )  # fmt: skip
            generated += count
            texts = [cut_at_stop(t, pattern) for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
            texts = gather_in_order(texts, mine, len(prompts), world)
            references = rows["reference"]
            metrics.update(self.score_texts(name, texts, references))
            for i, (text, reference) in enumerate(zip(texts, references, strict=True)):
                answer = self.answer(name, text)
                predictions.append({"split": name or "eval", "id": i, "prediction": answer, "reference": reference,
                                    "correct": answer == reference, "text": text})  # fmt: skip
        seconds = time.perf_counter() - started
        return Evaluation(metrics, predictions, generated_tokens_per_second=generated / max(seconds, 1e-9))


def gather_in_order(texts: list[str], indices: list[int], total: int, world: int) -> list[str]:
    """Every process's texts, placed at their prompts' indices: the whole set, in order, on every process."""
    if world == 1:
        return texts
    import torch.distributed as dist

    shares: list[list[tuple[int, str]]] = [[] for _ in range(world)]
    dist.all_gather_object(shares, list(zip(indices, texts, strict=True)))
    ordered: list[str | None] = [None] * total
    for share in shares:
        for index, text in share:
            ordered[index] = text
    assert all(t is not None for t in ordered), "a process's share of the generations is missing"
    return ordered  # type: ignore[return-value]
