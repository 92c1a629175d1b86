"""The seed papers' methods on the shared injection layer: every exact identity of their specs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import peftbench.bench.run
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from peft import PeftModel
from peftbench.bench.measure import count_params
from peftbench.core.errors import ConfigError
from peftbench.core.paths import CONF_DIR
from peftbench.methods.adamole import AdaMoleLayer
from peftbench.methods.base import get_method
from peftbench.methods.goat import segment_indices
from peftbench.methods.injection import NotMergeable, adapter_layers_of
from peftbench.methods.moe import MoeLoraLayer
from peftbench.methods.mpc import mpc_penalty
from peftbench.methods.relora import jagged_cosine, merge_and_reset, prune_optimizer_state
from peftbench.methods.singlora import SingLoraLayer, set_ramp
from peftbench.methods.targets import target_layers

from tests.conftest import compose_run
from tests.helpers import TINY, TINY_LLAMA, build, context, head_size, logits, perturb, tiny_batch, tiny_classifier

NATIVE = [
    "singlora",
    "ssl",
    "ssb",
    "lora_mpco",
    "lora_mpcd",
    "lora_mpcn",
    "molora",
    "hydralora",
    "goat",
    "milora",
    "relora",
]
MOE = ["molora", "hydralora", "goat"]


# ---------- SingLoRA ----------


@pytest.mark.parametrize("spec", [TINY, TINY_LLAMA], ids=["roberta", "llama"])
def test_singlora_params_and_output_at_t0(spec: DictConfig) -> None:
    base, model, _, _ = build("singlora", 4, spec)
    layers = target_layers(base, spec.target_modules)
    expected = sum(max(layer.in_features, layer.out_features) * 4 for layer in layers) + head_size(spec)
    assert count_params(model, spec.head_modules).trainable_params == expected
    assert torch.allclose(logits(model), logits(base), atol=1e-6)  # u(0) = 0


@pytest.mark.parametrize("init", ["paper", "fan_r"])
@pytest.mark.parametrize(("in_features", "out_features"), [(576, 576), (576, 1536)])
def test_singlora_init_scales_with_the_layer_width(in_features: int, out_features: int, init: str) -> None:
    """The paper's A ~ U(±1/√n), n = max(in, out): std 1/√(3n); the unofficial codes' fan = r: 1/√(3r)."""
    torch.manual_seed(0)
    base = torch.nn.Linear(in_features, out_features)
    layer = SingLoraLayer(base, rank=8, alpha=8.0, init=init)
    fan = max(in_features, out_features) if init == "paper" else 8
    assert layer.A.std().item() == pytest.approx(1 / math.sqrt(3 * fan), rel=0.1)
    assert layer.A.abs().max().item() <= 1 / math.sqrt(fan)
    x = torch.randn(4, in_features)
    assert torch.equal(layer(x), base(x))  # u = 0 before the first optimizer step


def test_singlora_config_defaults_to_the_papers_init() -> None:
    _, model, _, params = build("singlora", 4)
    assert params.init == "paper"
    layer = next(layer for _, layer in model.adapter_layers())
    assert layer.A.abs().max().item() <= 1 / math.sqrt(32)  # n = 32 on the tiny model, not r = 4


def test_singlora_delta_is_symmetric_on_square_layers_and_matches_its_weight() -> None:
    _, model, _, _ = build("singlora", 4, TINY_LLAMA)
    set_ramp(model, 0.5)
    for layer in adapter_layers_of(model, SingLoraLayer):
        weight = layer.delta_weight()
        if layer.in_features == layer.out_features:
            assert torch.allclose(weight, weight.T, atol=1e-7)
        assert torch.linalg.matrix_rank(weight) <= 4
        x = torch.randn(5, layer.in_features)
        assert torch.allclose(layer.delta(x), x @ weight.T, atol=1e-6)
    assert {(a.in_features, a.out_features) for a in adapter_layers_of(model, SingLoraLayer)} == {(32, 32), (32, 16)}


def test_singlora_ramp_reaches_one_at_t(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    real = peftbench.bench.run.train_and_evaluate

    def capture(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        values = []
        seen["values"] = values
        layer = adapter_layers_of(model, SingLoraLayer)[0]
        original_forward = layer.forward

        def forward(x):  # noqa: ANN001
            if layer.training:
                values.append(float(layer.ramp))
            return original_forward(x)

        layer.forward = forward
        return real(model, *args, **kwargs)

    monkeypatch.setattr(peftbench.bench.run, "train_and_evaluate", capture)
    record = peftbench.bench.run.run(
        compose_run(store, "method=singlora", "method.ramp_steps=3", "trainer.max_steps=5")
    )
    assert record["status"] == "ok"
    assert seen["values"] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 1.0])  # u(t) = min(t/T, 1), t = 0..4


def test_singlora_exports_exactly_to_peft_lora(tmp_path: Path) -> None:
    _, model, method, _ = build("singlora", 4, TINY_LLAMA)
    perturb(model)
    set_ramp(model, 0.7)
    expected = logits(model)
    peft_model = method.to_peft(model).eval()
    assert torch.allclose(logits(peft_model), expected, atol=1e-5)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    loaded = PeftModel.from_pretrained(tiny_classifier(spec=TINY_LLAMA), str(tmp_path / "peft")).eval()
    assert torch.allclose(logits(loaded), expected, atol=1e-5)


# ---------- SSL / SSB ----------


@pytest.mark.parametrize("name", ["ssl", "ssb"])
def test_subspace_output_at_init_params_and_merged_formula(name: str) -> None:
    base, model, _, _ = build(name, None)
    assert torch.allclose(logits(model), logits(base), atol=1e-6)
    layers = target_layers(base, TINY.target_modules)
    per_layer = (lambda t: t.in_features) if name == "ssl" else (lambda t: t.in_features + t.out_features)
    assert count_params(model, TINY.head_modules).trainable_params == sum(map(per_layer, layers)) + head_size()
    perturb(model, size=0.3)
    for _, layer in model.adapter_layers():
        w0 = layer.base_layer.weight
        l_out = layer.l_out if name == "ssb" else torch.ones(layer.out_features)
        expected = torch.diag(l_out) @ w0 @ torch.diag(layer.l_in)
        assert torch.allclose(layer.merged_weight(), expected, atol=1e-6)
        x = torch.randn(4, layer.in_features)
        assert torch.allclose(layer(x), x @ expected.T + layer.base_layer.bias, atol=1e-5)


# ---------- MPC ----------


def test_mpc_regularisers_equal_their_formulas_on_hand_made_factors() -> None:
    a = torch.tensor([[1.0, 1.0]])  # A Aᵀ = 2: (2 - 1)² = 1
    b = torch.tensor([[2.0], [0.0]])  # Bᵀ B = 4: MPCo (4 - 1)² = 9; MPCd: off-diagonal part 0
    assert mpc_penalty([(a, b)], "o").item() == pytest.approx(10.0)
    assert mpc_penalty([(a, b)], "d").item() == pytest.approx(1.0)
    a2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # A Aᵀ = [[1, 1], [1, 2]]: 0 + 1 + 1 + 1 = 3
    b2 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # Bᵀ B = [[1, 1], [1, 2]]: MPCo 3, MPCd 2 (off-diagonals)
    assert mpc_penalty([(a2, b2)], "o").item() == pytest.approx(6.0)
    assert mpc_penalty([(a2, b2)], "d").item() == pytest.approx(5.0)


def test_mpc_regularisers_vanish_on_orthonormal_factors() -> None:
    q, _ = torch.linalg.qr(torch.randn(16, 4))
    a, b = q.T, q  # orthonormal rows of A, orthonormal columns of B
    assert mpc_penalty([(a, b)], "o").item() == pytest.approx(0.0, abs=1e-10)
    assert mpc_penalty([(a, 3 * b)], "d").item() == pytest.approx(0.0, abs=1e-9)  # BᵀB diagonal


@pytest.mark.parametrize("name", ["lora_mpco", "lora_mpcd"])
def test_mpc_aux_loss_is_lambda_times_penalty_over_layers(name: str) -> None:
    _, model, method, params = build(name, 4, mpc_lambda=0.5)
    perturb(model)
    pairs = [(m.lora_A["default"].weight, m.lora_B["default"].weight) for m in model.modules() if hasattr(m, "lora_B")]
    assert len(pairs) == 4
    expected = 0.5 * sum(mpc_penalty([p], name[-1]) for p in pairs)
    assert method.aux_loss(model, params).item() == pytest.approx(expected.item(), rel=1e-6)


def test_mpcn_is_the_references_parallel_adapter_unscaled() -> None:
    """Subspace-Tuning's layers_PA.py: B·drop(ReLU(A x)), no α/r factor, whatever α and r."""
    base, model, _, _ = build("lora_mpcn", 4, lora_alpha=32)
    assert torch.allclose(logits(model), logits(base), atol=1e-6)
    perturb(model)
    _, layer = next(model.adapter_layers())
    x = torch.randn(3, layer.in_features)
    expected = layer.base_layer(x) + torch.relu(x @ layer.lora_A.T) @ layer.lora_B.T
    assert torch.allclose(layer(x), expected, atol=1e-6)
    _, scaled, _, _ = build("lora_mpcn", 4, lora_alpha=32, scale="alpha_over_r")
    perturb(scaled)
    _, layer = next(scaled.adapter_layers())
    expected = layer.base_layer(x) + 8.0 * torch.relu(x @ layer.lora_A.T) @ layer.lora_B.T
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_mpcn_dropout_acts_after_the_activation() -> None:
    _, model, _, _ = build("lora_mpcn", 4, lora_dropout=0.5)
    perturb(model)
    _, layer = next(model.adapter_layers())
    layer.train()
    x = torch.randn(64, layer.in_features)
    torch.manual_seed(5)
    hidden_mask = torch.nn.functional.dropout(torch.ones(64, 4), 0.5)  # the mask the layer will draw
    torch.manual_seed(5)
    out = layer.delta(x)
    expected = (torch.relu(x @ layer.lora_A.T) * hidden_mask) @ layer.lora_B.T
    assert torch.allclose(out, expected, atol=1e-5)


