"""The LoRA variants of Subspace Tuning's tables: PA, TriLoRA(+MPCo), AdaLoRA-MPCo, FLoRA,
SAM-PARSER, LieRA — each one's exact identities, parameter counts (tiny models and RoBERTa-base on the meta
device), save/load, merging, and a training step on an encoder and a decoder."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import peftbench.bench.param_count
import peftbench.bench.run
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from peftbench.bench.measure import count_params
from peftbench.core.errors import ConfigError
from peftbench.core.paths import CONF_DIR
from peftbench.methods.base import RunContext, get_method
from peftbench.methods.flora import FloraLayer
from peftbench.methods.injection import NotMergeable, adapter_layers_of
from peftbench.methods.liera import LieraLayer
from peftbench.methods.lowrank import orth_reg
from peftbench.methods.mpc import mpc_penalty
from peftbench.methods.sam_parser import SamParserLayer
from peftbench.methods.targets import TargetLayer, target_layers
from peftbench.methods.trilora import TriLoraLayer, trilora_factors
from transformers import AutoConfig, AutoModelForSequenceClassification

from tests.conftest import compose_run
from tests.helpers import TINY, TINY_LLAMA, build, context, head_size, logits, perturb, tiny_batch, tiny_classifier

TINY_GPT2 = OmegaConf.load(CONF_DIR / "model" / "tiny-gpt2.yaml")
RANK = 4
NAMES = ["pa", "trilora", "trilora_mpco", "adalora_mpco", "flora", "sam_parser", "liera"]
NATIVE = ["pa", "trilora", "trilora_mpco", "flora", "sam_parser", "liera"]
MERGEABLE = ["trilora", "trilora_mpco", "flora", "sam_parser", "liera"]
LABELS = torch.tensor([0, 1, 1])


def rank_of(name: str) -> int | None:
    return None if name == "sam_parser" else RANK


# ---------- configuration ----------


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("trilora", {"scale": "half"}, r"^method.scale='half' is not valid; expected one of 'one', 'alpha_over_r'$"),
        ("trilora_mpco", {"mpc_lambda": -1.0}, r"^method.mpc_lambda=-1.0 is not valid; give a number >= 0$"),
        ("trilora_mpco", {"penalty": "mpcd"}, r"^method.penalty='mpcd' is not valid; expected one of 'mpco', "),
        ("flora", {"init": "zeros"}, r"^method.init='zeros' is not valid; expected one of 'normal', 'kaiming'$"),
        ("flora", {"lora_alpha": 0.0}, r"^method.lora_alpha=0.0 is not valid; give a positive number$"),
        ("liera", {"exact_exp": "yes"}, r"^method.exact_exp='yes' is not valid; expected bool$"),
        ("liera", {"lora_dropout": 1.0}, r"^method.lora_dropout=1.0 is not valid; give a value in \[0, 1\)$"),
        ("pa", {"activation": "gelu"}, r"^unknown key method.activation for method 'pa'; valid keys: lora_dropout, "),
        ("pa", {"lora_dropout": -0.1}, r"^method.lora_dropout=-0.1 is not valid; give a value in \[0, 1\)$"),
        ("sam_parser", {"reproduce_frozen_sigma": 1}, r"^method.reproduce_frozen_sigma=1 is not valid; expected bool"),
        (
            "adalora_mpco",
            {"orth_reg_weight": 0.1},
            r"^method.orth_reg_weight=0.1 is not valid for adalora_mpco .*; valid choices: 0$",
        ),
        ("adalora_mpco", {"init_share": 0.5}, r"^method.init_share=0.5 is not valid; give a value >= 1 \(init_r >= "),
    ],
)
def test_bad_values_are_one_line_config_errors(name: str, values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        get_method(name).parse({"name": name, **values})
    assert "\n" not in str(caught.value)


def test_rank_above_a_layer_is_refused_before_training() -> None:
    with pytest.raises(ConfigError, match=r"^rank=33 exceeds min\(in, out\)=32 of target layer .*valid ranks: 1..32"):
        build("flora", 33)


# ---------- parameter counts ----------

PER_LAYER: dict[str, Callable[[TargetLayer], int]] = {
    "pa": lambda t: RANK * (t.in_features + t.out_features),
    "trilora": lambda t: RANK * (t.in_features + t.out_features) + RANK,
    "trilora_mpco": lambda t: RANK * (t.in_features + t.out_features) + RANK,
    "adalora_mpco": lambda t: 6 * (t.in_features + t.out_features) + 6,  # as AdaLoRA: init_r = 1.5 x 4
    "flora": lambda t: RANK * (t.in_features + t.out_features) + RANK**2,
    "sam_parser": lambda t: min(t.in_features, t.out_features),
    "liera": lambda t: RANK * (t.in_features + t.out_features),
}


@pytest.mark.parametrize("spec", [TINY, TINY_LLAMA], ids=["roberta", "llama"])
@pytest.mark.parametrize("name", NAMES)
def test_trainable_params_closed_form_on_tiny_models(name: str, spec: DictConfig) -> None:
    base, model, _, _ = build(name, rank_of(name), spec)
    layers = target_layers(base, spec.target_modules)
    counts = count_params(model, spec.head_modules)
    assert counts.trainable_params == sum(PER_LAYER[name](t) for t in layers) + head_size(spec)
    assert counts.head_params == head_size(spec)


ROBERTA_BASE = {
    "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1,
}  # fmt: skip
T6 = ["query", "key", "value", "intermediate.dense", "output.dense"]  # output.dense: attention and FFN outputs


def meta_adapter_params(name: str, rank: int | None) -> int:
    config = AutoConfig.for_model("roberta", **ROBERTA_BASE)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    method = get_method(name)
    params = method.parse({"name": name})
    ctx = RunContext(rank=rank, lr=1e-4, seed=0, target_modules=T6, head_modules=["classifier"], total_steps=1000)
    method.validate(params, model, ctx)
    adapted = method.adapt(model, params, ctx)
    assert adapted.model.roberta.encoder.layer[0].attention.self.query.base_layer.weight.is_meta
    counts = count_params(adapted, ["classifier"])
    return counts.trainable_params - counts.head_params


@pytest.mark.parametrize(
    ("name", "rank", "expected"),
    [
        ("flora", 16, 2_654_208 + 72 * 16**2),  # LoRA's r = 16 count + G on the 72 matrices
        ("trilora", 2, 331_776 + 72 * 2),
        ("trilora_mpco", 2, 331_776 + 72 * 2),
        ("sam_parser", None, 12 * (5 * 768 + 768)),  # Σ min(in, out): 55,296
        ("liera", 8, 13_824 * 8 * 12),  # = LoRA
        ("pa", 8, 13_824 * 8 * 12),  # = LoRA
    ],
)
def test_params_of_roberta_base_on_the_meta_device(name: str, rank: int | None, expected: int) -> None:
    assert meta_adapter_params(name, rank) == expected
    if name in ("liera", "pa", "flora"):
        assert meta_adapter_params("lora", rank) == 13_824 * rank * 12


def test_sam_parser_decomposes_meta_weights_into_right_shaped_buffers() -> None:
    with torch.device("meta"):
        linear = torch.nn.Linear(768, 3072)
    layer = SamParserLayer(linear)
    assert layer.U.shape == (3072, 768) and layer.Vh.shape == (768, 768) and layer.sigma_shift.shape == (768,)
    assert layer.sigma.is_meta and layer.sigma0.is_meta


# ---------- PA ----------


def test_pa_is_lora_mpcn_with_relu_and_scale_one() -> None:
    base, pa, _, _ = build("pa", RANK)
    _, mpcn, _, _ = build("lora_mpcn", RANK, activation="relu", scale="one", lora_alpha=32)  # α plays no role
    assert torch.allclose(logits(pa), logits(base), atol=1e-6)
    pa_state = {n: p for n, p in pa.named_parameters() if p.requires_grad}
    mpcn_state = {n: p for n, p in mpcn.named_parameters() if p.requires_grad}
    assert pa_state.keys() == mpcn_state.keys()
    assert all(torch.equal(pa_state[n], mpcn_state[n]) for n in pa_state)  # the same init for the same seed
    perturb(pa)
    perturb(mpcn)
    assert torch.equal(logits(pa), logits(mpcn))
    _, layer = next(pa.adapter_layers())
    x = torch.randn(3, layer.in_features)
    expected = layer.base_layer(x) + torch.relu(x @ layer.lora_A.T) @ layer.lora_B.T
    assert torch.allclose(layer(x), expected, atol=1e-6)


# ---------- TriLoRA ----------


@pytest.mark.parametrize("scale", ["one", "alpha_over_r"])
def test_trilora_formula_init_and_output_at_init(scale: str) -> None:
    base, model, _, _ = build("trilora", RANK, scale=scale, lora_alpha=16)
    assert torch.allclose(logits(model), logits(base), atol=1e-6)
    s = 16 / RANK if scale == "alpha_over_r" else 1.0
    for layer in adapter_layers_of(model, TriLoraLayer):
        assert layer.scale == s
        assert torch.count_nonzero(layer.lora_E) == 0
        # both factors Kaiming-uniform(a=√5): U(±1/√fan_in), non-zero
        assert 0 < layer.lora_A.abs().max() <= 1 / math.sqrt(layer.in_features)
        assert 0 < layer.lora_B.abs().max() <= 1 / math.sqrt(RANK)
    perturb(model)
    _, layer = next(model.adapter_layers())
    x = torch.randn(5, layer.in_features)
    expected = layer.base_layer(x) + s * x @ layer.lora_A.T @ torch.diag(layer.lora_E) @ layer.lora_B.T
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert torch.allclose(layer.delta_weight(), s * layer.lora_B @ torch.diag(layer.lora_E) @ layer.lora_A, atol=1e-6)


@pytest.mark.parametrize("name", ["trilora", "flora"])
@pytest.mark.parametrize("spec", [TINY, TINY_LLAMA], ids=["roberta", "llama"])
def test_only_the_core_gets_a_gradient_at_step_0(name: str, spec: DictConfig) -> None:
    """TriLoRA's e and FLoRA's G start at 0: ∂L/∂A and ∂L/∂B carry that factor, so they are exactly zero."""
    _, model, _, _ = build(name, RANK, spec)
    model.train()
    model(**tiny_batch(), labels=LABELS).loss.backward()
    core = "lora_E" if name == "trilora" else "lora_G"
    adapter = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
    assert adapter and all(g is not None for g in adapter.values())
    assert all(torch.count_nonzero(g) == 0 for n, g in adapter.items() if core not in n)
    assert all(torch.count_nonzero(g) > 0 for n, g in adapter.items() if core in n)


@pytest.mark.parametrize("penalty", ["mpco", "adalora_orth"])
def test_trilora_mpco_aux_loss_is_lambda_times_the_penalty(penalty: str) -> None:
    _, model, method, params = build("trilora_mpco", RANK, mpc_lambda=0.5, penalty=penalty)
    perturb(model)
    pairs = [(layer.lora_A, layer.lora_B) for layer in adapter_layers_of(model, TriLoraLayer)]
    assert len(pairs) == 4 and pairs == trilora_factors(model)
    if penalty == "mpco":  # Σ over layers of ‖AAᵀ − I‖² + ‖BᵀB − I‖²
        eye = torch.eye(RANK)
        expected = sum(((a @ a.T - eye) ** 2).sum() + ((b.T @ b - eye) ** 2).sum() for a, b in pairs)
        assert torch.allclose(expected, sum(mpc_penalty([p], "o") for p in pairs), rtol=1e-6)
    else:
        expected = orth_reg(pairs)
    assert method.aux_loss(model, params).item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    assert get_method("trilora").aux_loss(model, params) is None


def test_trilora_mpco_is_trilora_plus_the_penalty() -> None:
    _, plain, _, _ = build("trilora", RANK)
    _, regularised, method, params = build("trilora_mpco", RANK)
    assert params.mpc_lambda == 1e-7 and params.penalty == "mpco"
    perturb(plain)
    perturb(regularised)
    assert torch.equal(logits(plain), logits(regularised))
    assert method.aux_loss(regularised, params).item() > 0


@pytest.mark.parametrize("rank", [2, 16])
def test_trilora_mpco_default_starts_of_the_task_losss_order(rank: int) -> None:
    """At init on RoBERTa-base's six linears per block, λ·penalty with the YAML's λ is of the cross-entropy's order
    (≈ 0.7): within [0.05, 5], and equal to the closed form of Kaiming-uniform A (fan-in `in`), B (fan-in r)."""
    from peftbench.bench.grid import sweep_config

    cfg = sweep_config("none", ["model=roberta-base", "method=trilora_mpco"])  # composed, as a run composes it
    meta = peftbench.bench.param_count.meta_model(cfg.model, "sequence-classification", num_labels=2)
    targets = target_layers(meta, cfg.model.target_sets.all_linear)
    assert len(targets) == 72
    method = get_method("trilora_mpco")
    params = method.parse(OmegaConf.to_container(cfg.method, resolve=True))
    assert params.mpc_lambda == type(params)().mpc_lambda == 1e-7  # the composed config and the dataclass agree
    torch.manual_seed(0)
    layers = torch.nn.ModuleList(
        TriLoraLayer(torch.nn.utils.skip_init(torch.nn.Linear, t.in_features, t.out_features), rank, 1.0, 0.0)
        for t in targets
    )
    value = method.aux_loss(layers, params).item()
    assert 0.05 < value < 5.0

    def expected(n: int, fan_in: int) -> float:
        """E‖G − I_r‖² for the Gram matrix G of r vectors of length n with entries U(±1/√fan_in) (A: rows of
        length in, fan-in in; B: columns of length out, fan-in r): variance a²/3, E x⁴ = a⁴/5 with a² = 1/fan_in."""
        a2 = 1.0 / fan_in
        diag = (n * a2 / 3 - 1) ** 2 + n * (a2**2 / 5 - a2**2 / 9)
        return rank * diag + rank * (rank - 1) * n * a2**2 / 9

    closed = sum(expected(t.in_features, t.in_features) + expected(t.out_features, rank) for t in targets)
    assert value == pytest.approx(params.mpc_lambda * closed, rel=0.03)
    assert 1e-3 * closed > 900  # the earlier default: four orders above the loss at r 2, three at r 16


# ---------- AdaLoRA-MPCo ----------


def peft_orth_reg(model: torch.nn.Module) -> torch.Tensor:
    """R_orth as PEFT's AdaLoraModel.forward computes it: mean over lora_A/lora_B of ‖PPᵀ − I‖_F / ‖PᵀP − I‖_F."""
    total, count = 0.0, 0
    for name, param in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and "default" in name:
            cov = param @ param.T if "lora_A" in name else param.T @ param
            total = total + torch.norm(cov - torch.eye(*cov.size()), p="fro")
            count += 1
    return total / count


