"""LoRA-Dash, NEAT, AdaMoLE, upcycled full-FT MoE and prefix tuning: the exact identities of their papers,
their parameter counts on tiny models and on the real architectures (meta device), save/load and training."""

from __future__ import annotations

import copy
from pathlib import Path

import peftbench.bench.run
import peftbench.methods.lora_dash
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from peftbench.bench.measure import count_params
from peftbench.bench.models import load_model
from peftbench.bench.param_count import meta_model
from peftbench.core.errors import ConfigError
from peftbench.core.paths import CONF_DIR
from peftbench.methods.adamole import AdaMoleLayer
from peftbench.methods.base import RunContext, get_method
from peftbench.methods.ft_moe import UpcycledLinear, expert_linears, upcycled_layers
from peftbench.methods.injection import NotMergeable, adapter_layers_of
from peftbench.methods.lora_dash import LoraDashLayer
from peftbench.methods.moe import MoeLoraLayer
from peftbench.methods.targets import target_layers
from peftbench.tasks.generation import generation_model
from transformers import TrainerCallback

from tests.conftest import compose_run
from tests.helpers import TINY, TINY_LLAMA, build, context, head_size, logits, perturb, tiny_batch, tiny_classifier

TINY_GPT2 = OmegaConf.load(CONF_DIR / "model" / "tiny-gpt2.yaml")
TINY_CLIP = OmegaConf.load(CONF_DIR / "model" / "tiny-clip.yaml")
ROBERTA_LARGE = OmegaConf.load(CONF_DIR / "model" / "roberta-large.yaml")
LLAMA_7B = OmegaConf.load(CONF_DIR / "model" / "llama-7b.yaml")
LLAMA_T5 = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]  # LLM-Adapters' commonsense set
SPECS = pytest.mark.parametrize("spec", [TINY, TINY_LLAMA], ids=["roberta", "llama"])
RANKS = {"lora_dash": 4, "neat": 4, "adamole": 8, "ft_moe": None, "prefix": None}
LABELS = torch.tensor([0, 1, 1])


def perturb_lora(model: torch.nn.Module, size: float) -> None:
    """LoRA-Dash mid phase 1: A and B trained, δ still 0 (it has no gradient before the switch)."""
    perturb(model, size=size)
    with torch.no_grad():
        for layer in adapter_layers_of(model, LoraDashLayer):
            layer.dash_delta.zero_()


def adapter_count(model: torch.nn.Module, head_modules: list[str]) -> int:
    counts = count_params(model, head_modules)
    return counts.trainable_params - counts.head_params


def meta_adapted(spec: DictConfig, kind: str, name: str, rank: int | None, targets: list[str], **values: object):  # noqa: ANN201
    """(adapted model, backbone size, head modules) of a method on a real architecture on the meta device."""
    head = {"num_labels": 2} if kind == "sequence-classification" else {}
    model = meta_model(spec, kind, **head)
    heads = list(spec.head_modules) if head else []
    before = count_params(model, heads)
    method = get_method(name)
    params = method.parse({"name": name, **values})
    ctx = RunContext(rank=rank, lr=1e-4, seed=0, target_modules=targets, head_modules=heads, total_steps=10)
    method.validate(params, model, ctx)
    return method.adapt(model, params, ctx), before.total_params - before.head_params, heads


# ---------- every new method: a training step, save/load ----------


@SPECS
@pytest.mark.parametrize("name", list(RANKS))
def test_one_training_step_moves_the_trainable_parameters(name: str, spec: DictConfig) -> None:
    _, model, method, params = build(name, RANKS[name], spec)
    if name == "lora_dash":
        for layer in adapter_layers_of(model, LoraDashLayer):
            layer.switch()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model.train()
    loss = model(**tiny_batch(), labels=LABELS).loss
    aux = method.aux_loss(model, params)
    (loss if aux is None else loss + aux).backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    moved = {n for n, p in trainable.items() if not torch.equal(before[n], p)}
    assert any(spec.head_modules[0] in n for n in moved) and any(spec.head_modules[0] not in n for n in moved)