# ---------- MiLoRA ----------


def test_milora_residual_plus_adapter_is_w0_with_the_minor_components() -> None:
    base, model, _, _ = build("milora", 4)
    for index in range(2):
        w0 = base.roberta.encoder.layer[index].attention.self.query.weight
        layer = model.base_model.model.roberta.encoder.layer[index].attention.self.query
        delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        assert torch.allclose(layer.base_layer.weight + delta, w0, atol=1e-5)
        u, s, vh = torch.linalg.svd(w0, full_matrices=False)
        assert torch.allclose(delta, u[:, -4:] @ torch.diag(s[-4:]) @ vh[-4:], atol=1e-5)
    assert torch.allclose(logits(model), logits(base), atol=1e-5)


@pytest.mark.parametrize(("name", "scale", "part"), [("milora", 16 / 4, slice(-4, None)), ("pissa", 2.0, slice(0, 4))])
def test_goat_variants_hold_a_tenth_of_their_svd_part(name: str, scale: float, part: slice) -> None:
    """GOAT's layer.py: S/(s·ρ), ρ = 10; MiLoRA keeps s = α/r, PiSSA fixes s = 2; W_res + s·B·A = W0."""
    base, model, _, _ = build(name, 4, goat_variant=True)
    w0 = base.roberta.encoder.layer[0].attention.self.query.weight
    layer = model.base_model.model.roberta.encoder.layer[0].attention.self.query
    assert layer.scaling["default"] == scale
    delta = scale * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    assert torch.allclose(delta, u[:, part] @ torch.diag(s[part] / 10) @ vh[part], atol=1e-5)
    assert torch.allclose(layer.base_layer.weight + delta, w0, atol=1e-5)
    assert torch.allclose(logits(model), logits(base), atol=1e-5)


