"""The module-level bottleneck adapters (methods/module_adapters.py): HAdapter, PAdapter, Series, Parallel.

Every exact identity of their papers: identity inits give the base model bit for bit, the
parameter counts equal the closed forms on the tiny models and the papers' counts on the real architectures
(meta device), each placement computes its reference's formula, and the adapters train, save, load, disable
and refuse to merge like the other native methods.
"""

from __future__ import annotations

from pathlib import Path

import peftbench.bench.run
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from peftbench.bench.measure import count_params
from peftbench.bench.models import load_model
from peftbench.bench.param_count import count_on_meta, meta_model
from peftbench.core.errors import ConfigError
from peftbench.core.paths import CONF_DIR
from peftbench.methods.base import RunContext, get_method
from peftbench.methods.injection import NotMergeable, adapter_layers_of
from peftbench.methods.module_adapters import Bottleneck, ParallelLayer, SeriesLayer, SublayerAdapter

from tests.conftest import compose_run
from tests.helpers import TINY, TINY_LLAMA, build, context, logits, perturb, tiny_batch, tiny_classifier

ENCODER = ["hadapter", "padapter"]
DECODER = ["series_adapter", "parallel_adapter"]
ALL = ENCODER + DECODER
IDENTITY = {"hadapter": "zero_up", "padapter": "zero_up", "series_adapter": "mam_adapter",
            "parallel_adapter": "mam_adapter"}  # fmt: skip
TINY_BERT = OmegaConf.merge(TINY, {"name": "tiny-bert", "architecture": "bert"})
TINY_DEBERTA = OmegaConf.merge(TINY, {"name": "tiny-deberta", "architecture": "deberta-v2",
                                      "head_modules": ["pooler", "classifier"]})  # fmt: skip
TINY_GPT2 = OmegaConf.load(CONF_DIR / "model" / "tiny-gpt2.yaml")
TINY_CLIP = OmegaConf.load(CONF_DIR / "model" / "tiny-clip.yaml")
D, FFN, LAYERS = 32, 64, 2  # the tiny models' widths and depth


def spec_of(name: str) -> DictConfig:
    return TINY if name in ENCODER else TINY_LLAMA


def rank_of(name: str) -> int | None:
    return 2 if name in ENCODER else None


def adapter_count(model: torch.nn.Module, head_modules: list[str]) -> int:
    counts = count_params(model, head_modules)
    return counts.trainable_params - counts.head_params


# ---------- identities at init ----------


@pytest.mark.parametrize(
    ("name", "spec"),
    [("hadapter", TINY), ("hadapter", TINY_BERT), ("hadapter", TINY_DEBERTA), ("padapter", TINY),
     ("padapter", TINY_BERT), ("padapter", TINY_DEBERTA), ("series_adapter", TINY_LLAMA),
     ("series_adapter", TINY_GPT2), ("parallel_adapter", TINY_LLAMA), ("parallel_adapter", TINY_GPT2)],
    ids=lambda v: v if isinstance(v, str) else v.name,
)  # fmt: skip
def test_identity_init_gives_exactly_the_base_and_bert_init_does_not(name: str, spec: DictConfig) -> None:
    base, model, _, _ = build(name, rank_of(name), spec, init=IDENTITY[name])
    assert torch.equal(logits(model), logits(base))  # W_up = 0: h + 0 = h bit for bit
    _, near, _, _ = build(name, rank_of(name), spec)  # the references' default: N(0, 0.02²), near-identity only
    assert not torch.equal(logits(near), logits(base))
    assert torch.allclose(logits(near), logits(base), atol=0.05)