def test_adalora_minus_adalora_mpco_loss_is_the_weighted_orth_reg() -> None:
    """The training loss as the harness's trainer forms it: the model's loss plus the method's aux_loss."""
    _, adalora, adalora_method, adalora_params = build("adalora", RANK)
    _, mpco, mpco_method, mpco_params = build("adalora_mpco", RANK)
    assert adalora_params.orth_reg_weight == 0.1 and mpco_params.orth_reg_weight == 0.0
    assert mpco.peft_config["default"].orth_reg_weight == 0.0
    perturb(adalora)  # the same seed and perturbation: identical models but for the regulariser
    perturb(mpco)
    batch = {**tiny_batch(), "labels": LABELS}
    with torch.no_grad():
        loss_adalora = adalora(**batch).loss + adalora_method.aux_loss(adalora, adalora_params)
        assert mpco_method.aux_loss(mpco, mpco_params) is None
        loss_mpco = mpco(**batch).loss
        r_orth = peft_orth_reg(adalora)
    assert r_orth.item() > 0.1
    assert (loss_adalora - loss_mpco).item() == pytest.approx(0.1 * r_orth.item(), rel=1e-5)


def test_peft_adds_no_orth_reg_through_a_task_less_peft_model() -> None:
    """Why AdaLoRA's regulariser is an aux_loss: `get_peft_model` without a task type returns a plain PeftModel,
    whose forward skips AdaLoraModel.forward (where PEFT adds it); were that to change, it would count twice."""
    _, adalora, _, _ = build("adalora", RANK)
    perturb(adalora)
    batch = {**tiny_batch(), "labels": LABELS}
    with torch.no_grad():
        assert torch.equal(adalora(**batch).loss, adalora.get_base_model()(**batch).loss)
        with_reg = adalora.base_model(**batch).loss  # AdaLoraModel.forward: PEFT's own regulariser
        assert (with_reg - adalora.get_base_model()(**batch).loss).item() == pytest.approx(
            0.1 * peft_orth_reg(adalora).item(), rel=1e-5
        )  # the same R_orth as ours