@pytest.mark.parametrize("sweep", ["goat_t1", "goat_t2", "goat_t4", "goat_t3", "subspace_t2", "commonsense"])
def test_goat_sweeps_run_goats_own_milora_and_pissa(sweep: str) -> None:
    """GOAT ran its in-repo MiLoRA/PiSSA for Tables 1, 2, 4; Table 3's † rows are other papers' numbers."""
    from peftbench.bench.grid import sweep_config

    expected = sweep in ("goat_t1", "goat_t2", "goat_t4")
    for name in ("milora", "pissa"):
        assert sweep_config(sweep, [f"method={name}"]).method.goat_variant is expected


def test_milora_saves_as_a_peft_lora_adapter_for_the_untouched_base(tmp_path: Path) -> None:
    _, model, method, _ = build("milora", 4)
    perturb(model)
    expected = logits(model)
    method.save(model, str(tmp_path / "milora"))
    loaded = PeftModel.from_pretrained(tiny_classifier(), str(tmp_path / "milora")).eval()
    assert torch.allclose(logits(loaded), expected, atol=1e-5)


# ---------- GOAT and the MoE family ----------


def moe_layers(model: torch.nn.Module) -> list[MoeLoraLayer]:
    return adapter_layers_of(model, MoeLoraLayer)


