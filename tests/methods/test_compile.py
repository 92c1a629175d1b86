"""Our layers compile: `torch.compile(fullgraph=True)` traces every native method's layer (and the upcycled MoE
layer's dense path) without a graph break, gives eager's output, gradients and auxiliary loss, and does not
recompile on the next call; `trainer.compile=true` trains through the Trainer's compiled model.

The `aot_eager` backend traces what inductor would compile (Dynamo's graph and AOT autograd's joint graph) without
generating code, so these tests take seconds on a CPU; one inductor run is marked slow (minutes on 2 cores).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from peftbench.methods.base import RunContext, get_method, method_names
from peftbench.methods.ft_moe import UpcycledLinear
from peftbench.methods.injection import NativeMethod
from torch import nn
from torch.utils._pytree import tree_leaves

from tests.helpers import TINY, TINY_LLAMA, perturb

NATIVE = sorted(n for n in method_names() if isinstance(get_method(n), NativeMethod))
ENCODER_ONLY = ("hadapter", "padapter")  # post-LN sub-layers: RoBERTa's, not LLaMA's
RANKLESS = ("sam_parser",)


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 1000, (2, 7), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def adapted_model(name: str, **values: Any) -> tuple[nn.Module, Any, Any]:
    """(model, method, params): the method on a tiny model (RoBERTa for the encoder-only adapters, else LLaMA),
    every trainable weight moved off its init (a zero factor would hide a wrong gradient)."""
    from peftbench.bench.models import load_model

    spec = TINY if name in ENCODER_ONLY else TINY_LLAMA
    torch.manual_seed(0)
    base = load_model(spec, "causal-lm" if spec is TINY_LLAMA else "sequence-classification", num_labels=2)
    method = get_method(name)
    params = method.parse({"name": name, **values})
    ctx = RunContext(
        rank=None if name in RANKLESS else 8, lr=1e-3, seed=0, target_modules=list(spec.target_modules),
        head_modules=list(spec.head_modules), total_steps=10, sample_batches=lambda n: [_batch()] * n,
    )  # fmt: skip
    method.validate(params, base, ctx)
    torch.manual_seed(1)
    model = method.adapt(base, params, ctx)
    perturb(model)
    return model, method, params


def first_layer_and_inputs(model: nn.Module) -> tuple[nn.Module, tuple, dict]:
    """Our first layer in the model (a class of `methods`) and the arguments it is called with in a forward."""
    layer = next(m for m in model.modules() if type(m).__module__.startswith("methods.") and m is not model)
    seen: dict[str, Any] = {}

    def keep(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.setdefault("call", (tuple(a.detach() if torch.is_tensor(a) else a for a in args), dict(kwargs)))

    handle = layer.register_forward_pre_hook(keep, with_kwargs=True)
    with torch.no_grad():
        model.eval()(**_batch())
    handle.remove()
    return layer, *seen["call"]


def step(
    call: nn.Module, layer: nn.Module, args: tuple, kwargs: dict
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], Any]:
    """(outputs, gradients, balance loss) of one training forward and backward of `layer` through `call` (the layer
    or its compiled wrapper)."""
    layer.zero_grad(set_to_none=True)
    args = tuple(a.clone().requires_grad_(a.is_floating_point()) if torch.is_tensor(a) else a for a in args)
    outputs = [t for t in tree_leaves(call(*args, **kwargs)) if torch.is_tensor(t) and t.is_floating_point()]
    aux = getattr(layer, "balance_loss", None)
    (sum(t.square().sum() for t in outputs) + (aux if aux is not None else 0)).backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    return [t.detach() for t in outputs], grads, None if aux is None else aux.detach()


def check_compiles_like_eager(layer: nn.Module, args: tuple, kwargs: dict) -> None:
    for module in layer.modules():  # the same masks cannot be drawn twice: dropout off for the equality
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    layer.train()
    expected = step(layer, layer, args, kwargs)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)  # a graph break raises
    got = step(compiled, layer, args, kwargs)
    for want, have in zip(expected[0], got[0], strict=True):
        assert torch.allclose(want, have, atol=1e-5)
    assert expected[1].keys() == got[1].keys() and expected[1]
    assert all(torch.allclose(expected[1][n], got[1][n], atol=1e-5) for n in expected[1])
    assert (expected[2] is None) == (got[2] is None)
    if expected[2] is not None:
        assert torch.allclose(expected[2], got[2], atol=1e-6)
    with torch._dynamo.config.patch(error_on_recompile=True):
        step(compiled, layer, args, kwargs)  # the second step reuses the graph


@pytest.mark.parametrize("name", NATIVE)
def test_native_layers_compile_without_graph_breaks_and_equal_eager(name: str) -> None:
    # LoRA-Dash's reference counts forward calls in a Python int (count_forwards=true, the default): compiled, each
    # warm-up call recompiles; its optimizer-step counter (a callback outside the graph) compiles once
    model, _, _ = adapted_model(name, **({"count_forwards": False} if name == "lora_dash" else {}))
    layer, args, kwargs = first_layer_and_inputs(model)
    check_compiles_like_eager(layer, args, kwargs)


@pytest.mark.parametrize("name", ["molora", "hydralora", "adamole"])
def test_per_expert_dropout_compiles(name: str) -> None:
    model, _, _ = adapted_model(name, lora_dropout=0.1)
    layer, args, kwargs = first_layer_and_inputs(model)
    torch._dynamo.reset()
    compiled = torch.compile(layer.train(), backend="aot_eager", fullgraph=True)
    outputs, grads, aux = step(compiled, layer, args, kwargs)
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    assert (aux is None) == (name == "hydralora")  # a dense softmax router has no balance loss


def test_the_upcycled_layers_dense_path_compiles_without_graph_breaks() -> None:
    torch.manual_seed(0)
    layer = UpcycledLinear(nn.Linear(32, 48), experts=8, top_k=2)
    perturb(layer)
    x = torch.randn(2, 5, 32)
    assert layer.uses_dense(10)  # the rule picks the dense path at this size
    check_compiles_like_eager(layer, (x,), {})


def test_trainer_compile_trains_through_the_compiled_model(tmp_path) -> None:  # noqa: ANN001
    """`trainer.compile=true` is TrainingArguments.torch_compile: the Trainer trains the compiled model, with the
    method's auxiliary loss; the step equals the eager one (here on aot_eager, the backend a test can afford)."""
    from omegaconf import OmegaConf
    from peftbench.bench.train import BenchTrainer, training_arguments
    from peftbench.core.paths import CONF_DIR

    cfg = OmegaConf.create(
        {"trainer": {**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "trainer" / "default.yaml")),
                     "compile": True, "max_steps": 2, "checkpoint_steps": 0, "progress_bar": False},
         "lr": 1e-3, "seed": 0}
    )  # fmt: skip
    axes = {"lr": cfg.lr, "seed": cfg.seed}
    assert training_arguments(cfg.trainer, axes, str(tmp_path), False).torch_compile
    rows = [{**{k: v[0] for k, v in _batch().items()}, "labels": _batch()["input_ids"][0]} for _ in range(4)]
    losses = {}
    for compiled in (False, True):
        model, method, params = adapted_model("molora")
        args = training_arguments(cfg.trainer, axes, str(tmp_path / str(compiled)), False)
        args.torch_compile, args.torch_compile_backend = compiled, "aot_eager" if compiled else None
        args.per_device_train_batch_size = 2
        trainer = BenchTrainer(
            model=model, args=args, train_dataset=rows, method=method, method_params=params,
            ctx=None,
        )  # fmt: skip
        torch._dynamo.reset()
        trainer.train()
        losses[compiled] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        assert (trainer.model_wrapped is not model) == compiled  # the Trainer trains the compiled module
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


@pytest.mark.slow
def test_inductor_compiles_a_moe_layer_like_eager() -> None:
    """The default backend (inductor generates C++ on a CPU: minutes on 2 cores)."""
    model, _, _ = adapted_model("goat")
    layer, args, kwargs = first_layer_and_inputs(model)
    for module in layer.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    expected = step(layer.train(), layer, args, kwargs)
    torch._dynamo.reset()
    got = step(torch.compile(layer, fullgraph=True), layer, args, kwargs)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(expected[0], got[0], strict=True))
    assert all(torch.allclose(expected[1][n], got[1][n], atol=1e-4) for n in expected[1])
