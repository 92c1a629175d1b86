"""Each paper sweep runs its paper's protocol: docs/protocols.md, value by value, against the resolved configs;
per-point protocol rules; evaluation during training with best and final; the report's choice between them."""

from __future__ import annotations

import re
from pathlib import Path

import peftbench.bench.run
import pytest
import torch
import yaml
from datasets import Dataset
from omegaconf import OmegaConf
from peft import get_peft_model_state_dict
from peftbench.bench.config import CONF_DIR, compute_run_id, experiment_config, group_choices
from peftbench.bench.grid import grid_axes, grid_points, sweep_config
from peftbench.bench.models import load_classifier, load_model, load_tokenizer
from peftbench.bench.paper import paper_report
from peftbench.bench.paper_tables import load_paper_table
from peftbench.bench.run import check_config, identify
from peftbench.bench.train import BenchTrainer, optimizer_steps
from peftbench.core.errors import ConfigError
from peftbench.core.store import RunStore
from peftbench.methods.base import RunContext
from peftbench.methods.injection import WEIGHTS, InjectedModel
from peftbench.tasks.base import build_task
from safetensors.torch import load_file
from transformers import TrainerCallback

from tests.conftest import compose_run
from tests.helpers import TINY, TINY_LLAMA

DOC = CONF_DIR.parent / "docs" / "protocols.md"
NOT_PAPER_SWEEPS = {"demo", "demo_methods", "demo_llm", "demo_llm_gsm8k", "lorahub_upstream", "none"}


def _rows() -> list[tuple[str, str, str, str, str]]:
    """(sweep, setting, point, value, reference) for every table row of the document."""
    rows, sweep = [], None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            sweep = re.split(r"[ ,]", line[3:], maxsplit=1)[0]
        match = re.match(r"^\| `([^`]+)` \| (.*?) \| (.*?) \| (.*?) \|$", line)
        if match and sweep:
            rows.append((sweep, *match.groups()))
    return rows


ROWS = _rows()


def test_every_paper_sweep_has_a_section_with_references() -> None:
    documented = {s for s, *_ in ROWS} | {
        m.group(1) for _, _, point, _, _ in ROWS for m in [re.search(r"sweep=(\w+)", point)] if m
    }
    assert set(group_choices("sweep")) - NOT_PAPER_SWEEPS <= documented
    assert len(ROWS) > 100 and all(reference.strip() for *_, reference in ROWS)


def _resolve(sweep: str, point: str) -> object:
    overrides = dict(item.split("=", 1) for item in point.split() if point.strip() not in ("—", "-"))
    sweep = overrides.pop("sweep", sweep)
    first = grid_points(grid_axes(sweep_config(sweep)))[0]
    cfg = sweep_config(sweep, [f"{k}={v}" for k, v in {**first, **overrides}.items()])
    _, _, axes, _, _, _ = identify(cfg)  # what the run resolves: protocol rules, per-method targets
    return cfg, axes


@pytest.mark.parametrize(("sweep", "setting", "point", "value", "reference"), ROWS)
def test_sweep_runs_the_documented_protocol(sweep: str, setting: str, point: str, value: str, reference: str) -> None:
    cfg, axes = _resolve(sweep, point)
    if setting in axes:
        got = axes[setting]
    else:
        node = OmegaConf.select(cfg, setting)
        got = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    expected = yaml.safe_load(value)
    if isinstance(expected, float) or isinstance(got, float):
        assert got == pytest.approx(expected), (setting, point)
    else:
        assert got == expected, (setting, point)


