"""The baselines HF PEFT implements: closed-form counts, init identities, optimizer groups, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from bench.config import CONF_DIR
from bench.errors import ConfigError
from bench.measure import count_params
from methods.base import get_method
from methods.targets import TargetLayer, target_layers
from tests.helpers import TINY, TINY_LLAMA, build, context, tiny_batch, tiny_classifier

TINY_GPT2 = OmegaConf.load(CONF_DIR / "model" / "tiny-gpt2.yaml")

RANK = 4
ADAPTER_PARAMS = {  # per target layer, closed form
    "lora": lambda layer: RANK * (layer.in_features + layer.out_features),
    "rslora": lambda layer: RANK * (layer.in_features + layer.out_features),
    "loraplus": lambda layer: RANK * (layer.in_features + layer.out_features),
    "pissa": lambda layer: RANK * (layer.in_features + layer.out_features),
    "olora": lambda layer: RANK * (layer.in_features + layer.out_features),
    "lora_ga": lambda layer: RANK * (layer.in_features + layer.out_features),
    "dora": lambda layer: RANK * (layer.in_features + layer.out_features) + layer.out_features,
    "kasa": lambda layer: RANK * (layer.in_features + layer.out_features) + RANK,
    "adalora": lambda layer: 6 * (layer.in_features + layer.out_features) + 6,  # init_r = 1.5 x 4
    "vera": lambda layer: RANK + layer.out_features,
    "ia3": lambda layer: layer.out_features,
}
PEFT_METHODS = sorted(ADAPTER_PARAMS)
NO_OP_INIT = ["lora", "rslora", "loraplus", "dora", "adalora", "vera", "ia3", "pissa", "olora", "lora_ga", "bitfit"]


def head_size(model: torch.nn.Module, spec: DictConfig) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if spec.head_modules[0] in n.split("."))


@pytest.mark.parametrize("spec", [TINY, TINY_LLAMA], ids=["roberta", "llama"])
@pytest.mark.parametrize("name", PEFT_METHODS)
def test_trainable_params_closed_form(name: str, spec: DictConfig) -> None:
    base, model = build(name, RANK, spec)[:2]
    layers = target_layers(base, spec.target_modules)
    expected = sum(ADAPTER_PARAMS[name](layer) for layer in layers) + head_size(base, spec)
    counts = count_params(model, spec.head_modules)
    assert counts.trainable_params == expected
    assert counts.head_params == head_size(base, spec)


def test_bitfit_refuses_a_model_without_biases() -> None:
    with pytest.raises(
        ConfigError, match="^method bitfit needs bias terms and LlamaForSequenceClassification has none"
    ):
        build("bitfit", RANK, TINY_LLAMA)  # it would train the head alone: a linear probe, not BitFit


@pytest.mark.parametrize("spec", [TINY, TINY_GPT2], ids=["roberta", "gpt2"])
def test_bitfit_trains_biases_and_head_only(spec: DictConfig) -> None:
    base, model = build("bitfit", RANK, spec)[:2]
    head = set(spec.head_modules)
    biases = sum(p.numel() for n, p in base.named_parameters() if n.endswith("bias") and not head & set(n.split(".")))
    assert count_params(model, spec.head_modules).trainable_params == biases + head_size(base, spec)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.endswith("bias") or head & set(n.split(".")) for n in trainable)


def lora_layer(model: torch.nn.Module, index: int = 0) -> torch.nn.Module:
    return model.base_model.model.roberta.encoder.layer[index].attention.self.query


def test_rslora_scale_is_alpha_over_sqrt_r() -> None:
    _, model = build("rslora", RANK, lora_alpha=16)[:2]
    assert lora_layer(model).scaling["default"] == pytest.approx(16 / RANK**0.5)


def test_dora_magnitude_is_row_norms_of_w0() -> None:
    base, model = build("dora", RANK)[:2]
    w0 = base.roberta.encoder.layer[0].attention.self.query.weight
    magnitude = lora_layer(model).lora_magnitude_vector["default"].weight
    assert torch.allclose(magnitude, w0.norm(dim=1), atol=1e-6)


def delta(layer: torch.nn.Module) -> torch.Tensor:
    """s·B·A of a PEFT LoRA layer."""
    return layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight


@pytest.mark.parametrize("name", ["pissa", "olora", "lora_ga"])
def test_residual_plus_adapter_equals_w0(name: str) -> None:
    base, model = build(name, RANK)[:2]
    for index in range(TINY.config.num_hidden_layers):
        w0 = base.roberta.encoder.layer[index].attention.self.query.weight
        layer = lora_layer(model, index)
        assert not torch.allclose(layer.base_layer.weight, w0)  # the init really moved part of W0
        assert torch.allclose(layer.base_layer.weight + delta(layer), w0, atol=1e-5)


def test_pissa_adapter_is_best_rank_r_approximation() -> None:
    base, model = build("pissa", RANK)[:2]
    w0 = base.roberta.encoder.layer[0].attention.self.query.weight
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    best = u[:, :RANK] @ torch.diag(s[:RANK]) @ vh[:RANK]
    assert torch.allclose(delta(lora_layer(model)), best, atol=1e-5)


@pytest.mark.parametrize("name", NO_OP_INIT)
def test_output_at_init_equals_base(name: str) -> None:
    base, model = build(name, RANK)[:2]
    batch = tiny_batch()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, base(**batch).logits, atol=1e-5)


def test_kasa_truncates_w0_by_its_r_smallest_components() -> None:
    base, model = build("kasa", RANK)[:2]
    w0 = base.roberta.encoder.layer[0].attention.self.query.weight
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    keep = s.numel() - RANK
    truncated = u[:, :keep] @ torch.diag(s[:keep]) @ vh[:keep]
    assert torch.allclose(lora_layer(model).base_layer.weight, truncated, atol=1e-5)


def test_loraplus_groups_have_b_at_ratio_times_a() -> None:
    _, model = build("loraplus", RANK, loraplus_lr_ratio=20.0)[:2]
    method = get_method("loraplus")
    groups = method.optimizer_param_groups(model, method.parse({"loraplus_lr_ratio": 20.0}), context(RANK))
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: group["lr"] for group in groups for p in group["params"]}
    a = [lr for n, lr in lr_of.items() if "lora_A" in n]
    b = [lr for n, lr in lr_of.items() if "lora_B" in n]
    assert a and b and set(a) == {1e-3} and set(b) == {20 * 1e-3}


def test_kasa_aux_loss_follows_beta_and_gamma() -> None:
    method = get_method("kasa")
    _, model = build("kasa", RANK)[:2]
    _, silent = build("kasa", RANK, beta=0.0, gamma=0.0)[:2]
    assert method.aux_loss(model, None).item() > 0
    assert method.aux_loss(silent, None).item() == 0


SAVE_LOAD = [*PEFT_METHODS, "bitfit", "full"]


@pytest.mark.parametrize("name", SAVE_LOAD)
def test_save_then_load_gives_identical_logits(name: str, tmp_path: Path) -> None:
    _, model = build(name, RANK)[:2]
    with torch.no_grad():  # move away from the init so the round trip has something to carry
        generator = torch.Generator().manual_seed(3)
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    batch = tiny_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    method = get_method(name)
    method.save(model, str(tmp_path / "adapter"))
    params = method.parse({"name": name})
    loaded = method.load(tiny_classifier(), str(tmp_path / "adapter"), params, context(RANK)).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, expected, atol=1e-5)


def test_layers_listing_matches_peft() -> None:
    assert target_layers(tiny_classifier(), ["query"])[0] == TargetLayer(
        "roberta.encoder.layer.0.attention.self.query", 32, 32
    )