@pytest.mark.parametrize("name", DECODER)
def test_identity_init_on_clip(name: str) -> None:
    torch.manual_seed(0)
    base = load_model(TINY_CLIP, "image-classification", num_labels=10).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(pixel_values=pixels).logits
    method = get_method(name)
    params = method.parse({"init": "mam_adapter"})
    ctx = RunContext(rank=8, lr=1e-3, seed=0, target_modules=[], head_modules=["classifier"], total_steps=1)
    method.validate(params, base, ctx)
    model = method.adapt(base, params, ctx).eval()
    assert {n.rsplit(".", 1)[-1] for n, _ in model.adapter_layers()} == ({"fc2"} if name == "series_adapter" else
                                                                        {"fc1", "fc2"})  # fmt: skip
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels).logits, expected)


# ---------- parameter counts ----------


@pytest.mark.parametrize("spec", [TINY, TINY_BERT, TINY_DEBERTA], ids=lambda s: s.name)
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_encoder_counts_equal_the_closed_forms(spec: DictConfig, rank: int) -> None:
    head = list(spec.head_modules)
    _, houlsby, _, _ = build("hadapter", rank, spec)
    m = 4 * rank
    assert adapter_count(houlsby, head) == LAYERS * 2 * (2 * D * m + m + D)  # two per block
    _, pfeiffer, _, _ = build("padapter", rank, spec)
    m = 8 * rank
    assert adapter_count(pfeiffer, head) == LAYERS * (2 * D * m + m + D)  # FFN only
    _, fixed, _, _ = build("hadapter", rank, spec, bottleneck=5)  # a fixed m: the rank is ignored
    assert adapter_count(fixed, head) == LAYERS * 2 * (2 * D * 5 + 5 + D)
    _, per_rank, _, _ = build("padapter", rank, spec, size_per_rank=3)
    assert adapter_count(per_rank, head) == LAYERS * (2 * D * 3 * rank + 3 * rank + D)


@pytest.mark.parametrize("bottleneck", [256, 7])
def test_decoder_counts_equal_the_closed_forms(bottleneck: int) -> None:
    m = bottleneck
    _, series, _, _ = build("series_adapter", None, TINY_LLAMA, bottleneck=m)
    assert adapter_count(series, ["score"]) == LAYERS * 2 * D * m  # 2dm after each down_proj
    _, parallel, _, _ = build("parallel_adapter", None, TINY_LLAMA, bottleneck=m)
    assert adapter_count(parallel, ["score"]) == LAYERS * 2 * m * (D + FFN)  # m(in + out) on up and down
    _, gpt2, _, _ = build("parallel_adapter", None, TINY_GPT2, bottleneck=m)
    assert adapter_count(gpt2, ["score"]) == LAYERS * 2 * m * (D + 4 * D)  # GPT-2's Conv1D c_fc / c_proj


# the papers' counts: RoBERTa-base r=2 -> 2.51‰ (printed 2.5) / 2.43‰ of 125M, RoBERTa-large 2.35‰ / 2.29‰ of 355M;
# DeBERTaV3-base has RoBERTa-base's per-layer shapes
ENCODER_ROWS = [
    ("roberta-base", "hadapter", 2, 313_536, 125e6, 2.51), ("roberta-base", "padapter", 2, 304_320, 125e6, 2.43),
    ("roberta-base", "hadapter", 16, 2_379_264, 125e6, 19.03),
    ("roberta-base", "padapter", 16, 2_370_048, 125e6, 18.96),
    ("roberta-large", "hadapter", 2, 835_968, 355e6, 2.35), ("roberta-large", "padapter", 2, 811_392, 355e6, 2.29),
    ("deberta-v3-base", "hadapter", 2, 313_536, 184e6, 1.70),
]  # fmt: skip


