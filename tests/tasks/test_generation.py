"""Prompt masking, greedy determinism and the three tracks end to end offline on tiny models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import peftbench.bench.model_cache
import peftbench.bench.run
import pytest
import torch
from omegaconf import OmegaConf
from peftbench.bench.models import load_model, load_tokenizer
from peftbench.core.paths import CONF_DIR
from peftbench.tasks.generation import IGNORE_INDEX, PromptEncoder, generate

from tests.conftest import accuracy_of, compose_run, sidecar

TINY_LLAMA = OmegaConf.load(CONF_DIR / "model" / "tiny-llama.yaml")
SMOLLM2 = OmegaConf.load(CONF_DIR / "model" / "smollm2-135m.yaml")
LLM_SMOKE = [
    "model=tiny-llama", "task.max_eval_samples=4", "task.generation.max_new_tokens=6", "task.max_seq_length=160"
]  # fmt: skip


def test_prompt_tokens_are_masked_and_answer_ends_with_eos() -> None:
    tokenizer = load_tokenizer(TINY_LLAMA)
    encoder = PromptEncoder(tokenizer, max_length=128, separator=" ")
    prompt, target = "### Instruction:\nhow many legs has a cat\n\n### Response:\n", "four legs #### 4"
    example = encoder.example(prompt, target)
    prompt_ids = encoder.prompt(prompt)
    n = len(prompt_ids)
    # one string, as GOAT tokenizes x + " " + y: the prompt's tokens open it, the loss starts after them
    whole = [tokenizer.cls_token_id, *tokenizer(prompt + " " + target, add_special_tokens=False)["input_ids"]]
    assert example["input_ids"] == [*whole, tokenizer.sep_token_id]
    assert example["input_ids"][:n] == prompt_ids  # training sees the same prompt tokens as generation
    assert example["labels"] == [IGNORE_INDEX] * n + example["input_ids"][n:]
    assert prompt_ids[0] == tokenizer.cls_token_id  # the tokenizer's own leading special token is kept
    short = PromptEncoder(tokenizer, max_length=n + 2).example(prompt, target)
    assert len(short["input_ids"]) == len(short["labels"]) == n + 2


def test_train_on_inputs_puts_the_loss_on_the_whole_text() -> None:
    tokenizer = load_tokenizer(TINY_LLAMA)
    example = PromptEncoder(tokenizer, max_length=128, train_on_inputs=True).example("Q: a cat?\n", "four")
    assert example["labels"] == example["input_ids"]  # LLM-Adapters' default: no masking


def test_generation_prompts_are_never_cut() -> None:
    tokenizer = load_tokenizer(TINY_LLAMA)
    long = "a word " * 200
    ids = PromptEncoder(tokenizer, max_length=16).prompt(long)
    assert len(ids) > 200 and ids[0] == tokenizer.cls_token_id  # the BOS-like token and the start are kept


def test_goats_generation_prompt_has_no_bos_and_held_out_rows_leave_training(tmp_path: Path) -> None:
    """`generation.add_special_tokens: false` is GOAT's `tokenizer(prompts, add_special_tokens=False)`
    (llama_dataset_preprocessing.py:460); `held_out` rows leave the training rows, tokenized as training rows."""
    from peftbench.tasks.base import build_task

    tokenizer = load_tokenizer(TINY_LLAMA)
    overrides = ["task=cs_arc_c", "task.max_eval_samples=2", "task.held_out={rows: 8, seed: 42}"]
    with_bos = build_task(compose_run(tmp_path, *LLM_SMOKE, *overrides).task).prepare("offline", tokenizer)
    cfg = compose_run(tmp_path, *LLM_SMOKE, *overrides, "task.generation.add_special_tokens=false")
    data = build_task(cfg.task).prepare("offline", tokenizer)
    bos, plain = with_bos.evals["cs_arc_c"]["prompt_ids"], data.evals["cs_arc_c"]["prompt_ids"]
    assert all(ids[0] == tokenizer.cls_token_id and ids[1:] == other for ids, other in zip(bos, plain, strict=True))
    assert plain[0][0] != tokenizer.cls_token_id
    assert len(data.held_out) == 8 and data.protocol["train_rows"] + 8 == round(0.7 * 299)
    assert data.held_out[0]["labels"] == data.held_out[0]["input_ids"]  # LLM-Adapters' loss on the whole text
    ids = data.protocol["held_out"]["ids"]
    assert len(set(ids)) == 8 and data.protocol["held_out"]["seed"] == 42


def test_greedy_generation_is_deterministic() -> None:
    torch.manual_seed(0)
    model = load_model(TINY_LLAMA, "causal-lm")
    prompts = [[101, 2054, 2003], [101, 7592, 2088, 2129, 2024], [101, 2748]]
    settings = {"max_new_tokens": 12, "num_beams": 1, "batch_size": 2}
    first, _ = generate(model, prompts, pad_id=0, eos_id=102, settings=settings)
    second, _ = generate(model, prompts, pad_id=0, eos_id=102, settings=settings)
    assert first == second
    assert [len(ids) for ids in first] == [12, 12, 12] or any(102 not in ids for ids in first)


def test_same_model_same_accuracy_twice(tmp_path: Path) -> None:
    """The whole pipeline twice with one seed: the same generations, so the same metrics."""
    first = peftbench.bench.run.run(compose_run(tmp_path / "a", *LLM_SMOKE, "task=gsm8k"))
    second = peftbench.bench.run.run(compose_run(tmp_path / "b", *LLM_SMOKE, "task=gsm8k"))
    assert first["status"] == second["status"] == "ok", first["error"]
    assert first["metrics"] == second["metrics"]
    assert first["final_loss"] == second["final_loss"]


def test_gsm8k_pipeline_end_to_end(store: Path) -> None:
    record = peftbench.bench.run.run(compose_run(store, *LLM_SMOKE, "task=gsm8k"))
    assert record["status"] == "ok", record["error"]
    assert set(record["metrics"]) == {"accuracy", "accuracy_flexible", "accuracy_goat", "primary"}
    assert record["metrics"]["primary"] == record["metrics"]["accuracy"]
    assert record["protocol"]["name"] == "offline" and record["protocol"]["source_rows"] == 1319
    assert record["protocol"]["train_rows"] + round(0.3 * 1319) == 1319
    assert record["head_params"] == 0  # a causal LM gets no fresh head
    rows = sidecar(store, record)["eval"]  # the sidecar: one row per problem, scored as the metric scores it
    assert len(rows) == record["protocol"]["eval_rows"]["eval"]
    assert accuracy_of(rows) == pytest.approx(record["metrics"]["accuracy"])
    assert all(isinstance(row["text"], str) and row["reference"] for row in rows)  # generated text is kept


def test_commonsense_trains_once_and_records_eight_sets(store: Path) -> None:
    record = peftbench.bench.run.run(
        compose_run(store, *LLM_SMOKE, "task=commonsense", "task.max_train_samples=64", "task.generation.num_beams=1")
    )
    assert record["status"] == "ok", record["error"]
    sets = ["cs_boolq", "cs_piqa", "cs_siqa", "cs_hellaswag", "cs_winogrande", "cs_arc_e", "cs_arc_c", "cs_obqa"]
    metrics = {f"{s}/{m}" for s in sets for m in ("accuracy", "accuracy_strict")}
    assert set(record["metrics"]) == metrics | {"accuracy", "accuracy_strict", "primary"}
    for metric in ("accuracy", "accuracy_strict"):
        per_set = [record["metrics"][f"{s}/{metric}"] for s in sets]
        assert record["metrics"][metric] == pytest.approx(sum(per_set) / 8)
    assert record["protocol"]["eval_rows"] == dict.fromkeys(sets, 4)
    assert len(list((store / "adhoc").glob("*.json"))) == 1  # one record for the 8 sets
    by_set = sidecar(store, record)
    assert sorted(by_set) == sorted(sets) and all(len(rows) == 4 for rows in by_set.values())
    for name, rows in by_set.items():
        assert accuracy_of(rows) == pytest.approx(record["metrics"][f"{name}/accuracy"])


def test_one_commonsense_set(store: Path) -> None:
    record = peftbench.bench.run.run(compose_run(store, *LLM_SMOKE, "task=cs_arc_c"))
    assert record["status"] == "ok", record["error"]
    assert set(record["metrics"]) == {"accuracy", "accuracy_strict", "primary"}
    assert record["protocol"]["source_rows"] == {"cs_arc_c": 299}


@pytest.mark.parametrize(("task", "method"), [("img_fashion_mnist", "lora"), ("img_digits", "goat")])
def test_image_pipeline_end_to_end(store: Path, task: str, method: str) -> None:
    overrides = ["model=tiny-clip", f"task={task}", f"method={method}", "task.max_train_samples=64"]
    record = peftbench.bench.run.run(compose_run(store, *overrides, "task.max_eval_samples=40"))
    assert record["status"] == "ok", record["error"]
    assert set(record["metrics"]) >= {"accuracy", "primary"}
    assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
    assert record["head_params"] == 32 * 10 + 10  # the fresh linear head: hidden 32 -> 10 classes
    assert record["protocol"]["eval_rows"] == {"eval": 40}
    rows = sidecar(store, record)["eval"]
    assert len(rows) == 40 and accuracy_of(rows) == pytest.approx(record["metrics"]["accuracy"])
    assert {type(row["prediction"]) for row in rows} == {int}


@pytest.mark.slow  # ~30 s: the GGUF dequantisation and conversion into a fresh cache
def test_smollm2_loads_from_the_package_and_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path))
    folder = peftbench.bench.model_cache.converted_folder(SMOLLM2)
    assert folder.parent == tmp_path / "models" and (folder / peftbench.bench.model_cache.COMPLETE).exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging folder left

    def no_gguf_parse(*args: object) -> None:
        raise AssertionError("the GGUF file was parsed again")

    monkeypatch.setattr(peftbench.bench.model_cache, "_convert", no_gguf_parse)
    started = time.perf_counter()
    model = load_model(SMOLLM2, "causal-lm")
    seconds = time.perf_counter() - started
    assert seconds < 10, f"second load took {seconds:.1f} s"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert json.loads((folder / "config.json").read_text()).get("quantization_config") is None
    tokenizer = load_tokenizer(SMOLLM2)
    assert tokenizer.decode(tokenizer("The answer is 42.")["input_ids"]) == "The answer is 42."
