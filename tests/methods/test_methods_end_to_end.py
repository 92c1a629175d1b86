"""Every registered method through the real runner on a tiny model: an `ok` record, and the hooks at work."""

from __future__ import annotations

from pathlib import Path

import peftbench.bench.run
import peftbench.methods.adalora
import pytest
from peftbench.methods.base import get_method, method_names

from tests.conftest import compose_run

DECODER_ONLY = {"series_adapter", "parallel_adapter"}  # LLM-Adapters' FFN placements refuse RoBERTa: tiny LLaMA


# methods that train (LoRAHub composes an upstream sweep's adapters: tests/methods/test_lorahub.py)
@pytest.mark.parametrize("name", [n for n in method_names() if get_method(n).trains])
def test_each_method_runs_end_to_end(name: str, store: Path) -> None:
    model = ["model=tiny-llama"] if name in DECODER_ONLY else []
    record = peftbench.bench.run.run(
        compose_run(store, *model, f"method={name}", "rank=8", "lr=1e-3")
    )  # 8: a multiple of E
    assert record["status"] == "ok", record["error"]
    assert record["method"] == name
    assert record["config"]["method"]["name"] == name
    assert 0 < record["head_params"] <= record["trainable_params"] <= record["total_params"]


def test_adalora_budget_reaches_target_rank_and_callback_runs_every_step(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict = {}
    real_train = peftbench.bench.run.train_and_evaluate
    real_callbacks = peftbench.methods.adalora.AdaLora.callbacks

    def capture_model(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        seen["model"] = model
        return real_train(model, *args, **kwargs)

    def capture_callbacks(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        seen["callbacks"] = real_callbacks(self, *args, **kwargs)
        return seen["callbacks"]

    monkeypatch.setattr(peftbench.bench.run, "train_and_evaluate", capture_model)
    monkeypatch.setattr(peftbench.methods.adalora.AdaLora, "callbacks", capture_callbacks)
    steps = 12  # a schedule compressed to the run: warm-up 2, pruning to step 8, final 4
    record = peftbench.bench.run.run(
        compose_run(
            store, "method=adalora", "rank=2", "method.init_r=4", "method.tinit=2", "method.tfinal=4",
            "method.deltaT=1", f"trainer.max_steps={steps}",
        )
    )  # fmt: skip
    assert record["status"] == "ok" and record["steps"] == steps
    assert seen["callbacks"][0].calls == steps
    model = seen["model"]
    pattern = model.peft_config["default"].rank_pattern
    layers = [name for name, _ in model.named_modules() if name.endswith(("query", "value")) and "lora" not in name]
    assert len(pattern) == len(layers) == 4
    assert sum(sum(mask) for mask in pattern.values()) == 2 * len(layers)  # target_r per layer on average
    active = sum(int((m.lora_E["default"] != 0).sum()) for m in model.modules() if hasattr(m, "lora_E"))
    assert active == 2 * len(layers)


def test_kasa_regularisers_enter_the_training_loss(store: Path, tmp_path: Path) -> None:
    with_reg = peftbench.bench.run.run(compose_run(store, "method=kasa", "method.beta=0.5", "method.gamma=0.5"))
    without = peftbench.bench.run.run(compose_run(tmp_path / "b", "method=kasa", "method.beta=0.0", "method.gamma=0.0"))
    assert with_reg["final_loss"] > without["final_loss"]


def test_adapter_is_saved_when_asked(store: Path) -> None:
    record = peftbench.bench.run.run(compose_run(store, "method=dora", "store.save_adapter=true"))
    folder = store / "adhoc" / "adapters" / record["run_id"]
    assert record["adapter_dir"] == f"adapters/{record['run_id']}"
    assert (folder / "adapter_config.json").exists() and (folder / "adapter_model.safetensors").exists()