@pytest.mark.parametrize("init", ["goat", "goat_mini"])
@pytest.mark.parametrize("rho", [10.0, 1.0])
def test_goat_alignment_and_segments(init: str, rho: float) -> None:
    base, model, _, _ = build("goat", 16, init=init, rho=rho)  # E = 8, r_e = 2, segments of 4
    originals = [m.weight for n, m in base.named_modules() if n.endswith(("query", "value"))]
    for w0, layer in zip(originals, moe_layers(model), strict=True):
        updates = [layer.expert_update(i) for i in range(8)]
        assert torch.allclose(layer.base_layer.weight + sum(updates) / 8, w0, atol=1e-5)  # uniform routing
        u, s, vh = torch.linalg.svd(w0, full_matrices=False)
        for update, index in zip(updates, segment_indices(32, 8, 2, init == "goat_mini"), strict=True):
            assert torch.allclose(update, u[:, index] @ torch.diag(s[index] / rho) @ vh[index], atol=1e-5)
    assert segment_indices(32, 8, 2, False)[1].tolist() == [4, 5]
    assert segment_indices(32, 8, 2, True)[1].tolist() == [6, 7]


def test_goat_scales() -> None:
    _, model, _, _ = build("goat", 16, scale="gradient_aligned", eta=2.0)
    assert moe_layers(model)[0].scale == pytest.approx(math.sqrt(3 * 2.0 * 32 / 2))
    _, model, _, _ = build("goat", 16, lora_alpha=16)
    assert moe_layers(model)[0].scale == pytest.approx(16 / 2)


@pytest.mark.parametrize("name", MOE)
def test_moe_parameter_counts(name: str) -> None:
    base, model, _, _ = build(name, 16)
    layers = target_layers(base, TINY.target_modules)
    e, r_e = 8, 2
    if name == "hydralora":
        per_layer = [r_e * t.in_features + e * t.out_features * r_e + t.in_features * e for t in layers]
        assert all(layer.lora_A.shape[0] == 1 for layer in moe_layers(model))  # one shared A
    else:
        per_layer = [e * r_e * (t.in_features + t.out_features) + t.in_features * e for t in layers]
    assert count_params(model, TINY.head_modules).trainable_params == sum(per_layer) + head_size()


def test_top_k_gates_sum_to_one_and_are_batched() -> None:
    _, model, _, _ = build("goat", 16)
    layer = moe_layers(model)[0]
    gates, logits, _ = layer.gates(torch.randn(5, 7, 32))
    assert torch.allclose(gates.sum(-1), torch.ones(5, 7))
    assert ((gates > 0).sum(-1) == 2).all()
    probs = torch.softmax(logits, -1)  # the gates are the top-2 router probabilities, renormalised
    top = probs.topk(2, dim=-1)
    assert torch.allclose(gates.gather(-1, top.indices), top.values / top.values.sum(-1, keepdim=True), atol=1e-6)


def test_moe_delta_equals_the_explicit_sum_over_selected_experts() -> None:
    _, model, _, _ = build("molora", 16)
    perturb(model)
    layer = moe_layers(model)[0]
    x = torch.randn(6, 32)
    gates, _, _ = layer.gates(x)
    expected = sum(gates[:, i : i + 1] * layer.scale * (x @ layer.lora_A[i].T @ layer.lora_B[i]) for i in range(8))
    assert torch.allclose(layer.delta(x), expected, atol=1e-6)