@pytest.mark.parametrize(("model", "name", "rank", "expected", "backbone", "permille"), ENCODER_ROWS)
def test_encoder_counts_on_the_real_architectures(
    model: str, name: str, rank: int, expected: int, backbone: float, permille: float
) -> None:
    spec = OmegaConf.load(CONF_DIR / "model" / f"{model}.yaml")
    base = meta_model(spec, "sequence-classification", num_labels=2)
    method = get_method(name)
    params = method.parse({})
    ctx = RunContext(rank=rank, lr=1e-3, seed=0, target_modules=list(spec.target_modules),
                     head_modules=list(spec.head_modules), total_steps=1)  # fmt: skip
    method.validate(params, base, ctx)
    adapted = method.adapt(base, params, ctx)
    assert adapter_count(adapted, list(spec.head_modules)) == expected
    assert round(expected / backbone * 1000, 2) == permille
    assert all(p.is_meta for p in adapted.parameters())  # created on the meta device: no memory


def test_the_harness_counts_hadapter_as_the_paper_does() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=roberta-base", "method=hadapter", "rank=2", "task=glue_rte"])
    assert count_on_meta(cfg).adapter == 313_536


@pytest.mark.parametrize(("name", "expected", "pct"), [("series_adapter", 67_108_864, 0.99),
                                                       ("parallel_adapter", 247_463_936, 3.54)])  # fmt: skip
def test_decoder_counts_on_llama_7b(name: str, expected: int, pct: float) -> None:
    """LLM-Adapters' table prints % of (base + adapter), PEFT's print_trainable_parameters."""
    spec = OmegaConf.load(CONF_DIR / "model" / "llama-7b.yaml")
    base = meta_model(spec, "causal-lm")
    assert count_params(base, []).total_params == 6_738_415_616
    method = get_method(name)
    params = method.parse({})
    ctx = RunContext(rank=None, lr=1e-3, seed=0, target_modules=list(spec.target_modules), head_modules=[],
                     total_steps=1)  # fmt: skip
    method.validate(params, base, ctx)
    counts = count_params(method.adapt(base, params, ctx), [])
    assert counts.trainable_params == expected
    assert round(counts.trainable_pct, 2) == pct


# ---------- the formulas and placements ----------


def bottleneck(adapter: Bottleneck, z: torch.Tensor, act) -> torch.Tensor:  # noqa: ANN001
    down_bias = 0 if adapter.down_bias is None else adapter.down_bias
    up_bias = 0 if adapter.up_bias is None else adapter.up_bias
    return act(z @ adapter.down_weight.T + down_bias) @ adapter.up_weight.T + up_bias


def test_houlsby_sits_in_both_output_sublayers_before_the_residual_and_layernorm() -> None:
    _, model, _, _ = build("hadapter", 2)
    perturb(model, size=0.1)
    block = model.model.roberta.encoder.layer[0]
    for wrapper, width in ((block.attention.output, D), (block.output, FFN)):
        assert isinstance(wrapper, SublayerAdapter)
        sub = wrapper.base_layer
        hidden, residual = torch.randn(3, 5, width), torch.randn(3, 5, D)
        h = sub.dense(hidden)
        expected = sub.LayerNorm(h + bottleneck(wrapper.adapter, h, F.silu) + residual)
        assert torch.allclose(wrapper(hidden, residual), expected, atol=1e-6)


def test_pfeiffer_sits_in_the_ffn_only_and_applies_the_layernorm_twice() -> None:
    _, model, _, _ = build("padapter", 2)
    perturb(model, size=0.1)
    block = model.model.roberta.encoder.layer[0]
    assert not isinstance(block.attention.output, SublayerAdapter)
    wrapper = block.output
    sub = wrapper.base_layer
    hidden, residual = torch.randn(3, 5, FFN), torch.randn(3, 5, D)
    h = sub.dense(hidden)
    z = sub.LayerNorm(h + residual)
    expected = sub.LayerNorm(h + bottleneck(wrapper.adapter, z, F.relu) + residual)  # residual = the pre-LN h
    assert torch.allclose(wrapper(hidden, residual), expected, atol=1e-6)


