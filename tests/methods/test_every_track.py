"""Every method on the decoder and the vision track: it adapts a tiny causal LM and a tiny CLIP vision
classifier from their configs' targets, trains only adapters (+ the image head), and its gradients flow."""

from __future__ import annotations

import peftbench.methods.singlora
import pytest
import torch
from omegaconf import OmegaConf
from peftbench.bench.measure import count_params
from peftbench.bench.models import load_model
from peftbench.core.errors import ConfigError
from peftbench.core.paths import CONF_DIR
from peftbench.methods.base import RunContext, get_method, method_names

TINY_LLAMA = OmegaConf.load(CONF_DIR / "model" / "tiny-llama.yaml")
TINY_CLIP = OmegaConf.load(CONF_DIR / "model" / "tiny-clip.yaml")


def _causal_batch(seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _image_batch(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator), "labels": torch.tensor([1, 7])}


TRACKS = {
    "causal-lm": (TINY_LLAMA, {}, _causal_batch, []),
    "image-classification": (TINY_CLIP, {"num_labels": 10}, _image_batch, ["classifier"]),
}


# methods that refuse a track's architecture before training: Houlsby/Pfeiffer need a post-LN encoder's sub-layers,
# PEFT's prefix tuning has no vision task type
REFUSALS = {
    ("prefix", "image-classification"): "method prefix needs a causal LM or a sequence classifier",
    ("hadapter", "causal-lm"): "model type 'llama'",
    ("hadapter", "image-classification"): "model type 'clip'",
    ("padapter", "causal-lm"): "model type 'llama'",
    ("padapter", "image-classification"): "model type 'clip'",
}


@pytest.mark.parametrize("kind", list(TRACKS))
@pytest.mark.parametrize("name", [n for n in method_names() if get_method(n).trains])  # LoRAHub: test_lorahub.py
def test_method_trains_on_track(name: str, kind: str) -> None:
    spec, head, make_batch, head_modules = TRACKS[kind]
    torch.manual_seed(0)
    model = load_model(spec, kind, **head)
    method = get_method(name)
    params = method.parse({"name": name})
    ctx = RunContext(
        rank=8, lr=1e-3, seed=0, target_modules=list(spec.target_modules), head_modules=head_modules, total_steps=10,
        sample_batches=lambda n: [make_batch(i) for i in range(n)],
    )  # fmt: skip
    if name == "bitfit" and kind == "causal-lm":  # Llama has no bias terms: refused before training
        with pytest.raises(ConfigError, match="bitfit needs bias terms and LlamaForCausalLM has none"):
            method.validate(params, model, ctx)
        return
    if (name, kind) in REFUSALS:
        with pytest.raises(ConfigError, match=REFUSALS[(name, kind)]):
            method.validate(params, model, ctx)
        return
    method.validate(params, model, ctx)
    adapted = method.adapt(model, params, ctx)
    counts = count_params(adapted, head_modules)
    assert 0 < counts.trainable_params < counts.total_params or name in ("full", "ft_moe")
    assert counts.head_params == (32 * 10 + 10 if head_modules else 0)
    if name == "singlora":  # u(0) = 0 makes the first step's update and gradient zero: look mid-ramp
        peftbench.methods.singlora.set_ramp(adapted, 0.5)
    loss = adapted(**make_batch(99)).loss
    aux = method.aux_loss(adapted, params)
    (loss if aux is None else loss + aux).backward()
    grads = [p.grad for p in adapted.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    frozen = [p for p in adapted.parameters() if not p.requires_grad]
    assert all(p.grad is None for p in frozen)