def test_adalora_orth_reg_enters_the_runners_training_loss(store: Path, tmp_path: Path) -> None:
    with_reg = peftbench.bench.run.run(compose_run(store, "method=adalora", "rank=4"))
    without = peftbench.bench.run.run(compose_run(tmp_path / "b", "method=adalora_mpco", "rank=4"))
    assert with_reg["status"] == without["status"] == "ok"
    assert with_reg["final_loss"] > without["final_loss"] + 0.1  # 0.1 · R_orth ≈ 0.1 · √r at AdaLoRA's init


# ---------- FLoRA ----------


@pytest.mark.parametrize("init", ["normal", "kaiming"])
def test_flora_init_formula_and_output_at_init(init: str) -> None:
    base, model, _, _ = build("flora", RANK, init=init, lora_alpha=16)
    assert torch.allclose(logits(model), logits(base), atol=1e-6)
    for layer in adapter_layers_of(model, FloraLayer):
        assert layer.scale == 16 / RANK
        assert layer.lora_G.shape == (RANK, RANK) and torch.count_nonzero(layer.lora_G) == 0
        if init == "kaiming":
            assert 0 < layer.lora_A.abs().max() <= 1 / math.sqrt(layer.in_features)
            assert 0 < layer.lora_B.abs().max() <= 1 / math.sqrt(RANK)
    perturb(model)
    _, layer = next(model.adapter_layers())
    x = torch.randn(5, layer.in_features)
    expected = layer.base_layer(x) + 4.0 * x @ layer.lora_A.T @ layer.lora_G.T @ layer.lora_B.T
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_flora_normal_init_has_std_0_02() -> None:
    torch.manual_seed(0)
    layer = FloraLayer(torch.nn.Linear(512, 1024), rank=16, scale=1.0, dropout=0.0, init="normal")
    for factor in (layer.lora_A, layer.lora_B):
        assert factor.std().item() == pytest.approx(0.02, rel=0.05)
        assert factor.mean().abs().item() < 2e-3