def test_protocol_rules_merge_in_order_and_reject_bad_keys() -> None:
    cfg = sweep_config("goat_t4", ["method=full", "task=glue_rte"])
    identify(cfg)
    assert cfg.lr == 1e-5 and cfg.trainer.num_train_epochs == 50 and "entails" in cfg.task.input_template
    bad = sweep_config("goat_t4", ["+protocol_rules=[{when: {dataset: x}, set: {lr: 1}}]"])
    with pytest.raises(ConfigError, match="`when` key 'dataset' is not valid; valid keys: method, model, task, rank$"):
        identify(bad)
    bad = sweep_config("goat_t4", ["+protocol_rules=[{when: {rank: '32'}, set: {lr: 1}}]"])
    with pytest.raises(ConfigError, match=r"^protocol_rules: `when` rank '32' is not valid; give an integer or a list"):
        identify(bad)


@pytest.mark.parametrize(
    ("sweep", "point", "rank", "lr"),
    [("subspace_fair", ["method=dora", "rank=4"], 4, 2e-4), ("subspace_fair", ["method=dora", "rank=32"], 32, 1e-4),
     ("subspace_fair_llama3", ["method=lora", "rank=16"], 16, 1e-4),
     ("subspace_fair_llama3", ["method=lora", "rank=32"], 32, 3e-4),
     ("subspace_fair", ["method=lora", "rank=32", "model=llama3-8b"], 32, 3e-4),  # the rule keys on the model
     ("goat_t3", ["method=dora", "rank=32"], 16, 2e-4)],  # a rule that sets the rank: the row's own r 16
)  # fmt: skip
def test_rank_and_model_rules_pick_a_printed_rows_settings(sweep: str, point: list[str], rank: int, lr: float) -> None:
    cfg, axes = _resolve(sweep, " ".join(point))  # the grid's first point, then these values: as a run composes it
    assert (axes["rank"], axes["lr"]) == (rank, pytest.approx(lr))
    if sweep == "goat_t3":  # DoRA README.md:106's r 16 / alpha 32 run, whatever rank the grid point names
        assert cfg.method.lora_alpha == 32
        assert compute_run_id(experiment_config(cfg, axes)) == compute_run_id(
            experiment_config(*_resolve(sweep, "method=dora rank=16"))
        )


def test_a_run_that_evaluates_during_training_records_best_and_final(store: Path) -> None:
    record = peftbench.bench.run.run(compose_run(store, "trainer.eval_every=2", "trainer.max_steps=6", "lr=5e-3"))
    assert record["status"] == "ok", record["error"]
    history = record["eval_history"]
    assert [h["step"] for h in history] == [2, 4, 6]
    assert history[-1]["accuracy"] == record["metrics"]["accuracy"]  # the final evaluation closes the history
    best = max(history, key=lambda h: (h["accuracy"], -h["step"]))
    assert record["best_step"] == best["step"]
    assert record["best_metrics"]["primary"] == record["best_metrics"]["accuracy"] == best["accuracy"]
    once = peftbench.bench.run.run(compose_run(store, "trainer.max_steps=6", "lr=5e-3"))
    assert once["eval_history"] is None and once["best_metrics"] is None  # evaluated once: final only


def _glue_record(method: str, task: str, final: float, best: float) -> dict:
    return {
        "run_id": f"{method}{task}", "sweep": "st", "status": "ok", "method": method, "model": "roberta-base",
        "task": task, "rank": 2, "lr": 1e-4, "seed": 0, "data": "hub",
        "metrics": {"accuracy": final, "primary": final}, "best_metrics": {"accuracy": best, "primary": best},
        "best_step": 100, "config": {},
    }  # fmt: skip