def test_load_balancing_loss_with_top2_counts_tokens_not_slots() -> None:
    """GOAT's layer: f_i = tokens routed to i / N tokens (Σ f_i = k), P_i = mean router probability."""
    _, model, _, _ = build("molora", 16, num_experts=4, top_k=2)
    layer = moe_layers(model)[0]
    router_logits = torch.tensor(
        [[3.0, 2.0, 0.0, -1.0], [0.0, 1.0, 4.0, 2.0], [5.0, 4.0, 0.0, 1.0], [1.0, 3.0, 2.0, 0.0]]
    )  # token t's logits; top-2: {0, 1}, {2, 3}, {0, 1}, {1, 2}
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[:, :4] = router_logits.T
    x = torch.zeros(4, 32)
    x[range(4), range(4)] = 1.0
    layer.train()
    layer.delta(x)
    f = [2 / 4, 3 / 4, 2 / 4, 1 / 4]  # tokens choosing each expert / 4 tokens: Σ f_i = 2 = k
    probs = [[math.exp(v) / sum(math.exp(w) for w in row) for v in row] for row in router_logits.tolist()]
    p = [sum(row[i] for row in probs) / 4 for i in range(4)]
    expected = 4 * sum(fi * pi for fi, pi in zip(f, p, strict=True))
    assert layer.balance_loss.item() == pytest.approx(expected, rel=1e-5)  # not expected / k (token-slots)


def test_load_balancing_loss_on_a_hand_made_routing() -> None:
    """With k = 1 the same code gives Switch's classic loss E·Σ f_i·P_i, f_i the share of tokens."""
    _, model, _, _ = build("molora", 16, num_experts=4, top_k=1)
    layer = moe_layers(model)[0]
    c = 2.0
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[:, :4] = c * torch.eye(4)
    x = torch.zeros(4, 32)
    x[[0, 1, 2, 3], [0, 0, 1, 2]] = 1.0  # tokens point at experts 0, 0, 1, 2
    layer.train()
    layer.delta(x)
    a, b = math.exp(c) / (math.exp(c) + 3), 1 / (math.exp(c) + 3)
    f = [2 / 4, 1 / 4, 1 / 4, 0.0]
    p = [(2 * a + 2 * b) / 4, (a + 3 * b) / 4, (a + 3 * b) / 4, b]
    assert layer.balance_loss.item() == pytest.approx(4 * sum(fi * pi for fi, pi in zip(f, p, strict=True)), rel=1e-5)


