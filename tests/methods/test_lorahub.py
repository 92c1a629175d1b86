"""LoRAHub: the composition's exact properties, the reference's objective, a deterministic search, the one-line
errors, and the whole workflow offline on MiniLM (an upstream sweep that keeps its adapters, then a composition)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import peftbench.bench.run
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import load_peft_weights
from peftbench.bench.config import check_overrides
from peftbench.bench.models import load_model
from peftbench.bench.record import new_record
from peftbench.core.errors import ConfigError
from peftbench.core.store import RunStore
from peftbench.methods.base import RunContext, get_method
from peftbench.methods.lorahub import compose, few_shot_loss, l1_term, search, set_composed

from tests.conftest import compose_run, run_cli
from tests.helpers import TINY, TINY_LLAMA, labelled_batches, tiny_batch, tiny_classifier

UPSTREAM_TASKS = ("glue_sst2", "glue_mrpc")


def _tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return load_model(TINY_LLAMA, "causal-lm").eval()


def _pool(root: Path, base: Callable[[], torch.nn.Module], targets: list[str], heads: list[str], k: int = 2) -> list:
    """k random LoRA adapters (A, B and any head all non-zero) saved as an upstream sweep `up` of records."""
    dirs = []
    for i in range(k):
        torch.manual_seed(100 + i)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, modules_to_save=heads, init_lora_weights=False)
        model = get_peft_model(base(), config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "modules_to_save" in name:
                    param.normal_(0, 0.5)
        run_id = f"{i:012x}"
        model.save_pretrained(str(root / "up" / "adapters" / run_id))
        RunStore(root).write(
            new_record(
                run_id=run_id, sweep="up", status="ok", method="lora", model="tiny-roberta",
                task=UPSTREAM_TASKS[i % 2], adapter_dir=f"adapters/{run_id}", config={},
            )
        )  # fmt: skip
        dirs.append(root / "up" / "adapters" / run_id)
    return dirs


def _hub(base: torch.nn.Module, dirs: list[Path]) -> tuple[torch.nn.Module, list[dict[str, torch.Tensor]]]:
    """The composed model's frame, as `LoraHub.apply` builds it: the first adapter's config, every adapter's weights."""
    return PeftModel.from_pretrained(base, str(dirs[0])).eval(), [load_peft_weights(str(d)) for d in dirs]


def _module(base: torch.nn.Module, folder: Path) -> torch.nn.Module:
    return PeftModel.from_pretrained(base, str(folder)).eval()


@torch.no_grad()
def test_unit_weight_gives_exactly_that_module_classifier(tmp_path: Path) -> None:
    dirs = _pool(tmp_path, tiny_classifier, ["query", "value"], ["classifier"], k=3)
    hub, states = _hub(tiny_classifier(), dirs)
    batch = tiny_batch()
    for i, folder in enumerate(dirs):
        set_composed(hub, states, [1.0 if j == i else 0.0 for j in range(3)])
        assert torch.equal(hub(**batch).logits, _module(tiny_classifier(), folder)(**batch).logits)


@torch.no_grad()
def test_unit_weight_gives_that_module_and_zero_gives_the_base_causal_lm(tmp_path: Path) -> None:
    dirs = _pool(tmp_path, _tiny_llama, list(TINY_LLAMA.target_modules), [])
    hub, states = _hub(_tiny_llama(), dirs)
    ids = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    set_composed(hub, states, [0.0, 1.0])
    assert torch.equal(hub(input_ids=ids).logits, _module(_tiny_llama(), dirs[1])(input_ids=ids).logits)
    set_composed(hub, states, [0.0, 0.0])
    assert torch.equal(hub(input_ids=ids).logits, _tiny_llama()(input_ids=ids).logits)


