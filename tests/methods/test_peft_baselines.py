"""The baselines HF PEFT implements: closed-form counts, init identities, optimizer groups, save/load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from peftbench.bench.measure import count_params
from peftbench.core.errors import ConfigError
from peftbench.core.paths import CONF_DIR
from peftbench.methods.base import get_method
from peftbench.methods.targets import TargetLayer, target_layers

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


KASA_LLAMA_TARGETS = ["q_proj", "k_proj", "down_proj"]  # 32→32, 32→16 (GQA), 64→32: in = out and in > out


def _kasa_on_tiny_llama(rank: int, **values: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    base = tiny_classifier(spec=TINY_LLAMA)
    method = get_method("kasa")
    params = method.parse({"name": "kasa", **values})
    ctx = context(rank, targets=KASA_LLAMA_TARGETS, spec=TINY_LLAMA)
    method.validate(params, base, ctx)
    torch.manual_seed(1)
    return base, method.adapt(copy.deepcopy(base), params, ctx).eval()


def _reference_truncated(w0: torch.Tensor, rank: int) -> torch.Tensor:
    """juyongjiang/KaSA peft/src/peft/tuners/lora/layer.py:133-138, as written (svd_rank = in_features − r)."""
    svd_rank = w0.shape[1] - rank
    u, s, vh = torch.linalg.svd(w0.to(torch.float32), full_matrices=False)
    return u[:, :svd_rank] @ torch.diag(s[:svd_rank]) @ vh[:svd_rank, :]


def _kasa_base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The (truncated) base weight of every KaSA layer, by its name in the unwrapped model."""
    return {
        name.removeprefix("base_model.model."): m.base_layer.weight.detach()
        for name, m in model.named_modules()
        if hasattr(m, "lora_diag")
    }


@pytest.mark.parametrize("rank", [4, 20])
def test_kasa_reference_truncation_keeps_in_minus_r_components(rank: int) -> None:
    """The default keeps what the reference keeps: all of k_proj (32→16) and down_proj (64→32) at r 4, and
    in − r = 12 of k_proj's 16 at r 20 (which PEFT's form refuses); PEFT's form drops r of min(in, out)."""
    base, model = _kasa_on_tiny_llama(rank)
    weights = _kasa_base_weights(model)
    assert len(weights) == 6
    expected_kept = {
        4: {"q_proj": 28, "k_proj": 16, "down_proj": 32},
        20: {"q_proj": 12, "k_proj": 12, "down_proj": 32},
    }
    for key, weight in weights.items():
        w0 = base.get_submodule(key).weight.detach()
        torch.testing.assert_close(weight, _reference_truncated(w0, rank), atol=1e-5, rtol=0)
        assert int(torch.linalg.matrix_rank(weight, atol=1e-4)) == expected_kept[rank][key.rsplit(".", 1)[1]]
    if rank > 15:
        return
    _, peft_form = _kasa_on_tiny_llama(rank, truncation="peft")
    peft_weights = _kasa_base_weights(peft_form)
    for weight in peft_weights.values():
        assert int(torch.linalg.matrix_rank(weight, atol=1e-4)) == min(weight.shape) - rank
    # where in > out the two rules differ (k_proj, down_proj); where in = out they agree (q_proj)
    q, k = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
    torch.testing.assert_close(weights[q], peft_weights[q], atol=1e-5, rtol=0)
    assert not torch.allclose(weights[k], peft_weights[k], atol=1e-3)


def test_kasa_reference_truncation_survives_save_and_load(tmp_path: Path) -> None:
    """`load` re-truncates the fresh base by the adapter's own rule (PEFT's alone would drop r of k_proj)."""
    _, model = _kasa_on_tiny_llama(RANK)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    batch = tiny_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    method = get_method("kasa")
    method.save(model, str(tmp_path / "adapter"))
    params = method.parse({"name": "kasa"})
    ctx = context(RANK, targets=KASA_LLAMA_TARGETS, spec=TINY_LLAMA)
    loaded = method.load(tiny_classifier(spec=TINY_LLAMA), str(tmp_path / "adapter"), params, ctx).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-5, rtol=0)
    from peft.tuners.lora.variants import KasaLinearVariant
    from peftbench.methods.kasa import _reference_truncate

    assert KasaLinearVariant.__dict__["_truncate_base_weight"].__func__ is not _reference_truncate  # restored


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
    _, model, _, params = build("kasa", RANK)
    _, silent, _, silent_params = build("kasa", RANK, beta=0.0, gamma=0.0)
    assert method.aux_loss(model, params).item() > 0
    assert method.aux_loss(silent, silent_params).item() == 0


def _literal_reference_loss(factors: list, beta: float, gamma: float) -> float:
    """KaSA's main.py as written: full-size identities, unsquared Frobenius norms, mean over layers."""
    total = 0.0
    for diag, a, b in factors:
        a, b = a.double(), b.double()
        l2 = (diag.double() ** 2).sum()
        l3 = torch.linalg.norm(a.T @ a - torch.eye(a.shape[1], dtype=torch.float64)) + torch.linalg.norm(
            b @ b.T - torch.eye(b.shape[0], dtype=torch.float64)
        )
        total += float((beta * l2 + gamma * l3).detach())
    return total / len(factors)