# ---------- SAM-PARSER ----------


@pytest.mark.parametrize("spec", [TINY, TINY_LLAMA], ids=["roberta", "llama"])
def test_sam_parser_svd_reconstructs_w0_and_output_is_base(spec: DictConfig) -> None:
    base, model, method, params = build("sam_parser", None, spec)
    assert not method.uses_rank and params.reproduce_frozen_sigma is False
    for name, layer in model.adapter_layers():
        w0 = base.get_submodule(name).weight
        assert torch.allclose(layer.reference_weight(), w0, atol=1e-5)  # U·diag(σ)·Vᵀ = W0 (fp32)
        assert torch.equal(layer.sigma, layer.sigma0) and layer.sigma_shift.requires_grad
        assert torch.count_nonzero(layer.sigma_shift) == 0 and not layer.sigma0.requires_grad
        assert layer.sigma_shift.shape == (min(layer.in_features, layer.out_features),)
    assert torch.allclose(logits(model), logits(base), atol=1e-6)


def test_sam_parser_forward_is_u_diag_sigma_prime_v() -> None:
    _, model, _, _ = build("sam_parser", None)
    perturb(model, size=0.3)
    for _, layer in model.adapter_layers():
        x = torch.randn(5, layer.in_features)
        expected = x @ layer.reference_weight().T + layer.base_layer.bias  # the reference's F.linear(x, UΣ'Vᵀ, b)
        assert torch.allclose(layer(x), expected, atol=1e-5)
        assert torch.allclose(layer.merged_weight(), layer.reference_weight(), atol=1e-5)