@torch.no_grad()
def test_zero_weights_give_the_base_models_encoder(tmp_path: Path) -> None:
    """w = 0: every LoRA update vanishes, so the backbone is the base model's (the summed head is 0 too)."""
    dirs = _pool(tmp_path, tiny_classifier, ["query", "value"], ["classifier"])
    hub, states = _hub(tiny_classifier(), dirs)
    set_composed(hub, states, [0.0, 0.0])
    batch = tiny_batch()
    ours = hub(**batch, output_hidden_states=True).hidden_states
    base = tiny_classifier()(**batch, output_hidden_states=True).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(ours, base, strict=True))
    assert torch.count_nonzero(hub(**batch).logits) == 0


@torch.no_grad()
def test_update_is_quadratic_in_the_weights_with_cross_terms(tmp_path: Path) -> None:
    """ΔW(c·w) = c²·ΔW(w), and ΔW = s·(Σ w_i B_i)(Σ w_j A_j): both factors summed (not PEFT's weighted adapter)."""
    dirs = _pool(tmp_path, tiny_classifier, ["query", "value"], ["classifier"])
    hub, states = _hub(tiny_classifier(), dirs)
    layers = {name: m for name, m in hub.named_modules() if hasattr(m, "get_delta_weight") and "lora_A" not in name}
    assert len(layers) == 4
    w, c = np.array([0.7, -1.2]), -1.4

    def deltas(weights: np.ndarray) -> dict[str, torch.Tensor]:
        set_composed(hub, states, weights)
        return {name: layer.get_delta_weight("default") for name, layer in layers.items()}

    base, scaled = deltas(w), deltas(c * w)
    singles = [deltas(np.eye(2)[i]) for i in range(2)]
    for name, layer in layers.items():
        torch.testing.assert_close(scaled[name], c**2 * base[name], rtol=1e-5, atol=1e-7)
        a = sum(w[i] * states[i][f"{name}.lora_A.weight"] for i in range(2))
        b = sum(w[i] * states[i][f"{name}.lora_B.weight"] for i in range(2))
        torch.testing.assert_close(base[name], layer.scaling["default"] * b @ a, rtol=1e-5, atol=1e-7)
        linear = w[0] * singles[0][name] + w[1] * singles[1][name]
        assert not torch.allclose(base[name], linear, atol=1e-4)  # the cross terms B_i A_j (i != j) are there


def test_compose_sums_every_key_as_the_reference() -> None:
    states = [
        {"a": torch.tensor([1.0, 2.0]), "h": torch.tensor([3.0])},
        {"a": torch.tensor([-1.0, 4.0]), "h": torch.tensor([1.0])},
    ]
    out = compose(states, [0.5, -2.0])
    assert torch.equal(out["a"], torch.tensor([2.5, -7.0])) and torch.equal(out["h"], torch.tensor([-0.5]))
    assert l1_term([0.5, -1.5]) == pytest.approx(0.05)


@torch.no_grad()
def test_few_shot_loss_is_the_sum_of_batch_means_over_the_rows() -> None:
    """algorithm.py:124-135: Σ_batches batch-mean loss / number of examples."""
    model = tiny_classifier()
    (rows,) = labelled_batches(1)
    batches = [{k: v[:2] for k, v in rows.items()}, {k: v[2:] for k, v in rows.items()}]
    expected = (float(model(**batches[0]).loss) + float(model(**batches[1]).loss)) / 3
    assert few_shot_loss(model, batches, 3) == pytest.approx(expected)


def test_search_with_a_fixed_seed_is_deterministic() -> None:
    def run(seed: int) -> tuple[np.ndarray, list[list[float]]]:
        seen: list[list[float]] = []

        def score(w: np.ndarray) -> float:
            seen.append(w.tolist())
            return float(np.sum((w - np.array([0.4, -0.9, 1.1])) ** 2) + np.sin(7 * w).sum())

        return search(score, 3, 30, seed), seen

    (first, seen_first), (again, seen_again) = run(42), run(42)
    assert np.array_equal(first, again) and seen_first == seen_again and len(seen_first) == 30
    assert np.all(np.abs(first) <= 1.5)