def test_kasa_reference_aux_loss_on_hand_made_factors() -> None:
    from peftbench.methods.kasa import reference_kasa_loss

    a1 = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])  # r = 2, in = 3
    b1 = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])  # out = 4
    d1 = torch.tensor([0.5, -1.0])
    a2 = torch.eye(2, 5)  # orthonormal rows: ‖AᵀA − I_5‖ = √3 (three zero directions)
    b2 = torch.zeros(3, 2)  # ‖BBᵀ − I_3‖ = √3
    d2 = torch.tensor([2.0, 0.0])
    factors = [(d1, a1, b1), (d2, a2, b2)]
    got = reference_kasa_loss(factors, beta=0.1, gamma=0.3).item()
    assert got == pytest.approx(_literal_reference_loss(factors, 0.1, 0.3), rel=1e-6)
    # by hand for the second layer: β·4 + γ·(√3 + √3)
    assert _literal_reference_loss([factors[1]], 0.1, 0.3) == pytest.approx(0.4 + 0.3 * 2 * 3**0.5)


def test_kasa_aux_forms_on_a_model() -> None:
    from peftbench.methods.kasa import kasa_factors

    method = get_method("kasa")
    _, model, _, params = build("kasa", RANK, beta=0.2, gamma=0.5)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    factors = kasa_factors(model)
    assert len(factors) == 4
    assert method.aux_loss(model, params).item() == pytest.approx(_literal_reference_loss(factors, 0.2, 0.5), rel=1e-5)
    peft_params = method.parse({"name": "kasa", "beta": 0.2, "gamma": 0.5, "aux_form": "peft"})
    assert method.aux_loss(model, peft_params).item() == pytest.approx(model.base_model._get_kasa_loss().item())


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


def test_lora_ga_reference_init_on_a_known_gradient() -> None:
    """A = c·V_rᵀ, B = c·U[:, r:2r] with c = out^(1/4)/√γ and no singular values; W_res + s·B·A = W0."""
    from peft import LoraConfig, get_peft_model
    from peftbench.methods.lora_ga import reference_init

    torch.manual_seed(0)
    out_f, in_f, r, gamma = 48, 32, 4, 16.0
    u, _ = torch.linalg.qr(torch.randn(out_f, out_f))
    v, _ = torch.linalg.qr(torch.randn(in_f, in_f))
    s = torch.tensor([2.0**-i for i in range(in_f)])  # well separated: the randomised SVD is exact here
    grad = u[:, :in_f] @ torch.diag(s) @ v.T
    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(in_f, out_f)), LoraConfig(r=r, target_modules=["0"]))
    layer = model.base_model.model[0]
    w0 = layer.base_layer.weight.detach().clone()
    reference_init(layer, grad, "ArB2r", gamma)
    a, b, scale = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    c = out_f**0.25 / gamma**0.5
    assert torch.allclose((a @ v[:, :r]).abs(), c * torch.eye(r), atol=1e-4)  # rows ±c·v_i, i < r
    assert torch.allclose((u[:, r : 2 * r].T @ b).abs(), c * torch.eye(r), atol=1e-4)  # columns ±c·u_i, r <= i < 2r
    assert torch.allclose(layer.base_layer.weight + scale * b @ a, w0, atol=1e-5)


@pytest.mark.parametrize("init_form", ["reference", "peft"])
def test_lora_ga_init_forms_on_a_model(init_form: str) -> None:
    base, model, _, _ = build("lora_ga", RANK, init_form=init_form)
    c = 32**0.25 / 16**0.5  # out^(1/4) / √γ on the tiny model's 32 × 32 query
    eye = torch.eye(RANK)
    for name in ("roberta.encoder.layer.0.attention.self.query", "roberta.encoder.layer.1.attention.self.value"):
        layer = model.base_model.model.get_submodule(name)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        residual = layer.base_layer.weight + layer.scaling["default"] * b @ a
        assert torch.allclose(residual, base.get_submodule(name).weight, atol=1e-5)  # W_res + s·B·A = W0
        if init_form == "reference":  # orthonormal singular vectors times c on both factors
            assert torch.allclose(a @ a.T, c**2 * eye, atol=1e-4)
            assert torch.allclose(b.T @ b, c**2 * eye, atol=1e-4)
        else:  # PEFT: A unscaled, B's columns c·σ_i (the gradient's singular values, tiny on a random model)
            assert torch.allclose(a @ a.T, eye, atol=1e-4)
            assert b.norm(dim=0).max() < 1e-3 * c


def test_loraplus_optimizer_takes_the_trainers_betas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LoRA+ sets each group's lr; Adam's betas stay the trainer's (the LoRA+ GLUE protocol runs β2 = 0.99)."""
    import peftbench.bench.run
    import peftbench.bench.train

    from tests.conftest import compose_run

    seen: dict = {}
    real = peftbench.bench.train.BenchTrainer.create_optimizer

    def capture(self, model=None):  # noqa: ANN001
        optimizer = real(self, model)
        seen["groups"] = optimizer.param_groups
        return optimizer

    monkeypatch.setattr(peftbench.bench.train.BenchTrainer, "create_optimizer", capture)
    record = peftbench.bench.run.run(compose_run(tmp_path, "method=loraplus", "trainer.adam_beta2=0.99", "lr=1e-3"))
    assert record["status"] == "ok", record["error"]
    groups = [g for g in seen["groups"] if g["params"]]
    assert {tuple(g["betas"]) for g in groups} == {(0.9, 0.99)}
    assert {g["lr"] for g in groups} == {1e-3, 16e-3}


def test_kasa_refuses_a_rank_that_leaves_no_singular_component() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^rank=32 leaves no singular component of target layer .*\(in = 32\) for KaSA "
        r"\(truncation=reference\); valid ranks: 1..31$",
    ):
        build("kasa", 32)  # the tiny model's layers are 32 x 32
    with pytest.raises(ConfigError, match=r"\(min\(in, out\) = 16\) for KaSA \(truncation=peft\); valid ranks: 1..15$"):
        build("kasa", 16, TINY_LLAMA, truncation="peft")  # k_proj is 32 → 16
    build("kasa", 16, TINY_LLAMA)  # the reference keeps in − r = 16 of k_proj's 16