def test_sam_parser_gradients_reach_sigma_unless_frozen_as_the_reference() -> None:
    _, model, _, _ = build("sam_parser", None)
    model.train()
    model(**tiny_batch(), labels=LABELS).loss.backward()
    grads = [layer.sigma_shift.grad for _, layer in model.adapter_layers()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    base, frozen, _, _ = build("sam_parser", None, reproduce_frozen_sigma=True)
    assert count_params(frozen, TINY.head_modules).trainable_params == head_size()  # head-only training
    assert not any(p.requires_grad for _, layer in frozen.adapter_layers() for p in layer.parameters())
    assert torch.allclose(logits(frozen), logits(base), atol=1e-6)


def test_sam_parser_weight_decay_no_longer_shrinks_w0(tmp_path: Path) -> None:
    """The Trainer's AdamW with weight decay 0.1 and lr 0.1, on a loss with no gradient for the singular values:
    decoupled decay alone moves them. It leaves σ' = σ (δ = 0 stays 0), so W' = W0; on σ' itself it would have
    multiplied W0's singular values by (1 − 0.1·0.1)^5 = 0.951."""
    from transformers import Trainer, TrainingArguments

    _, model, _, _ = build("sam_parser", None)
    layers = [layer for _, layer in model.adapter_layers()]
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=0.1, weight_decay=0.1, lr_scheduler_type="constant",
        use_cpu=True, report_to="none",
    )  # fmt: skip
    trainer = Trainer(model=model, args=args)
    optimizer = trainer.create_optimizer()
    decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    assert all(id(layer.sigma_shift) in decayed for layer in layers)  # decay reaches the trained tensor …
    for _ in range(5):
        for layer in layers:
            layer.sigma_shift.grad = torch.zeros_like(layer.sigma_shift)
        optimizer.step()
    for layer in layers:  # … and leaves W0 as it was
        assert torch.count_nonzero(layer.sigma_shift) == 0 and torch.equal(layer.sigma, layer.sigma0)
        torch.testing.assert_close(layer.merged_weight(), layer.base_layer.weight, atol=0, rtol=0)
    # the same optimizer step on σ' as a parameter (the earlier form) shrinks it: what the test rules out
    sigma_prime = torch.nn.Parameter(layers[0].sigma0.clone())
    old = torch.optim.AdamW([sigma_prime], lr=0.1, weight_decay=0.1)
    for _ in range(5):
        sigma_prime.grad = torch.zeros_like(sigma_prime)
        old.step()
    torch.testing.assert_close(sigma_prime.detach(), layers[0].sigma0 * 0.99**5)