def _context(root: Path, dirs: list[Path]) -> RunContext:
    def sample(n: int, batch_size: int | None = None) -> list[dict[str, torch.Tensor]]:
        (batch,) = labelled_batches(1)  # 3 labelled rows
        rows = {k: torch.cat([v, v]) for k, v in batch.items()}  # 6 rows
        return [{k: v[: batch_size or 3] for k, v in rows.items()}]

    upstream = [{"run_id": d.name, "task": "t", "method": "lora", "adapter_dir": f"adapters/{d.name}"} for d in dirs]
    return RunContext(
        rank=None, lr=1e-3, seed=0, target_modules=list(TINY.target_modules), head_modules=list(TINY.head_modules),
        total_steps=0, sample_batches=sample, store_root=str(root), inputs={"upstream": upstream},
    )  # fmt: skip


def test_apply_searches_deterministically_and_leaves_nothing_trainable(tmp_path: Path) -> None:
    dirs = _pool(tmp_path, tiny_classifier, ["query", "value"], ["classifier"], k=3)
    method = get_method("lorahub")
    params = method.parse({"name": "lorahub", "upstream": "up", "shots": 5, "budget": 12, "batch_size": 2})
    ctx = _context(tmp_path, dirs)
    method.validate(params, tiny_classifier(), ctx)
    model = method.adapt(tiny_classifier(), params, ctx)
    assert not any(p.requires_grad for p in model.parameters())
    first, again = (method.extra_metrics(m)["lorahub"] for m in (model, method.adapt(tiny_classifier(), params, ctx)))
    assert first["weights"] == again["weights"] and first["objective"] == again["objective"]
    assert list(first["weights"]) == [d.name for d in dirs] and any(w != 0 for w in first["weights"].values())
    w = list(first["weights"].values())
    assert first["objective"] == pytest.approx(first["few_shot_loss"] + 0.05 * np.mean(np.abs(w)))


def test_adapters_of_another_architecture_are_refused(tmp_path: Path) -> None:
    dirs = _pool(tmp_path, tiny_classifier, ["query", "value"], ["classifier"])
    method = get_method("lorahub")
    params = method.parse({"name": "lorahub", "upstream": "up"})
    with pytest.raises(
        ConfigError, match=r"do not fit this model and task: classifier.out_proj.bias \[2\] \(a head with another"
    ):
        method.validate(params, tiny_classifier(num_labels=3), _context(tmp_path, dirs))
    with pytest.raises(ConfigError, match=r"^method.shots=7 is more than the 6 training rows; give 1 to 6$"):
        method.validate(
            method.parse({"name": "lorahub", "upstream": "up", "shots": 7}), tiny_classifier(), _context(tmp_path, dirs)
        )


# ---- the workflow, offline, on MiniLM: an upstream sweep keeps its adapters, then LoRAHub composes them for RTE

MINILM = ["model=minilm", "task.max_eval_samples=16", "task.max_seq_length=32"]
TINY_BUDGET = ["trainer=smoke", "trainer.max_steps=2", "trainer.per_device_train_batch_size=4"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], float]:
    store = tmp_path_factory.mktemp("lorahub") / "runs"
    started = time.perf_counter()
    runs = [
        peftbench.bench.run.run(compose_run(store, "sweep=lorahub_upstream", *MINILM, *TINY_BUDGET, f"task={task}"))
        for task in UPSTREAM_TASKS
    ]
    return store, runs, time.perf_counter() - started


def test_upstream_sweep_keeps_its_adapters_beside_its_records(upstream: tuple[Path, list[dict], float]) -> None:
    store, runs, _ = upstream
    for record in runs:
        assert record["status"] == "ok", record["error"]
        assert record["sweep"] == "lorahub_upstream" and record["adapter_dir"] == f"adapters/{record['run_id']}"
        assert (store / "lorahub_upstream" / record["adapter_dir"] / "adapter_model.safetensors").is_file()