def test_series_sits_after_down_proj_without_biases() -> None:
    _, model, _, _ = build("series_adapter", None, TINY_LLAMA, bottleneck=8, scaling=0.5)
    perturb(model, size=0.1)
    layers = adapter_layers_of(model, SeriesLayer)
    assert [n for n, _ in model.adapter_layers()] == [f"model.layers.{i}.mlp.down_proj" for i in range(LAYERS)]
    layer = layers[0]
    assert layer.adapter.down_bias is None and layer.adapter.up_bias is None
    x = torch.randn(3, 5, FFN)
    h = layer.base_layer(x)
    assert torch.allclose(layer(x), h + 0.5 * bottleneck(layer.adapter, h, torch.tanh), atol=1e-6)


def test_series_before_ffn_inputs_as_llm_adapters_math_command() -> None:
    """LA's math command puts the series adapter on gate_proj and up_proj: before each (its mh_adapter)."""
    _, model, _, _ = build("series_adapter", None, TINY_LLAMA, bottleneck=8, adapter_modules=["up_proj", "gate_proj"])
    perturb(model, size=0.1)
    layers = dict(model.adapter_layers())
    assert sorted(n.rsplit(".", 1)[-1] for n in layers) == ["gate_proj", "gate_proj", "up_proj", "up_proj"]
    assert adapter_count(model, ["score"]) == LAYERS * 2 * 2 * D * 8  # 2dm per linear: twice the default
    layer = layers["model.layers.0.mlp.up_proj"]
    x = torch.randn(3, 5, D)
    assert torch.allclose(layer(x), layer.base_layer(x + bottleneck(layer.adapter, x, torch.tanh)), atol=1e-6)


def test_parallel_sits_beside_up_and_down_proj() -> None:
    _, model, _, _ = build("parallel_adapter", None, TINY_LLAMA, bottleneck=8, scaling=2.0)
    perturb(model, size=0.1)
    names = [n.rsplit(".", 1)[-1] for n, _ in model.adapter_layers()]
    assert names == ["up_proj", "down_proj"] * LAYERS  # gate_proj is not adapted
    for layer in adapter_layers_of(model, ParallelLayer):
        x = torch.randn(3, 5, layer.in_features)
        expected = layer.base_layer(x) + 2.0 * bottleneck(layer.adapter, x, torch.tanh)
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_adapter_dropout_drops_the_adapters_input_in_training_only() -> None:
    _, model, _, _ = build("series_adapter", None, TINY_LLAMA, bottleneck=8, dropout=0.5)
    perturb(model, size=0.1)
    layer = adapter_layers_of(model, SeriesLayer)[0]
    x = torch.randn(4, FFN)
    layer.train()
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)
    h = layer.base_layer(x)
    dropped = F.dropout(h, 0.5)
    assert torch.allclose(out, h + torch.tanh(dropped @ layer.adapter.down_weight.T) @ layer.adapter.up_weight.T)
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_inits() -> None:
    torch.manual_seed(0)
    big = Bottleneck(768, 64, 768, "silu", True)
    big.initialise("bert")
    assert big.down_weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert big.up_weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert not big.down_bias.any() and not big.up_bias.any()
    big.initialise("zero_up")
    assert big.down_weight.std().item() == pytest.approx(0.02, rel=0.05) and not big.up_weight.any()
    mam = Bottleneck(768, 64, 768, "tanh", False)
    mam.initialise("mam_adapter")  # Kaiming-uniform(a=√5): U(±1/√in)
    assert mam.down_weight.abs().max().item() <= 1 / 768**0.5
    assert mam.down_weight.std().item() == pytest.approx(1 / (3 * 768) ** 0.5, rel=0.05)
    assert not mam.up_weight.any() and mam.down_bias is None


# ---------- save / load, disable, merge, gradients ----------


@pytest.mark.parametrize("name", ALL)
def test_save_then_load_gives_identical_logits(name: str, tmp_path: Path) -> None:
    spec, rank = spec_of(name), rank_of(name)
    _, model, method, params = build(name, rank, spec)
    perturb(model, size=0.1)
    expected = logits(model)
    method.save(model, str(tmp_path / "adapter"))
    loaded = method.load(tiny_classifier(spec=spec), str(tmp_path / "adapter"), params, context(rank, spec=spec))
    assert torch.equal(logits(loaded.eval()), expected)