# ---------- LieRA ----------


@pytest.mark.parametrize("exact_exp", [False, True])
def test_liera_formula_and_output_at_init(exact_exp: bool) -> None:
    base, model, _, _ = build("liera", RANK, exact_exp=exact_exp, lora_alpha=16)
    assert torch.allclose(logits(model), logits(base), atol=1e-6)
    for layer in adapter_layers_of(model, LieraLayer):
        assert torch.count_nonzero(layer.lora_B) == 0
        assert 0 < layer.lora_A.abs().max() <= 1 / math.sqrt(layer.in_features)
    perturb(model, size=0.2)
    for _, layer in model.adapter_layers():
        w0 = layer.base_layer.weight
        product = 4.0 * layer.lora_B @ layer.lora_A
        merged = w0 * torch.exp(product) if exact_exp else w0 + w0 * product
        assert torch.allclose(layer.merged_weight(), merged, atol=1e-6)
        x = torch.randn(5, layer.in_features)
        assert torch.allclose(layer(x), x @ merged.T + layer.base_layer.bias, atol=1e-5)


@pytest.mark.parametrize("exact_exp", [False, True])
def test_liera_update_vanishes_where_w0_is_zero(exact_exp: bool) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40)
    with torch.no_grad():
        linear.weight[torch.rand(40, 24) < 0.3] = 0.0
    layer = LieraLayer(linear, rank=4, scale=2.0, dropout=0.0, exact_exp=exact_exp)
    with torch.no_grad():
        layer.lora_B.normal_()
    delta = layer.delta_weight()
    zero = linear.weight == 0
    assert zero.any() and torch.count_nonzero(delta[zero]) == 0
    assert torch.count_nonzero(delta[~zero]) == (~zero).sum()