@pytest.mark.parametrize("name", MOE)
def test_moe_dropout_drops_the_experts_input_in_training_only(name: str) -> None:
    _, model, _, _ = build(name, 16, lora_dropout=0.5)
    perturb(model)
    layer = moe_layers(model)[0]
    x = torch.randn(8, 32)
    layer.train()
    assert not torch.allclose(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    gates, _, _ = layer.gates(x)  # the router's input is not dropped: its gates are deterministic in training
    layer.train()
    assert torch.equal(layer.gates(x)[0], gates)


def _masks_and_delta(layer: MoeLoraLayer, x: torch.Tensor, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the dropout masks the layer drew, its training delta): the same seed before each, so that the masks of
    `copies` copies of x are the ones the layer's dropout drew (the router draws no random numbers)."""
    layer.train()
    torch.manual_seed(7)
    delta = layer.delta(x)
    torch.manual_seed(7)
    masks = layer.dropout(torch.ones(*x.shape[:-1], copies, x.shape[-1]))  # 0 or 1/(1 - p)
    return masks, delta


@pytest.mark.parametrize("name", ["molora", "goat"])
def test_top_k_experts_drop_their_input_with_one_mask_each(name: str) -> None:
    """GOAT's released layer (its MoLoRA too): one nn.Dropout per expert, each applied to the tokens routed to it;
    here a token's k experts see k independent masks (and the unused experts none)."""
    _, model, _, _ = build(name, 16, lora_dropout=0.5)
    perturb(model)
    layer = moe_layers(model)[0]
    x = torch.randn(2, 5, 32)
    masks, delta = _masks_and_delta(layer, x, copies=2)
    gates, _, _ = layer.gates(x)
    weights, index = gates.topk(2, dim=-1)
    expected = torch.zeros_like(delta)
    for token in np.ndindex(*x.shape[:-1]):
        for slot in range(2):  # the reference form: expert(drop_expert(x)) · weight, per routed token
            i = int(index[token][slot])
            dropped = x[token] * masks[token][slot]
            expected[token] += weights[token][slot] * layer.scale * (dropped @ layer.lora_A[i].T @ layer.lora_B[i])
    assert torch.allclose(delta, expected, atol=1e-5)
    assert not torch.equal(masks[..., 0, :], masks[..., 1, :])  # independent masks, not one shared
    layer.dropout.p = 0.0  # without dropout the masked path and the flat one agree: the masks are the only change
    assert torch.allclose(layer.delta_with_expert_masks(x, layer.route(x)), layer.delta(x), atol=1e-6)


@pytest.mark.parametrize("name", ["hydralora", "adamole"])
def test_dense_routers_drop_each_experts_input_with_its_own_mask(name: str) -> None:
    """HydraLoRA's forward calls its dropout once per head, B_i(A(drop(x))) (`peft/tuners/lora.py:341-342`);
    AdaMoLE has one nn.Dropout per expert (`src/adamole/layer.py:94-97`) and any expert may be selected."""
    _, model, _, _ = build(name, 16, lora_dropout=0.5)
    perturb(model, size=0.5)
    layer = moe_layers(model)[0]
    x = torch.randn(2, 5, 32)
    masks, delta = _masks_and_delta(layer, x, copies=8)
    gates = layer.route(x)
    assert (gates == 0).any() == (name == "adamole")  # AdaMoLE's threshold leaves experts out
    expected = sum(
        gates[..., i : i + 1]
        * layer.scale
        * ((x * masks[..., i, :]) @ layer.lora_A[0 if name == "hydralora" else i].T @ layer.lora_B[i])
        for i in range(8)
    )
    assert torch.allclose(delta, expected, atol=1e-5)


def test_hydralora_is_the_official_forward_with_alpha_over_a_rank() -> None:
    """Clin0212/HydraLoRA `peft/tuners/lora.py:279-284, 339-342`: `lora_A` = Linear(in, r), heads `lora_B{i}` =
    Linear(r, out), `scaling = lora_alpha / r` with r A's rank (here r/E = 2 at rank 16, E 8: s = 8, not α/r = 1),
    route_weight = softmax(lora_route(x)) in float32; result += route_weight[..., i] · B_i(A(x)) · scaling."""
    _, model, _, _ = build("hydralora", 16, lora_alpha=16)
    perturb(model)
    layer = moe_layers(model)[0]
    assert layer.lora_A.shape == (1, 2, 32) and layer.lora_B.shape == (8, 2, 32) and layer.scale == 8.0
    lora_route = torch.nn.Linear(32, 8, bias=False)
    lora_a = torch.nn.Linear(32, 2, bias=False)
    heads = [torch.nn.Linear(2, 32, bias=False) for _ in range(8)]
    with torch.no_grad():
        lora_route.weight.copy_(layer.router.weight)
        lora_a.weight.copy_(layer.lora_A[0])
        for i, head in enumerate(heads):
            head.weight.copy_(layer.lora_B[i].T)
    x = torch.randn(2, 5, 32)
    route_weight = torch.softmax(lora_route(x), dim=-1, dtype=torch.float32)
    scaling = 16 / lora_a.weight.shape[0]
    expected = layer.base_layer(x)
    for i in range(8):
        expected = expected + route_weight[:, :, i].unsqueeze(-1) * heads[i](lora_a(x)) * scaling
    layer.eval()
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_adamole_defaults_are_adamoles_train_py_and_goat_t4_keeps_goats_alpha() -> None:
    """AdaMoLE's train.py:97-99: lora_rank // num_experts (32 / 8 = 4), α 16, dropout 0.05; its config: E 8,
    threshold 0.125 = 1/E, aux 1e-3. GOAT T4's row runs GOAT's script values (α 64, dropout 0.05)."""
    from peftbench.bench.grid import sweep_config

    params = get_method("adamole").parse({"name": "adamole"})
    assert (params.expert_rank, params.lora_alpha, params.lora_dropout) == ("split", 16.0, 0.05)
    assert (params.num_experts, params.tau_max, params.aux_loss_coef) == (8, None, 1e-3)
    assert get_method("adamole").expert_rank(params, context(32)) == 4
    layer = adapter_layers_of(build("adamole", 32)[1], AdaMoleLayer)[0]
    assert layer.scale == 16 / 4 and layer.tau_max == 0.125 and layer.dropout.p == 0.05
    cfg = sweep_config("goat_t4", ["method=adamole"])
    assert (cfg.method.expert_rank, cfg.method.lora_alpha, cfg.method.lora_dropout) == ("split", 64, 0.05)


@pytest.mark.parametrize("sweep", ["goat_t1", "goat_t2", "goat_t3", "goat_t4", "goat_t6"])
def test_goat_sweeps_give_the_moe_methods_their_dropout(sweep: str) -> None:
    from peftbench.bench.grid import sweep_config

    for method in ("goat", "molora", "hydralora"):
        cfg = sweep_config(sweep, [f"method={method}"])
        assert cfg.method.lora_dropout == 0.05


@pytest.mark.parametrize("name", [*MOE, "lora_mpcn"])
def test_non_mergeable_methods_refuse_to_merge(name: str) -> None:
    _, model, _, _ = build(name, 16)
    with pytest.raises(NotMergeable, match="cannot merge|no input-independent"):
        model.merge_and_unload()


@pytest.mark.parametrize("name", ["singlora", "ssl", "ssb", "milora", "relora", "lora_mpco", "lora_mpcd"])
def test_merge_and_unload_keeps_outputs(name: str) -> None:
    _, model, _, _ = build(name, None if name in ("ssl", "ssb") else 4)
    perturb(model)
    if name == "singlora":
        set_ramp(model, 1.0)
    expected = logits(model)
    merged = model.merge_and_unload()
    assert not any("lora" in n or "l_in" in n for n, _ in merged.named_parameters())
    assert torch.allclose(logits(merged), expected, atol=1e-5)


# ---------- ReLoRA ----------


def test_relora_merge_and_reset_leaves_the_output_unchanged() -> None:
    _, model, _, _ = build("relora", 4)
    perturb(model)
    before = logits(model)
    merge_and_reset(model)
    assert torch.allclose(logits(model), before, atol=1e-5)
    b = [m.lora_B["default"].weight for m in model.modules() if hasattr(m, "lora_B")]
    assert all(torch.count_nonzero(w) == 0 for w in b)


def test_relora_optimizer_pruning_keeps_the_largest_entries() -> None:
    param = torch.nn.Parameter(torch.zeros(1000))
    optimizer = torch.optim.AdamW([param])
    param.grad = torch.arange(1000, dtype=torch.float32)
    optimizer.step()
    prune_optimizer_state(optimizer, [param], keep=0.01)
    state = optimizer.state[param]["exp_avg"]
    assert torch.count_nonzero(state) == 10 and state[-10:].ne(0).all()
    prune_optimizer_state(optimizer, [param], keep=None)
    assert torch.count_nonzero(optimizer.state[param]["exp_avg_sq"]) == 0


def test_relora_jagged_cosine_rewarms_after_each_restart() -> None:
    factor = jagged_cosine(total=100, period=25, warmup=5, first_warmup=5, min_ratio=0.1)
    assert factor(0) == pytest.approx(0.2)  # (0 + 1) / 5 of the first warm-up
    assert factor(24) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.24)))
    assert factor(25) == pytest.approx(0.2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25))))
    assert factor(100) == pytest.approx(0.1 * min(1.0, 1 / 5))