@pytest.mark.parametrize("name", ALL)
def test_disable_adapter_gives_the_base_model(name: str) -> None:
    spec = spec_of(name)
    base, model, _, _ = build(name, rank_of(name), spec)
    perturb(model, size=0.5)
    head = spec.head_modules[0]
    with torch.no_grad():
        getattr(base, head).load_state_dict(getattr(model.model, head).state_dict())  # the head stays as trained
    adapted = logits(model)
    with model.disable_adapter():
        plain = logits(model)
    assert torch.equal(plain, logits(base))
    assert not torch.allclose(plain, adapted, atol=1e-4)
    assert torch.equal(logits(model), adapted)  # re-enabled after the block
    assert torch.equal(logits(model.base_copy().eval()), logits(base))


@pytest.mark.parametrize("name", ALL)
def test_merge_refuses_and_leaves_the_model_intact(name: str) -> None:
    _, model, _, _ = build(name, rank_of(name), spec_of(name))
    before = logits(model)
    with pytest.raises(NotMergeable, match="nonlinear in its input and cannot merge"):
        model.merge_and_unload()
    assert torch.equal(logits(model), before)


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_only_adapters_and_head(name: str) -> None:
    spec = spec_of(name)
    _, model, _, _ = build(name, rank_of(name), spec)
    perturb(model, size=0.1)
    model.train()
    model(**tiny_batch(), labels=torch.tensor([0, 1, 1])).loss.backward()
    head = spec.head_modules[0]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable  # every adapter tensor and the head get a gradient, nothing else
    assert all(".adapter." in n or n.startswith(f"model.{head}.") for n in trainable)
    assert not any("norm" in n.lower() for n in trainable)  # LayerNorms stay frozen


# ---------- bad input ----------


@pytest.mark.parametrize(
    ("name", "spec", "kind"),
    [("hadapter", TINY_LLAMA, "llama"), ("hadapter", TINY_GPT2, "gpt2"), ("padapter", TINY_LLAMA, "llama"),
     ("padapter", TINY_GPT2, "gpt2"), ("series_adapter", TINY, "roberta"), ("parallel_adapter", TINY, "roberta"),
     ("series_adapter", TINY_BERT, "bert")],
)  # fmt: skip
def test_wrong_architecture_is_a_one_line_config_error(name: str, spec: DictConfig, kind: str) -> None:
    supported = "bert, deberta-v2, roberta" if name in ENCODER else "clip, clip_vision_model, gpt2, llama"
    with pytest.raises(ConfigError, match=f"model type '{kind}'.*valid choices: {supported}$") as info:
        build(name, 2, spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ENCODER)
