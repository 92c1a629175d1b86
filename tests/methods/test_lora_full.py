"""LoRA and full fine-tuning: closed-form parameter counts and the no-op init."""

from __future__ import annotations

import copy

import pytest
import torch
from peftbench.bench.measure import count_params
from peftbench.core.errors import ConfigError
from peftbench.methods.base import get_method, method_names
from peftbench.methods.targets import target_layers

from tests.helpers import TINY, context, tiny_batch, tiny_classifier


def head_param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.classifier.parameters())


@pytest.mark.parametrize("rank", [1, 4, 8])
def test_lora_trainable_params_closed_form(rank: int) -> None:
    base = tiny_classifier()
    layers = target_layers(base, TINY.target_modules)
    assert len(layers) == 2 * TINY.config.num_hidden_layers  # query and value in each layer
    expected_adapter = sum(rank * (layer.in_features + layer.out_features) for layer in layers)
    expected_head = head_param_count(base)
    total_base = sum(p.numel() for p in base.parameters())

    method = get_method("lora")
    params = method.parse({"name": "lora", "lora_alpha": 16, "lora_dropout": 0.0})
    model = method.apply(base, params, context(rank))
    counts = count_params(model, TINY.head_modules)

    assert counts.trainable_params == expected_adapter + expected_head
    assert counts.head_params == expected_head
    assert counts.total_params == total_base + expected_adapter
    assert counts.trainable_pct == pytest.approx(100 * counts.trainable_params / counts.total_params)


def test_lora_scaling_is_alpha_over_r_and_output_at_init_equals_base() -> None:
    base = tiny_classifier()
    batch = tiny_batch()
    with torch.no_grad():
        expected = base(**batch).logits
    method = get_method("lora")
    model = method.apply(copy.deepcopy(base), method.parse({"lora_alpha": 12}), context(4)).eval()
    layer = model.base_model.model.roberta.encoder.layer[0].attention.self.query
    assert layer.scaling["default"] == pytest.approx(12 / 4)
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, expected, atol=1e-6)


def test_full_fine_tuning_trains_everything_and_has_no_rank() -> None:
    base = tiny_classifier()
    for p in base.parameters():
        p.requires_grad_(False)
    method = get_method("full")
    model = method.apply(base, method.parse({"name": "full"}), context(None))
    counts = count_params(model, TINY.head_modules)
    assert counts.trainable_params == counts.total_params == sum(p.numel() for p in base.parameters())
    assert counts.head_params == head_param_count(base)
    assert method.uses_rank is False


def test_rank_above_layer_size_is_a_one_line_error() -> None:
    method = get_method("lora")
    with pytest.raises(ConfigError, match=r"rank=33 exceeds min\(in, out\)=32 .*valid ranks: 1\.\.32"):
        method.validate(method.parse({}), tiny_classifier(), context(33))


def test_unknown_target_module_names_the_valid_ones() -> None:
    method = get_method("lora")
    with pytest.raises(ConfigError, match=r"\['q_proj'\] match no linear layer.*query"):
        method.validate(method.parse({}), tiny_classifier(), context(4, targets=["q_proj"]))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lora_alpha": "abc"}, r"method.lora_alpha='abc' is not valid; expected float"),
        ({"lora_alpha": -1}, r"method.lora_alpha=-1.0 is not valid"),
        ({"lora_dropout": 1.5}, r"method.lora_dropout=1.5 is not valid"),
        ({"bias": "some"}, r"method.bias='some' is not valid; expected one of 'none', 'all', 'lora_only'"),
        ({"rnak": 4}, r"unknown key method.rnak for method 'lora'; valid keys: bias, lora_alpha"),
    ],
)
def test_bad_method_values_are_one_line_errors(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_method("lora").parse(values)


def test_registry_lists_methods_and_rejects_unknown() -> None:
    assert {"lora", "full"} <= set(method_names())
    with pytest.raises(ConfigError, match=r"unknown method 'lorra'; valid choices: .*full.*lora"):
        get_method("lorra")