# ---------- every native method: save/load, gradients ----------


@pytest.mark.parametrize("name", NATIVE)
def test_save_then_load_gives_identical_logits(name: str, tmp_path: Path) -> None:
    rank = 16 if name in MOE else (None if name in ("ssl", "ssb") else 4)
    _, model, method, params = build(name, rank)
    perturb(model)
    if name == "singlora":
        set_ramp(model, 0.4)
    expected = logits(model)
    method.save(model, str(tmp_path / "adapter"))
    loaded = method.load(tiny_classifier(), str(tmp_path / "adapter"), params, context(rank)).eval()
    assert torch.allclose(logits(loaded), expected, atol=1e-5)


@pytest.mark.parametrize("name", NATIVE)
def test_gradients_reach_only_adapter_and_head(name: str) -> None:
    rank = 16 if name in MOE else (None if name in ("ssl", "ssb") else 4)
    _, model, _, _ = build(name, rank)
    perturb(model)
    if name == "singlora":
        set_ramp(model, 1.0)
    model.train()
    model(**tiny_batch(), labels=torch.tensor([0, 1, 1])).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad and with_grad <= trainable
    assert all("base_layer" not in n and "embeddings" not in n for n in trainable)
    assert any("classifier" in n for n in with_grad) and any("classifier" not in n for n in with_grad)