# ---------- every method: save/load, merge, a training step ----------


@pytest.mark.parametrize(
    ("name", "values"),
    [(n, {}) for n in NAMES] + [("liera", {"exact_exp": True}), ("flora", {"init": "kaiming"})],
    ids=[*NAMES, "liera-exp", "flora-kaiming"],
)
def test_save_then_load_gives_identical_logits(name: str, values: dict, tmp_path: Path) -> None:
    rank = rank_of(name)
    _, model, method, params = build(name, rank, **values)
    perturb(model)
    expected = logits(model)
    method.save(model, str(tmp_path / "adapter"))
    loaded = method.load(tiny_classifier(), str(tmp_path / "adapter"), params, context(rank)).eval()
    assert torch.allclose(logits(loaded), expected, atol=1e-5)


def test_sam_parser_saves_only_the_change_of_sigma(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    _, model, method, _ = build("sam_parser", None)
    method.save(model, str(tmp_path / "adapter"))
    keys = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")).keys()
    adapter_keys = [k for k in keys if "classifier" not in k]
    assert len(adapter_keys) == 4 and all(k.endswith(".sigma_shift") for k in adapter_keys)


@pytest.mark.parametrize(
    ("name", "values"),
    [(n, {}) for n in MERGEABLE] + [("liera", {"exact_exp": True})],
    ids=[*MERGEABLE, "liera-exp"],
)
def test_merge_and_unload_keeps_outputs(name: str, values: dict) -> None:
    _, model, _, _ = build(name, rank_of(name), **values)
    perturb(model, size=0.2)
    expected = logits(model)
    merged = model.merge_and_unload()
    assert not any("lora" in n or "sigma" in n for n, _ in merged.named_parameters())
    assert torch.allclose(logits(merged), expected, atol=1e-5)


def test_pa_refuses_to_merge() -> None:
    _, model, _, _ = build("pa", RANK)
    with pytest.raises(NotMergeable, match="no input-independent"):
        model.merge_and_unload()


@pytest.mark.parametrize("name", ["trilora", "flora", "sam_parser", "liera", "pa"])
def test_additive_layers_wrap_gpt2_conv1d(name: str, tmp_path: Path) -> None:
    """GPT-2's c_attn stores W0 as in × out: the layers that read W0 (SAM-PARSER, LieRA) transpose it."""
    rank = rank_of(name)
    base, model, method, params = build(name, rank, TINY_GPT2)
    assert torch.allclose(logits(model), logits(base), atol=1e-5)
    perturb(model, size=0.2)
    expected = logits(model)
    assert not torch.allclose(expected, logits(base), atol=1e-4)
    method.save(model, str(tmp_path / "a"))
    loaded = method.load(tiny_classifier(spec=TINY_GPT2), str(tmp_path / "a"), params, context(rank, spec=TINY_GPT2))
    assert torch.allclose(logits(loaded.eval()), expected, atol=1e-5)
    if name != "pa":
        assert torch.allclose(logits(model.merge_and_unload()), expected, atol=1e-5)


@pytest.mark.parametrize("spec", [TINY, TINY_LLAMA], ids=["roberta", "llama"])
@pytest.mark.parametrize("name", NAMES)
def test_one_training_step(name: str, spec: DictConfig) -> None:
    _, model, method, params = build(name, rank_of(name), spec)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model.train()
    loss = model(**tiny_batch(), labels=LABELS).loss
    aux = method.aux_loss(model, params)
    total = loss if aux is None else loss + aux
    total.backward()
    optimizer.step()
    assert torch.isfinite(total)
    adapter = [n for n in trainable if spec.head_modules[0] not in n.split(".")]
    assert adapter and any(not torch.equal(before[n], trainable[n]) for n in adapter)
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if not p.requires_grad)