def test_lorahub_composes_the_upstream_adapters_for_rte(upstream: tuple[Path, list[dict], float]) -> None:
    store, runs, upstream_seconds = upstream
    overrides = [*MINILM, "task=glue_rte", "method=lorahub", "method.upstream=lorahub_upstream", "method.shots=5"]
    started = time.perf_counter()
    record = peftbench.bench.run.run(compose_run(store, *overrides, "method.budget=5", "store.save_adapter=true"))
    seconds = time.perf_counter() - started
    assert record["status"] == "ok", record["error"]
    assert record["method"] == "lorahub" and record["model"] == "minilm" and record["task"] == "glue_rte"
    assert record["steps"] == 0 and record["trainable_params"] == 0 and record["final_loss"] is None
    ids = sorted(r["run_id"] for r in runs)
    found = record["metrics"]["lorahub"]
    assert sorted(found["weights"]) == ids == found["upstream"]
    assert all(-1.5 <= w <= 1.5 for w in found["weights"].values())
    assert found["budget"] == 5 and found["shots"] == 5
    assert [u["run_id"] for u in record["inputs"]["upstream"]] == ids
    assert {u["task"] for u in record["inputs"]["upstream"]} == set(UPSTREAM_TASKS)
    assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
    assert len(list((store / "adhoc").glob("*.json"))) == 1  # one record per run
    saved = load_peft_weights(str(store / "adhoc" / record["adapter_dir"]))  # the composed adapter: plain LoRA
    upstream_states = [
        load_peft_weights(str(store / "lorahub_upstream" / r["adapter_dir"]))
        for r in sorted(runs, key=lambda r: r["run_id"])
    ]
    expected = compose(upstream_states, list(found["weights"].values()))
    assert saved.keys() == expected.keys() and all(torch.allclose(saved[k], expected[k]) for k in saved)
    assert peftbench.bench.run.run(compose_run(store, *overrides, "method.budget=5")) is None  # done: skipped
    print(f"\nMiniLM: upstream 2 runs {upstream_seconds:.1f} s, LoRAHub {seconds:.1f} s")


UP = "method.upstream=lorahub_upstream"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["method.upstream=nope"],
            r"^method.upstream='nope' is not a sweep in store.root=.*; valid choices: .*lorahub_up",
        ),
        (["method.upstream=empty"], r"^method.upstream='empty' has no saved adapters; run it with store.save_adapter="),
        ([UP, "model=tiny-roberta"], r"has no adapters of model 'tiny-roberta'; valid choices: model=minilm$"),
        ([UP, "method.shots=0"], r"^method.shots=0 is not valid; give a positive integer$"),
        ([UP, "method.budget=-1"], r"^method.budget=-1 is not valid; give a positive integer$"),
        ([UP, "method.modules=3"], r"^method.modules=3 is more than the 2 adapters of method.upstream='lorahub_up"),
        ([], r"^method.upstream is missing; give the sweep whose adapters to compose: method.upstream=X$"),
    ],
)
def test_bad_lorahub_input_is_one_line_before_anything_runs(
    upstream: tuple[Path, list[dict], float], overrides: list[str], message: str
) -> None:
    store = upstream[0]
    RunStore(store).write(new_record(run_id="0" * 12, sweep="empty", status="ok", method="lora", config={}))
    cfg = compose_run(store, *MINILM, "task=glue_rte", "method=lorahub", *overrides)
    with pytest.raises(ConfigError, match=message):
        peftbench.bench.run.identify(cfg)


def test_an_unknown_upstream_on_the_command_line_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = run_cli("method=lorahub", "method.upstream=nope", "data=offline", "task=glue_rte", f"store.root={tmp_path}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"peftbench: error: method.upstream='nope' is not a sweep in store.root='{tmp_path}'; valid choices: (none)"
    ]
    assert not list(tmp_path.rglob("*.json"))


def test_the_old_save_adapter_key_names_the_new_one() -> None:
    with pytest.raises(
        ConfigError, match=r"^trainer.save_adapter is now store.save_adapter; give store.save_adapter=true$"
    ):
        check_overrides(["trainer.save_adapter=true"])
    with pytest.raises(ConfigError, match=r"^trainer.save_adapter is now store.save_adapter; set store.save_adapter"):
        peftbench.bench.run.identify(compose_run(Path("unused"), "+trainer.save_adapter=false"))