def test_moe_record_has_expert_load(store: Path) -> None:
    record = peftbench.bench.run.run(compose_run(store, "method=goat", "rank=16"))
    load = record["metrics"]["expert_load"]
    assert len(load) == 8 and sum(load) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", NATIVE)
def test_training_step_under_bf16_autocast(name: str) -> None:
    """What the Trainer does on a GPU with bf16=true: mixed dtypes inside the adapters must not break."""
    rank = 16 if name in MOE else (None if name in ("ssl", "ssb") else 4)
    _, model, method, params = build(name, rank)
    perturb(model)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**tiny_batch(), labels=torch.tensor([0, 1, 1])).loss
        aux = method.aux_loss(model, params)
        total = loss if aux is None else loss + aux
    total.backward()
    assert torch.isfinite(total)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["singlora", "ssb", "goat"])
def test_disable_adapter_gives_the_base_model(name: str) -> None:
    base, model, _, _ = build(name, 16 if name == "goat" else (None if name == "ssb" else 4))
    perturb(model, size=0.5)
    if name == "singlora":
        set_ramp(model, 1.0)
    with torch.no_grad():
        base.classifier.load_state_dict(model.model.classifier.state_dict())  # the head stays as trained
    adapted = logits(model)
    with model.disable_adapter():
        plain = logits(model)
    if name != "goat":  # GOAT's base layers hold W_res, not W0: disabling shows the residual model
        assert torch.allclose(plain, logits(base), atol=1e-5)
    assert not torch.allclose(plain, adapted, atol=1e-4)
    assert torch.allclose(logits(model), adapted)  # re-enabled after the block


TINY_GPT2 = OmegaConf.load(CONF_DIR / "model" / "tiny-gpt2.yaml")


@pytest.mark.parametrize("name", ["singlora", "lora_mpcn", "molora"])
def test_additive_layers_wrap_gpt2_conv1d(name: str, tmp_path: Path) -> None:
    """GPT-2's c_attn is a Conv1D (weight stored in × out): wrapped, merged and saved correctly."""
    base, model, method, params = build(name, 8, TINY_GPT2)
    assert torch.allclose(logits(model), logits(base), atol=1e-6)  # no-op at init
    perturb(model)
    if name == "singlora":
        set_ramp(model, 1.0)
    expected = logits(model)
    assert not torch.allclose(expected, logits(base), atol=1e-4)
    method.save(model, str(tmp_path / "a"))
    loaded = method.load(tiny_classifier(spec=TINY_GPT2), str(tmp_path / "a"), params, context(8, spec=TINY_GPT2))
    assert torch.allclose(logits(loaded.eval()), expected, atol=1e-5)
    if name == "singlora":
        assert torch.allclose(logits(method.to_peft(model).eval()), expected, atol=1e-5)
        assert torch.allclose(logits(model.merge_and_unload()), expected, atol=1e-5)


@pytest.mark.parametrize(("name", "message"), [("ssl", "does not wrap"), ("goat", "Conv1D is not supported")])
def test_layers_that_read_w0_refuse_conv1d(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(name, None if name == "ssl" else 8, TINY_GPT2)