def test_paper_report_takes_best_or_final_as_the_table_says(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.write(_glue_record("lora", "glue_rte", final=0.70, best=0.80))
    subspace = paper_report(tmp_path, "st", "subspace_t2_roberta_base_glue")  # select: best
    lora = subspace[(subspace["Method"] == "LoRA") & (subspace["r"] == "2")].iloc[0]
    assert lora["RTE"] == "80.00 [n/a] (81.59, Δ -1.59)"
    store.write({**_glue_record("lora", "glue_rte", final=0.70, best=0.80), "model": "roberta-large", "rank": 32})
    goat = paper_report(tmp_path, "st", "goat_t4_roberta_large_glue").set_index("Method")  # final
    assert goat.at["LoRA", "RTE"] == "70.00 [n/a] (84.47, Δ -14.47)"


def _gsm8k_record(method: str, lr: float, strict: float, goat: float, rank: int = 8) -> dict:
    return {
        "run_id": f"{method}{lr}{rank}", "sweep": "g", "status": "ok", "method": method, "model": "llama2-7b",
        "task": "gsm8k", "rank": rank, "lr": lr, "seed": 0, "data": "hub", "config": {},
        "metrics": {"accuracy": strict, "accuracy_goat": goat, "primary": strict},
    }  # fmt: skip


def test_goats_gsm8k_tables_compare_goats_rule_at_each_rows_rank_and_lr(tmp_path: Path) -> None:
    """GOAT scored GSM8K with its own rule (accuracy_goat); Table 6's rows are rank-8 runs at one lr each."""
    store = RunStore(tmp_path)
    store.write(_gsm8k_record("goat", 1e-5, strict=0.50, goat=0.55))
    store.write(_gsm8k_record("goat", 5e-5, strict=0.60, goat=0.65))
    store.write(_gsm8k_record("goat", 2e-5, strict=0.58, goat=0.62))
    t6 = paper_report(tmp_path, "g", "goat_t6_lr_sensitivity").set_index(["Method", "r"])["GSM8K"]
    assert list(t6.loc[("GOAT", "8")]) == ["55.00 [n/a] (58.74, Δ -3.74)", "62.00 [n/a] (60.20, Δ +1.80)",
                                           "65.00 [n/a] (62.05, Δ +2.95)"]  # fmt: skip
    t2 = paper_report(tmp_path, "g", "goat_t2_llama2_nlg").set_index("Method")
    assert t2.at["GOAT", "GSM8K"] == "65.00 [n/a] (60.20, Δ +4.80)"  # Table 2: the best lr, GOAT's rule


def test_goat_t3_dora_row_is_the_r16_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    sets = load_paper_table("goat_t3_llama2_commonsense")["columns"]
    for rank, value in ((16, 0.80), (32, 0.70)):
        store.write({
            "run_id": f"dora{rank}", "sweep": "t3", "status": "ok", "method": "dora", "model": "llama2-7b",
            "task": "commonsense", "rank": rank, "lr": 2e-4, "seed": 0, "data": "hub", "config": {},
            "metrics": {**{f"{s}/accuracy": value for s in sets}, "accuracy": value, "primary": value},
        })  # fmt: skip
    shown = paper_report(tmp_path, "t3", "goat_t3_llama2_commonsense").set_index("Method")
    assert shown.at["DoRA†", "r"] == "16" and shown.at["DoRA†", "BoolQ"].startswith("80.00 ")


def test_glue_input_template_makes_one_sequence() -> None:
    from peftbench.bench.models import load_tokenizer
    from peftbench.tasks.base import build_task

    from tests.helpers import TINY

    tokenizer = load_tokenizer(TINY)
    cfg = sweep_config("goat_t4", ["task=glue_rte"])
    identify(cfg)
    task = build_task(cfg.task)
    rows = __import__("datasets").Dataset.from_list([{"sentence1": "A cat.", "sentence2": "An animal.", "label": 0}])
    encoded = task._tokenize(rows, tokenizer)
    expected = tokenizer("determine if the second sentence entails the first sentence: A cat.\nAn animal.\nresult: ")
    assert encoded[0]["input_ids"] == expected["input_ids"]  # one string, not a sentence pair


def test_vit_holdout_is_torch_random_split_and_the_crop_is_random_resized() -> None:
    import numpy as np
    from peftbench.tasks.image import holdout_indices, random_resized_crop
    from PIL import Image

    kept = holdout_indices(100, 0.1, 5000, 0)
    train, _ = torch.utils.data.random_split(range(100), [90, 10], generator=torch.Generator().manual_seed(0))
    assert kept == list(train.indices)
    assert len(holdout_indices(80_000, 0.1, 5000, 0)) == 75_000  # the 5000 cap
    image = Image.fromarray(np.arange(64 * 48 * 3, dtype=np.uint8).reshape(48, 64, 3) % 255)
    rng = np.random.default_rng(0)
    crops = [random_resized_crop(image, 32, (0.9, 1.0), (0.75, 1.3333), rng) for _ in range(5)]
    assert all(c.size == (32, 32) for c in crops)
    assert len({c.tobytes() for c in crops}) > 1  # random, yet seeded: the same RNG state gives the same crops
    again = [random_resized_crop(image, 32, (0.9, 1.0), (0.75, 1.3333), np.random.default_rng(0)) for _ in range(1)]
    assert again[0].tobytes() == crops[0].tobytes()


def test_image_run_with_goats_holdout_and_augmentation(store: Path) -> None:
    record = peftbench.bench.run.run(
        compose_run(
            store, "model=tiny-clip", "task=img_digits", "task.max_train_samples=200", "task.max_eval_samples=20",
            "task.train_holdout={fraction: 0.1, max_rows: 5000, seed: 0}",
            "task.augment={kind: random_resized_crop, scale: [0.9, 1.0], ratio: [0.75, 1.3333]}",
        )
    )  # fmt: skip
    assert record["status"] == "ok", record["error"]
    assert record["protocol"]["train_holdout"] == {"held_out": 20, "seed": 0}
    assert record["protocol"]["train_rows"] == 180


def _adalora_table() -> list[dict[str, str]]:
    """The per-task AdaLoRA table of the Subspace Tuning section: one dict per task, keyed by the header."""
    lines = [line for line in DOC.read_text().splitlines() if line.startswith("| ")]
    header = next(i for i, line in enumerate(lines) if line.startswith("| task | train rows |"))
    names = [cell.strip() for cell in lines[header].strip("|").split("|")]
    rows = []
    for line in lines[header + 1 :]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if not cells[0].startswith("glue_"):
            break
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


ADALORA_ROWS = _adalora_table()


def test_the_adalora_table_covers_the_eight_tasks_with_references() -> None:
    assert [row["task"] for row in ADALORA_ROWS] == [
        "glue_mnli", "glue_sst2", "glue_cola", "glue_qqp", "glue_qnli", "glue_rte", "glue_mrpc", "glue_stsb",
    ]  # fmt: skip
    assert all(
        row["reference (ST NLU/scripts/)"].startswith(f"run_debertav3_{row['task'][5:]}.sh:") for row in ADALORA_ROWS
    )


@pytest.mark.parametrize("row", ADALORA_ROWS, ids=[row["task"] for row in ADALORA_ROWS])
def test_subspace_adalora_points_build_the_scripts_adalora(row: dict[str, str]) -> None:
    """Each task's AdaLoRA point, composed as a run composes it (protocol rules included), builds PEFT's AdaLoraConfig
    with the script's lr, alpha, schedule (in steps, inside the run's own length), orthogonality weight and ranks."""
    tinit, tfinal, delta = (int(v) for v in row["tinit / tfinal / deltaT"].split("/"))
    ranks = [tuple(int(v) for v in pair.split("/")) for pair in row["init_r / target_r at r 2 and r 16"].split(",")]
    for sweep in ("subspace_t2", "subspace_t3", "subspace_t4"):
        for method_name, rank, (init_r, target_r) in [
            ("adalora", 2, ranks[0]), ("adalora", 16, ranks[1]), ("adalora_mpco", 2, ranks[0]),
        ]:  # fmt: skip
            cfg = sweep_config(sweep, [f"method={method_name}", f"task={row['task']}", f"rank={rank}", "lr=2e-5"])
            method, params, axes, _ = check_config(cfg)
            steps = optimizer_steps(int(row["train rows"]), cfg.trainer)
            ctx = RunContext(rank=axes["rank"], lr=axes["lr"], seed=0, target_modules=["query"], head_modules=[],
                             total_steps=steps)  # fmt: skip
            config = method.adalora_config(params, ctx)
            point = (sweep, method_name, rank)
            assert steps == int(row["run steps"]), point
            assert axes["lr"] == pytest.approx(float(row["lr"])), point
            assert config.lora_alpha == int(row["lora_alpha"]), point
            schedule = (config.tinit, config.tfinal, config.deltaT, config.total_step)
            assert schedule == (tinit, tfinal, delta, steps), point
            assert (config.init_r, config.target_r) == (init_r, target_r), point
            orth = float(row["orth_reg_weight"]) if method_name == "adalora" else 0.0
            assert config.orth_reg_weight == pytest.approx(orth), point
            assert cfg.trainer.bf16 is False, point  # the scripts train in fp32


def test_an_added_pad_token_gets_the_mean_embedding_row() -> None:
    """model.pad_with (SingLoRA T2's `[PAD]`): the tokenizer pads with a new token whose input and output rows are the
    mean of the old rows, as LoRA+'s smart_tokenizer_and_embedding_resize; the classifier pads with it."""
    spec = OmegaConf.merge(TINY_LLAMA, {"pad_with": "<extra_pad>"})
    before = load_model(TINY_LLAMA, "causal-lm")
    tokenizer = load_tokenizer(spec)
    vocab = TINY_LLAMA.config.vocab_size
    assert tokenizer.pad_token == "<extra_pad>" and tokenizer.pad_token_id == vocab and len(tokenizer) == vocab + 1
    torch.manual_seed(0)
    lm = load_model(spec, "causal-lm")
    for table in (lm.get_input_embeddings().weight, lm.get_output_embeddings().weight):
        assert table.shape[0] == vocab + 1
        assert torch.allclose(table[-1], table[:-1].mean(dim=0), atol=1e-7)
    assert before.get_input_embeddings().weight.shape[0] == vocab  # without the option: no new row
    # the classifier a run loads (task.model_head's pad id): it reads each row at its last token before the padding
    classifier = load_classifier(spec, 2, tokenizer.pad_token_id).eval()
    assert classifier.config.pad_token_id == vocab and classifier.get_input_embeddings().weight.shape[0] == vocab + 1
    batch = tokenizer(["a short one", "a somewhat longer sentence than that"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1] == vocab  # the short row is padded with the new token
    alone = tokenizer(["a short one"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(classifier(**batch).logits[0], classifier(**alone).logits[0], atol=1e-5)
    with pytest.raises(ConfigError, match=r"model.pad_with=5 is not valid; give a token such as '\[PAD\]', or null"):
        load_tokenizer(OmegaConf.merge(TINY_LLAMA, {"pad_with": 5}))


def test_goat_t4_evaluates_at_its_own_length_and_trains_at_max_seq_length() -> None:
    cfg = sweep_config("goat_t4", ["task=glue_rte", "data=offline"])
    check_config(cfg)
    assert (cfg.task.max_seq_length, cfg.task.eval_max_seq_length) == (128, 512)
    cfg.task.max_seq_length, cfg.task.eval_max_seq_length = 16, 48  # the same split at lengths RTE's rows exceed
    data = build_task(cfg.task).prepare("offline", load_tokenizer(TINY))
    assert max(len(ids) for ids in data.train["input_ids"]) == 16
    assert max(len(ids) for split in data.evals.values() for ids in split["input_ids"]) == 48
    plain = sweep_config("glue", ["task=glue_rte"])
    check_config(plain)
    assert plain.task.get("eval_max_seq_length") is None  # other sweeps: evaluated at max_seq_length


HELD_OUT_RUN = [
    "model=tiny-llama", "task=cs_arc_c", "task.max_eval_samples=2", "task.generation.max_new_tokens=2",
    "task.max_seq_length=64", "+task.held_out={rows: 16, seed: 42}", "+trainer.val_loss_every=2",
    "trainer.max_steps=6", "trainer.per_device_train_batch_size=2", "trainer.per_device_eval_batch_size=8", "lr=5e-3",
]  # fmt: skip


class _Forget(TrainerCallback):
    """Put the trainable weights back to their init after every step from step 3 on: the checkpoints of steps 4 and 6
    hold the untrained adapter, worse on the held-out rows than step 2's two steps of training."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN003
        if state.global_step >= 3:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in self.init:
                        param.copy_(self.init[name])
        return control


@pytest.mark.parametrize("method", ["lora", "goat"])  # a PEFT adapter and a hand-written one (its own checkpoint)
def test_held_out_loss_restores_the_lowest_loss_checkpoint(
    store: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    seen: dict = {}
    real = peftbench.bench.run.train_and_evaluate

    def capture(model, collate, task, data, meth, params, ctx, args, *rest):  # noqa: ANN001, ANN002
        callbacks = meth.callbacks
        monkeypatch.setattr(meth, "callbacks", lambda *a: [*callbacks(*a), _Forget(model)])
        outcome = real(model, collate, task, data, meth, params, ctx, args, *rest)
        # the evaluated model, scored again on the held-out rows (its loss with the method's aux loss, as in training),
        # and the checkpoint the choice names
        again = BenchTrainer(
            model=model, args=args, eval_dataset=data.held_out, data_collator=collate, method=meth,
            method_params=params, ctx=ctx,
        )  # fmt: skip
        seen["loss"] = again.evaluate()
        saved = load_file(str(Path(args.output_dir) / f"checkpoint-{outcome.restored_step}" / WEIGHTS))
        state = model.model.state_dict() if isinstance(model, InjectedModel) else get_peft_model_state_dict(model)
        seen["equal"] = sorted(saved) == sorted(k for k in state if k in saved) and all(
            torch.equal(saved[k], state[k].cpu()) for k in saved
        )
        return outcome

    monkeypatch.setattr(peftbench.bench.run, "train_and_evaluate", capture)
    record = peftbench.bench.run.run(compose_run(store, *HELD_OUT_RUN, f"method={method}"))
    assert record["status"] == "ok", record["error"]
    held = record["protocol"]["held_out"]
    losses = {entry["step"]: entry["loss"] for entry in held["losses"]}
    assert sorted(losses) == [2, 4, 6] and min(losses, key=losses.get) == 2 < record["steps"]
    assert held["restored_step"] == 2 and losses[2] < min(losses[4], losses[6])
    assert seen["equal"]  # the weights evaluated are the step-2 checkpoint's, not the last step's
    assert seen["loss"]["eval_loss"] == pytest.approx(losses[2], rel=1e-5)
    # the held-out rows: datasets' train_test_split(test_size=16, shuffle=True, seed=42) of the training rows
    total = record["protocol"]["train_rows"] + 16
    reference = Dataset.from_dict({"i": list(range(total))}).train_test_split(test_size=16, shuffle=True, seed=42)
    assert held["ids"] == reference["test"]["i"] and held["rows"] == 16 and held["seed"] == 42


def test_held_out_rows_are_checked_before_training(store: Path) -> None:
    with pytest.raises(ConfigError, match=r"^trainer.val_loss_every=80 needs held-out rows to score; set task"):
        identify(compose_run(store, "model=tiny-llama", "task=cs_arc_c", "+trainer.val_loss_every=80"))
    with pytest.raises(ConfigError, match=r"^task.held_out=.* is not valid; give null or \{rows: 120, seed: 42\}"):
        identify(compose_run(store, "model=tiny-llama", "task=cs_arc_c", "+task.held_out={rows: 0, seed: 42}"))
    with pytest.raises(ConfigError, match=r"^task.held_out is not available for task family 'glue'"):
        identify(compose_run(store, "+task.held_out={rows: 8, seed: 42}"))