def test_encoder_adapters_refuse_clip(name: str) -> None:
    model = load_model(TINY_CLIP, "image-classification", num_labels=10)
    method = get_method(name)
    ctx = RunContext(rank=8, lr=1e-3, seed=0, target_modules=[], head_modules=["classifier"], total_steps=1)
    with pytest.raises(ConfigError, match="model type 'clip'"):
        method.validate(method.parse({}), model, ctx)


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [("hadapter", {"size_per_rank": 0}, "method.size_per_rank=0 is not valid"),
     ("padapter", {"bottleneck": -1}, "method.bottleneck=-1 is not valid"),
     ("hadapter", {"init": "mam_adapter"}, "method.init='mam_adapter' is not valid; expected one of 'bert', 'zero_up'"),
     ("series_adapter", {"bottleneck": 0}, "method.bottleneck=0 is not valid"),
     ("parallel_adapter", {"dropout": 1.0}, r"method.dropout=1.0 is not valid; give a value in \[0, 1\)"),
     ("series_adapter", {"init": "zero_up"}, "expected one of 'bert', 'mam_adapter'"),
     ("parallel_adapter", {"scaling": float("inf")}, "method.scaling=inf is not valid"),
     ("series_adapter", {"rank": 4}, "unknown key method.rank")],
)  # fmt: skip
def test_bad_settings_are_one_line_config_errors(name: str, values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        get_method(name).parse(values)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "spec", "modules", "message"),
    [("series_adapter", TINY_LLAMA, ["w2"], "match no linear; valid choices: mlp.gate_proj, mlp.up_proj"),
     ("series_adapter", TINY_LLAMA, ["q_proj"], "matches 'model.layers.0.self_attn.q_proj', which is not an FFN"),
     ("series_adapter", TINY_GPT2, ["c_proj"], "matches 'transformer.h.0.attn.c_proj', which is not an FFN linear"),
     ("parallel_adapter", TINY_LLAMA, ["nothing"], r"target_modules \['nothing'\] match no linear layer")],
)  # fmt: skip
def test_bad_adapter_modules_are_config_errors(name: str, spec: DictConfig, modules: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(name, None, spec, adapter_modules=modules)


def test_encoder_adapters_need_a_rank_or_a_bottleneck() -> None:
    with pytest.raises(ConfigError, match="needs a rank"):
        build("hadapter", None)
    _, model, _, _ = build("hadapter", None, bottleneck=3)
    assert adapter_count(model, ["classifier"]) == LAYERS * 2 * (2 * D * 3 + 3 + D)


def test_uses_rank() -> None:
    for name in ALL:  # Series/Parallel: m = bottleneck (256), rank recorded null
        assert get_method(name).uses_rank is (name in ENCODER)


# ---------- training ----------


@pytest.mark.parametrize("name", ALL)
def test_one_run_through_the_runner_on_a_tiny_classifier(name: str, store: Path) -> None:
    """H/P on tiny-roberta; Series/Parallel refuse RoBERTa, so they run on the tiny LLaMA classifier."""
    model = [] if name in ENCODER else ["model=tiny-llama"]
    record = peftbench.bench.run.run(compose_run(store, *model, f"method={name}", "rank=2", "lr=1e-3"))
    assert record["status"] == "ok", record["error"]
    assert record["rank"] == (2 if name in ENCODER else None)
    assert 0 < record["head_params"] < record["trainable_params"] < record["total_params"]


@pytest.mark.parametrize(("name", "kind"), [(n, k) for n in DECODER for k in ("causal-lm", "image-classification")])
def test_training_step_on_a_causal_lm_and_clip(name: str, kind: str) -> None:
    torch.manual_seed(0)
    if kind == "causal-lm":
        model = load_model(TINY_LLAMA, kind)
        ids = torch.randint(5, 1000, (2, 9), generator=torch.Generator().manual_seed(1))
        batch, head = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}, []
    else:
        model = load_model(TINY_CLIP, kind, num_labels=10)
        batch = {"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.tensor([1, 7])}
        head = ["classifier"]
    method = get_method(name)
    params = method.parse({})
    ctx = RunContext(rank=8, lr=1e-3, seed=0, target_modules=[], head_modules=head, total_steps=1)
    method.validate(params, model, ctx)
    adapted = method.adapt(model, params, ctx).train()
    trainable = {n: p for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n or n.startswith("model.classifier.") for n in trainable)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    loss = adapted(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(before[n], p) for n, p in trainable.items())


@pytest.mark.parametrize("name", ALL)
def test_float32_adapters_on_a_bf16_base_under_autocast(name: str) -> None:
    spec = OmegaConf.merge(spec_of(name), {"cpu_dtype": "bfloat16"})
    base = tiny_classifier(spec=spec)
    assert next(base.parameters()).dtype == torch.bfloat16
    method = get_method(name)
    params = method.parse({})
    model = method.adapt(base, params, context(rank_of(name), spec=spec)).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trainable)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**tiny_batch(), labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