@pytest.mark.parametrize("name", list(RANKS))
def test_save_then_load_gives_identical_logits(name: str, tmp_path: Path) -> None:
    rank = RANKS[name]
    _, model, method, params = build(name, rank, TINY_LLAMA)
    if name == "lora_dash":
        for layer in adapter_layers_of(model, LoraDashLayer):
            layer.switch()
    perturb(model)
    expected = logits(model)
    method.save(model, str(tmp_path / "adapter"))
    fresh = tiny_classifier(spec=TINY_LLAMA)
    loaded = method.load(fresh, str(tmp_path / "adapter"), params, context(rank, spec=TINY_LLAMA)).eval()
    assert torch.allclose(logits(loaded), expected, atol=1e-6)
    if name == "lora_dash":  # the phase and the directions travel with the adapter
        for saved, restored in zip(
            adapter_layers_of(model, LoraDashLayer), adapter_layers_of(loaded, LoraDashLayer), strict=True
        ):
            assert restored.active and torch.equal(restored.dash_index, saved.dash_index)


@pytest.mark.parametrize("name", ["adamole"])
def test_routed_adapters_refuse_to_merge(name: str) -> None:
    _, model, _, _ = build(name, 8)
    with pytest.raises(NotMergeable, match="cannot merge"):
        model.merge_and_unload()


# ---------- LoRA-Dash ----------


@SPECS
def test_lora_dash_params_are_loras_plus_s_dash_per_matrix(spec: DictConfig) -> None:
    base, model, _, _ = build("lora_dash", 4, spec)
    lora = build("lora", 4, spec)[1]
    layers = target_layers(base, spec.target_modules)
    expected = sum(4 * (t.in_features + t.out_features) + 8 for t in layers)
    assert (
        adapter_count(model, spec.head_modules) == expected == adapter_count(lora, spec.head_modules) + 8 * len(layers)
    )
    assert torch.allclose(logits(model), logits(base), atol=1e-6)


def test_lora_dash_on_llama_7b_adds_1280_to_lora() -> None:
    """8 per matrix over 32 layers × 5 matrices, "+1.3k", independent of r."""
    dash, _, heads = meta_adapted(LLAMA_7B, "causal-lm", "lora_dash", 32, LLAMA_T5)
    lora, _, _ = meta_adapted(LLAMA_7B, "causal-lm", "lora", 32, LLAMA_T5)
    assert adapter_count(dash, heads) - adapter_count(lora, heads) == 1280


def test_lora_dash_selects_the_top_change_rates_and_is_continuous_across_the_switch() -> None:
    _, model, _, _ = build("lora_dash", 4, TINY_LLAMA, s_dash=3)
    perturb_lora(model, size=0.3)
    before = logits(model)
    layers = adapter_layers_of(model, LoraDashLayer)
    for layer in layers:
        assert not layer.active
        layer.switch()
    assert torch.equal(logits(model), before)  # δ = 0: the output does not jump
    for layer in layers:
        w0 = layer.base_layer.weight.detach()
        u, sigma, vt = torch.linalg.svd(w0, full_matrices=False)
        delta_w = layer.scale * layer.lora_B.detach() @ layer.lora_A.detach()
        rates = (u.T @ delta_w @ vt.T).diagonal().abs() / sigma
        assert layer.dash_index.tolist() == rates.argsort(descending=True)[:3].tolist()
        assert int(layer.dash_index[0]) == int(rates.argmax())
        assert torch.allclose(layer.dash_u, u[:, layer.dash_index], atol=1e-6)
        assert torch.allclose(layer.dash_vt, vt[layer.dash_index], atol=1e-6)
        assert torch.count_nonzero(layer.dash_delta) == 0 and layer.dash_delta.requires_grad  # untouched


