"""Trainable parameters are float32 on a bf16 base, for every method (as PEFT keeps its adapters).

LLaMA models load in bf16 on a GPU; a bf16 parameter would lose every update below bf16's resolution,
and PEFT's baselines keep theirs in float32, so every method here must too. The forward computes in
bf16 under autocast. CPU bf16 autocast stands in for the GPU's.
"""

from __future__ import annotations

from pathlib import Path

import peftbench.bench.run
import pytest
import torch
from omegaconf import OmegaConf
from peftbench.bench.models import load_model
from peftbench.core.paths import CONF_DIR
from peftbench.methods.base import RunContext, get_method, method_names

from tests.conftest import compose_run

TINY_LLAMA_BF16 = OmegaConf.merge(OmegaConf.load(CONF_DIR / "model" / "tiny-llama.yaml"), {"cpu_dtype": "bfloat16"})


def _batch(seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


# Llama has no biases (bitfit) nor post-LN sub-layers (hadapter, padapter: bf16 step in test_module_adapters);
# LoRAHub trains nothing (tests/methods/test_lorahub.py)
EXCLUDED = ("bitfit", "hadapter", "padapter")


@pytest.mark.parametrize("name", [n for n in method_names() if n not in EXCLUDED and get_method(n).trains])
def test_trainable_parameters_are_float32_on_a_bf16_base_and_a_step_runs(name: str) -> None:
    torch.manual_seed(0)
    model = load_model(TINY_LLAMA_BF16, "causal-lm")
    assert next(model.parameters()).dtype == torch.bfloat16
    method = get_method(name)
    params = method.parse({"name": name})
    ctx = RunContext(
        rank=8, lr=1e-3, seed=0, target_modules=list(TINY_LLAMA_BF16.target_modules), head_modules=[],
        total_steps=10, sample_batches=lambda n: [_batch(i) for i in range(n)],
    )  # fmt: skip
    method.validate(params, model, ctx)
    adapted = method.adapt(model, params, ctx)
    trainable = {n: p for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    if name not in ("full", "ft_moe"):  # the frozen base stays bf16: nothing but the trainable part is upcast
        assert any(p.dtype == torch.bfloat16 for p in adapted.parameters() if not p.requires_grad)
    if name == "singlora":
        get_method("singlora")  # u(0) = 0 gives no gradient to A: look mid-ramp
        from peftbench.methods.singlora import set_ramp

        set_ramp(adapted, 0.5)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    adapted.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = adapted(**_batch(7)).loss
        aux = method.aux_loss(adapted, params)
    (loss if aux is None else loss + aux).backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert any(not torch.equal(before[n], p) for n, p in trainable.items())


def test_record_states_the_base_and_trainable_dtypes(store: Path) -> None:
    record = peftbench.bench.run.run(
        compose_run(store, "model=tiny-llama", "+model.cpu_dtype=bfloat16", "method=goat", "rank=8")
    )
    assert record["status"] == "ok", record["error"]
    assert record["dtypes"] == {"base": "bfloat16", "trainable": ["float32"], "autocast": "bfloat16"}
    plain = peftbench.bench.run.run(compose_run(store, "model=tiny-llama", "method=goat", "rank=8"))
    assert plain["dtypes"] == {"base": "float32", "trainable": ["float32"], "autocast": None}