def test_lora_dash_phase_two_formula_gradients_and_merge() -> None:
    _, model, _, _ = build("lora_dash", 4, TINY_LLAMA)
    layer = adapter_layers_of(model, LoraDashLayer)[0]
    perturb_lora(model, size=0.3)
    model.train()
    model(**tiny_batch(), labels=LABELS).loss.backward()
    assert layer.dash_delta.grad is None and layer.lora_A.grad is not None  # no gradient before the switch
    layer.switch()
    with torch.no_grad():
        layer.dash_delta.copy_(torch.linspace(-1.0, 1.0, 8))
    model.zero_grad()
    model(**tiny_batch(), labels=LABELS).loss.backward()
    assert layer.dash_delta.grad is not None and layer.dash_delta.grad.abs().sum() > 0
    x = torch.randn(5, layer.in_features)
    w = layer.base_layer.weight
    expected = (
        x @ (w + layer.scale * layer.lora_B @ layer.lora_A).T
        + (x @ layer.dash_vt.T * layer.dash_delta) @ layer.dash_u.T
    )
    assert torch.allclose(layer(x), expected, atol=1e-5)
    model.eval()
    adapted = logits(model)
    assert torch.allclose(logits(model.merge_and_unload()), adapted, atol=1e-5)


def test_lora_dash_switches_on_a_bf16_base_and_trains_delta_under_autocast() -> None:
    torch.manual_seed(0)
    model = load_model(OmegaConf.merge(TINY_LLAMA, {"cpu_dtype": "bfloat16"}), "causal-lm")
    method = get_method("lora_dash")
    params = method.parse({"name": "lora_dash"})
    ctx = RunContext(rank=4, lr=1e-3, seed=0, target_modules=list(TINY_LLAMA.target_modules), head_modules=[],
                     total_steps=10)  # fmt: skip
    model = method.adapt(model, params, ctx)
    perturb_lora(model, size=0.3)
    ids = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    for layer in adapter_layers_of(model, LoraDashLayer):
        layer.switch()
        assert layer.dash_u.dtype == layer.dash_delta.dtype == torch.float32
        assert layer.base_layer.weight.dtype == torch.bfloat16
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [layer.dash_delta.grad for layer in adapter_layers_of(model, LoraDashLayer)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_lora_dash_count_forwards_switches_at_the_t_th_call() -> None:
    """The reference (the default): calls 0..t−1 are plain LoRA, call t (eval ones included) selects and already
    adds δ = 0."""
    _, model, method, params = build("lora_dash", 4, t=3)
    assert params.count_forwards is True
    assert method.callbacks(model, params, context()) == []
    perturb_lora(model, size=0.3)
    layers = adapter_layers_of(model, LoraDashLayer)
    outputs = [logits(model) for _ in range(3)]
    assert not any(layer.active for layer in layers) and all(layer.calls == 3 for layer in layers)
    assert torch.equal(logits(model), outputs[0])  # the 4th call switches
    assert all(layer.active for layer in layers)


def test_lora_dash_refuses_bad_settings() -> None:
    with pytest.raises(ConfigError, match=r"^method\.s_dash=20 exceeds min\(in, out\)=16 .*valid: 1\.\.16$"):
        build("lora_dash", 4, TINY_LLAMA, s_dash=20)
    with pytest.raises(ConfigError, match=r"^method\.t=0 is not valid"):
        build("lora_dash", 4, t=0)


@pytest.mark.parametrize(
    ("count_forwards", "active", "first_moved"),
    [
        # the default, the reference's counter: with 2 micro-batches per step, step 1 is calls 0-1 and step 2's
        # first micro-batch is call 2 = t, which switches: δ already trains in step 2
        (None, [False, True, True, True], 2),
        # optimizer steps: the switch at the end of step 2, δ trains from step 3
        (False, [False, True, True, True], 3),
    ],
    ids=["forward-calls-default", "optimizer-steps"],
)
def test_lora_dash_switches_as_counted_in_a_real_run(
    store: Path, monkeypatch: pytest.MonkeyPatch, count_forwards: bool | None, active: list[bool], first_moved: int
) -> None:
    seen: list[tuple[int, bool, torch.Tensor, torch.Tensor]] = []
    real = peftbench.methods.lora_dash.LoraDash.callbacks

    class Recorder(TrainerCallback):
        def __init__(self, model: torch.nn.Module) -> None:
            self.layer = adapter_layers_of(model, LoraDashLayer)[0]

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            layer = self.layer
            seen.append(
                (state.global_step, layer.active, layer.dash_delta.detach().clone(), layer.lora_B.detach().clone())
            )

    def with_recorder(self, model, params, ctx):  # noqa: ANN001, ANN202
        return [*real(self, model, params, ctx), Recorder(model)]

    monkeypatch.setattr(peftbench.methods.lora_dash.LoraDash, "callbacks", with_recorder)
    overrides = ["method=lora_dash", "method.t=2", "trainer.max_steps=4", "trainer.gradient_accumulation_steps=2"]
    overrides += [] if count_forwards is None else [f"method.count_forwards={str(count_forwards).lower()}"]
    record = peftbench.bench.run.run(compose_run(store, *overrides, "lr=1e-3"))
    assert record["status"] == "ok", record["error"]
    assert record["config"]["method"]["count_forwards"] is (count_forwards is not False)
    assert [(step, on) for step, on, _, _ in seen] == list(zip([1, 2, 3, 4], active, strict=True))
    deltas = [delta for _, _, delta, _ in seen]
    assert all(torch.count_nonzero(d) == 0 for d in deltas[: first_moved - 1])  # LoRA alone before the switch
    assert torch.count_nonzero(deltas[first_moved - 1]) > 0 and not torch.equal(deltas[2], deltas[3])  # δ trains
    assert not torch.equal(seen[0][3], seen[1][3])  # LoRA trains from the start (step 1 has lr 0: warm-up)


# ---------- NEAT ----------


@SPECS
def test_neat_is_base_at_init_and_counts_2_r_out(spec: DictConfig) -> None:
    base, model, _, _ = build("neat", 4, spec)
    assert torch.allclose(logits(model), logits(base), atol=1e-6)
    expected = sum(2 * 4 * t.out_features for t in target_layers(base, spec.target_modules))
    assert adapter_count(model, spec.head_modules) == expected
    assert count_params(model, spec.head_modules).head_params == head_size(spec)


def test_neat_update_is_a_nonlinear_function_of_w0_and_merges() -> None:
    _, model, _, _ = build("neat", 4, TINY_LLAMA, scaling=0.5)
    perturb(model, size=0.3)
    layer = next(m for m in model.modules() if hasattr(m, "peanut_A") and "default" in m.peanut_A)
    a, b = layer.peanut_A["default"].weight, layer.peanut_B["default"].weight  # (r, out), (out, r)
    w0 = layer.base_layer.weight
    expected = 0.5 * b @ torch.relu(a @ w0)  # ΔW = s·B·ReLU(A·W0), the reference's neat_vanilla
    assert torch.allclose(layer.get_delta_weight("default"), expected, atol=1e-6)
    x = torch.randn(3, layer.in_features)
    assert torch.allclose(layer(x), x @ (w0 + expected).T, atol=1e-5)
    adapted = logits(model)
    assert torch.allclose(logits(model.merge_and_unload()), adapted, atol=1e-5)


def test_neat_on_llama_7b_equals_loras_count() -> None:
    """r = 32 on q, k, v, up, down: 2·r·Σout = r·Σ(in + out) = 1,753,088 per layer."""
    neat, _, heads = meta_adapted(LLAMA_7B, "causal-lm", "neat", 32, LLAMA_T5)
    lora, _, _ = meta_adapted(LLAMA_7B, "causal-lm", "lora", 32, LLAMA_T5)
    assert adapter_count(neat, heads) == adapter_count(lora, heads) == 32 * 1_753_088


def test_neat_refuses_gpt2_conv1d() -> None:
    with pytest.raises(ConfigError, match="^target layer .*c_attn.* is a GPT-2 Conv1D, which PEFT's PEANuT"):
        build("neat", 4, TINY_GPT2)


# ---------- AdaMoLE ----------


@SPECS
@pytest.mark.parametrize(("expert_rank", "r_e"), [("split", 1), ("full", 8)])
def test_adamole_is_base_at_init_and_counts(spec: DictConfig, expert_rank: str, r_e: int) -> None:
    base, model, _, _ = build("adamole", 8, spec, expert_rank=expert_rank)
    assert torch.allclose(logits(model), logits(base), atol=1e-6)
    layers = target_layers(base, spec.target_modules)
    expected = sum(8 * r_e * (t.in_features + t.out_features) + 8 * t.in_features + t.in_features + 1 for t in layers)
    assert adapter_count(model, spec.head_modules) == expected
    for layer in adapter_layers_of(model, AdaMoleLayer):
        assert layer.tau_max == pytest.approx(1 / 8) and layer.scale == pytest.approx(16 / r_e)


def test_adamole_on_roberta_large_is_4_56_percent() -> None:
    """GOAT's budget: r 32, E 8 (r_e = 4) on query, key, value, intermediate.dense, output.dense."""
    targets = ["query", "key", "value", "intermediate.dense", "output.dense"]
    model, backbone, heads = meta_adapted(ROBERTA_LARGE, "sequence-classification", "adamole", 32, targets)
    adapter = adapter_count(model, heads)
    per_layer = sum(32 * (i + o) + 8 * i + i + 1 for i, o in [(1024, 1024)] * 4 + [(1024, 4096), (4096, 1024)])
    assert adapter == 24 * per_layer == 16_146_576
    assert round(100 * adapter / backbone, 2) == 4.56


def _adamole_layer(tau_max: float | None = None) -> AdaMoleLayer:
    _, model, _, _ = build("adamole", 16, TINY_LLAMA, tau_max=tau_max)
    perturb(model, size=0.5)
    return adapter_layers_of(model, AdaMoleLayer)[0]


def test_adamole_routing_selects_by_threshold_and_weights_sum_to_one() -> None:
    layer = _adamole_layer()
    x = torch.randn(4, 6, layer.in_features)
    probs, tau = layer.thresholds(x)
    assert (tau >= 0).all() and (tau <= 1 / 8).all()
    gates = layer.route(x)
    selected = probs - tau >= 0
    assert torch.equal(gates > 0, selected & (probs - tau > 0))
    assert selected.any(-1).all()  # τ ≤ 1/E ≤ max p_i: never empty
    assert torch.allclose(gates.sum(-1), torch.ones(4, 6), atol=1e-6)
    expected = (probs - tau) * selected / ((probs - tau) * selected).sum(-1, keepdim=True)
    assert torch.allclose(gates, expected, atol=1e-6)
    # the delta is the explicit sum over the selected experts
    explicit = sum(gates[..., i, None] * (x @ layer.expert_update(i).T) for i in range(layer.experts))
    assert torch.allclose(layer.delta(x), explicit, atol=1e-5)


def test_adamole_with_tau_max_zero_is_a_dense_softmax_moe() -> None:
    layer = _adamole_layer(tau_max=0.0)
    dense = MoeLoraLayer(layer.base_layer, layer.experts, layer.expert_rank, None, layer.scale, shared_a=False)
    dense.load_state_dict(layer.state_dict(), strict=False)
    x = torch.randn(3, 5, layer.in_features)
    assert torch.allclose(layer.route(x), torch.softmax(x @ layer.router.weight.T, -1), atol=1e-6)
    assert torch.allclose(layer(x), dense(x), atol=1e-6)


def test_adamole_with_nothing_selected_adds_nothing() -> None:
    layer = _adamole_layer(tau_max=1.0)
    with torch.no_grad():
        layer.threshold.bias.fill_(50.0)  # τ ≈ 1 > every p_i (E = 8)
    x = torch.randn(2, 3, layer.in_features)
    assert torch.count_nonzero(layer.route(x)) == 0
    assert torch.equal(layer(x), layer.base_layer(x))


def test_adamole_balance_loss_is_the_references() -> None:
    _, model, method, params = build("adamole", 16, TINY_LLAMA)
    perturb(model, size=0.5)
    model.train()
    model(**tiny_batch(), labels=LABELS)
    layers = adapter_layers_of(model, AdaMoleLayer)
    losses = []
    for layer in layers:
        x = torch.randn(21, layer.in_features)
        layer.route(x)
        probs, tau = layer.thresholds(x)
        shifted = probs - tau
        fractions = (shifted >= 0).float().mean(0)  # share of tokens selecting each expert
        assert layer.balance_loss.item() == pytest.approx((8 * (fractions * shifted.mean(0)).sum()).item(), rel=1e-5)
        losses.append(layer.balance_loss)
    assert method.aux_loss(model, params).item() == pytest.approx(1e-3 * sum(loss.item() for loss in losses))


def test_adamole_refuses_a_rank_not_divisible_by_e() -> None:
    with pytest.raises(ConfigError, match=r"^rank=12 is not a multiple of method\.num_experts=8"):
        build("adamole", 12)
    build("adamole", 12, expert_rank="full")  # r_e = r: any rank


# ---------- upcycled full-FT MoE ----------


@SPECS
def test_ft_moe_equals_the_dense_model_for_any_router(spec: DictConfig) -> None:
    base, model, _, _ = build("ft_moe", None, spec)
    with torch.no_grad():
        for layer in upcycled_layers(model):
            layer.router.weight.normal_(0.0, 3.0)
    assert torch.allclose(logits(model), logits(base), atol=1e-5)
    layer = upcycled_layers(model)[0]
    x = torch.randn(7, layer.in_features)
    index = (x @ layer.router.weight.T).topk(2).indices
    assert index.unique().numel() > 2  # the tokens really do take different experts


@SPECS
def test_ft_moe_trains_everything_and_counts_the_closed_form(spec: DictConfig) -> None:
    base, model, _, _ = build("ft_moe", None, spec)
    blocks = [m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and ".layer" in n]
    p_lin = sum(p.numel() for m in blocks for p in m.parameters())
    total = sum(p.numel() for p in base.parameters())
    counts = count_params(model, spec.head_modules)
    assert counts.trainable_params == counts.total_params == total + 7 * p_lin + 8 * sum(m.in_features for m in blocks)
    assert counts.head_params == head_size(spec)
    expected = 6 if spec is TINY else 7  # q, k, v, o, fc1, fc2 / q, k, v, o, gate, up, down
    assert len(upcycled_layers(model)) == 2 * expected


def test_ft_moe_ffn_upcycles_only_the_feed_forward_linears() -> None:
    names = lambda spec: expert_linears(tiny_classifier(spec=spec), "ffn", list(spec.head_modules))  # noqa: E731
    assert names(TINY) == [
        f"roberta.encoder.layer.{i}.{n}" for i in range(2) for n in ("intermediate.dense", "output.dense")
    ]
    assert names(TINY_LLAMA) == [
        f"model.layers.{i}.mlp.{n}" for i in range(2) for n in ("gate_proj", "up_proj", "down_proj")
    ]
    clip = expert_linears(load_model(TINY_CLIP, "image-classification", num_labels=10), "all_linear", ["classifier"])
    assert len(clip) == 2 * 6 and all(name.startswith("vision_model.encoder.layers.") for name in clip)


def test_ft_moe_on_roberta_large_is_695_8_percent() -> None:
    """P + (E−1)·P_lin + E·Σin over the model's P, head included on both sides (695.8% for LLaMA-7B)."""
    model = meta_model(ROBERTA_LARGE, "sequence-classification", num_labels=2)
    total = sum(p.numel() for p in model.parameters())
    method = get_method("ft_moe")
    params = method.parse({"name": "ft_moe"})
    ctx = RunContext(rank=None, lr=1e-5, seed=0, target_modules=[], head_modules=["classifier"], total_steps=10)
    method.validate(params, model, ctx)
    adapted = method.adapt(model, params, ctx)
    trainable = count_params(adapted, ["classifier"]).trainable_params
    per_layer_lin = 4 * (1024 * 1024 + 1024) + 2 * 4096 * 1024 + 4096 + 1024
    assert trainable == total + 24 * (7 * per_layer_lin + 8 * (5 * 1024 + 4096)) == 2_472_608_770
    assert round(100 * trainable / total, 1) == 695.8


def test_ft_moe_routes_top2_renormalised_with_a_switch_balance_loss() -> None:
    torch.manual_seed(0)
    layer = UpcycledLinear(torch.nn.Linear(6, 5), experts=4, top_k=2)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(2, 9, 6)
    logits_ = x @ layer.router.weight.T
    top, index = logits_.topk(2)
    gates = torch.zeros_like(logits_).scatter(-1, index, torch.softmax(top, -1))
    every = torch.einsum("bti,eoi->bteo", x, layer.weight) + layer.bias
    assert torch.allclose(layer(x), (gates.unsqueeze(-1) * every).sum(-2), atol=1e-5)
    fractions = torch.zeros(4).scatter_add_(0, index.reshape(-1), torch.ones(36)) / 18
    expected = 4 * (fractions * torch.softmax(logits_, -1).reshape(-1, 4).mean(0)).sum()
    assert layer.balance_loss.item() == pytest.approx(expected.item(), rel=1e-6)


def _upcycled_step(layer: UpcycledLinear, x: torch.Tensor, path: str) -> dict[str, torch.Tensor]:
    layer.path = path
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    out = layer(x)
    (out.square().sum() + layer.balance_loss).backward()
    grads = {f"grad_{n}": p.grad.clone() for n, p in layer.named_parameters()}
    return {"out": out.detach(), "aux": layer.balance_loss.detach(), "grad_x": x.grad, **grads}


@pytest.mark.parametrize("bias", [True, False])
def test_ft_moe_dense_and_routed_paths_agree(bias: bool) -> None:
    """The dense path (every expert on every token, the top-k gates as a mask) against the routed one (each expert
    gathers its tokens): output, balance loss and every gradient, with an expert that gets no token."""
    torch.manual_seed(0)
    layer = UpcycledLinear(torch.nn.Linear(16, 12, bias=bias), experts=8, top_k=2).train()
    perturb(layer, size=0.3)
    x = torch.randn(3, 4, 16)
    with torch.no_grad():
        layer.router.weight[5] = -10.0 * x.reshape(-1, 16).mean(0)  # expert 5: never in a token's top 2
    routed, dense = _upcycled_step(layer, x, "routed"), _upcycled_step(layer, x, "dense")
    assert int((x @ layer.router.weight.T).topk(2).indices.eq(5).sum()) == 0
    assert routed.keys() == dense.keys() and {"grad_weight", "grad_router.weight"} <= routed.keys()
    for key in routed:
        assert torch.allclose(routed[key], dense[key], atol=1e-5), key
    layer.eval()
    layer.path = "routed"
    expected = layer(x)
    layer.path = "dense"
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert layer.expert_load.tolist()[5] == 0 and layer.expert_load.sum() == 2 * 2 * 12  # both evaluations counted


@pytest.mark.parametrize(
    ("tokens", "in_out", "dense"),
    [(16, (1024, 4096), True), (17, (1024, 4096), False), (128, (32, 64), True), (2048, (32, 64), False),
     (128, (384, 384), False)],
)  # fmt: skip
def test_ft_moe_path_rule(tokens: int, in_out: tuple[int, int], dense: bool) -> None:
    """The measured rule (docs/perf/2026-12-04_cpu_moe_paths.md): dense up to 16 tokens or E·N·in·out ≤ 2^24."""
    layer = UpcycledLinear(torch.nn.Linear(*in_out, device="meta"), experts=8, top_k=2)
    assert layer.uses_dense(tokens) is dense
    layer.path = "routed"
    assert not layer.uses_dense(tokens)


def test_ft_moe_record_has_an_expert_load(store: Path) -> None:
    record = peftbench.bench.run.run(compose_run(store, "method=ft_moe", "trainer.max_steps=2"))
    assert record["status"] == "ok", record["error"]
    assert record["trainable_params"] == record["total_params"] and record["rank"] is None
    assert len(record["metrics"]["expert_load"]) == 8 and sum(record["metrics"]["expert_load"]) == pytest.approx(1.0)


# ---------- prefix tuning ----------


def _causal_llama(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return load_model(TINY_LLAMA, "causal-lm").eval()


def _prefix_causal(n: int = 5) -> tuple[torch.nn.Module, torch.nn.Module]:
    base = _causal_llama()
    method = get_method("prefix")
    params = method.parse({"name": "prefix", "num_virtual_tokens": n})
    ctx = RunContext(rank=None, lr=1e-3, seed=0, target_modules=[], head_modules=[], total_steps=10)
    method.validate(params, base, ctx)
    return base, method.adapt(copy.deepcopy(base), params, ctx).eval()


@SPECS
def test_prefix_counts_n_layers_2_kv_width(spec: DictConfig) -> None:
    base, model, _, _ = build("prefix", None, spec, num_virtual_tokens=7)
    cfg = base.config
    kv = cfg.hidden_size // cfg.num_attention_heads * getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    assert adapter_count(model, spec.head_modules) == 7 * cfg.num_hidden_layers * 2 * kv
    assert count_params(model, spec.head_modules).head_params == head_size(spec)
    assert not torch.allclose(logits(model), logits(base), atol=1e-4)  # the prefix is attended to
    # without the prefix: the base. (PEFT 0.21.2's `disable_adapter()` fails on a prompt-learning sequence
    # classifier under transformers 5: it saves `prepare_inputs_for_generation`, which such models lack.)
    assert torch.allclose(logits(model.base_model), logits(base), atol=1e-6)


def test_prefix_disabled_is_the_base_causal_lm() -> None:
    base, model = _prefix_causal()
    ids = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        assert not torch.allclose(model(input_ids=ids).logits, expected, atol=1e-4)
        with model.disable_adapter():
            assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-6)


def test_prefix_on_llama_7b_is_7_864_320() -> None:
    model, backbone, heads = meta_adapted(LLAMA_7B, "causal-lm", "prefix", None, [])
    assert adapter_count(model, heads) == 30 * 32 * 2 * 4096 == 7_864_320
    assert round(100 * 7_864_320 / (backbone + 7_864_320), 2) == 0.12  # printed 0.11 in LLM-Adapters


def test_prefix_generation_with_the_cache_matches_full_forwards() -> None:
    """transformers 5.x Cache objects: PEFT seeds a DynamicCache with the prefix; cached greedy decoding must
    equal decoding by full forwards (prefix re-applied each time), and beam search must run."""
    base, model = _prefix_causal()
    ids = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding, as the harness generates
    generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    sequence = ids
    with torch.no_grad():
        for _ in range(5):
            full_mask = torch.cat([mask, torch.ones(2, sequence.shape[1] - 9, dtype=mask.dtype)], 1)
            step = model(input_ids=sequence, attention_mask=full_mask).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, step], 1)
    assert torch.equal(generated, sequence)
    plain = base.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert not torch.equal(generated, plain)
    beams = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, num_beams=4)
    assert beams.shape == (2, 12)


def test_prefix_reaches_the_harness_generation() -> None:
    _, model = _prefix_causal()
    ids = torch.randint(5, 1000, (1, 9), generator=torch.Generator().manual_seed(0))
    expected = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    net = generation_model(model)
    got = net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert torch.equal(got, expected)


def test_prefix_refuses_an_image_classifier() -> None:
    model = load_model(TINY_CLIP, "image-classification", num_labels=10)
    method = get_method("prefix")
    params = method.parse({"name": "prefix"})
    ctx = RunContext(rank=None, lr=1e-3, seed=0, target_modules=[], head_modules=["classifier"], total_steps=10)
    message = (
        r"^method prefix needs a causal LM or a sequence classifier and CLIPForImageClassification is neither; "
        r"valid: \*ForCausalLM, \*ForSequenceClassification models$"
    )
    with pytest.raises(ConfigError, match=message):
        method.validate(params, model, ctx)
