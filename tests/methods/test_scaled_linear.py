"""SSL's and SSB's fused `scaled_linear` against the expression it replaced (autograd's own, written out here):
forward and every gradient, with and without a bias, on 2-D and 3-D inputs, in float32 and under bf16 autocast,
and the layers' outputs in the matmul's dtype."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peftbench.methods.ssb import SsbLayer
from peftbench.methods.ssl import SslLayer, scaled_linear


def earlier_ssb(x: torch.Tensor, layer: torch.nn.Linear, l_in: torch.Tensor, l_out: torch.Tensor) -> torch.Tensor:
    """SsbLayer.adapted before the fused function (commit b9f071d)."""
    out = F.linear(x * l_in.to(x.dtype), layer.weight) * l_out.to(x.dtype)
    return out if layer.bias is None else out + layer.bias


def earlier_ssl(x: torch.Tensor, layer: torch.nn.Linear, l_in: torch.Tensor) -> torch.Tensor:
    """SslLayer.adapted before the fused function."""
    return layer(x * l_in.to(x.dtype))


def case(shape: tuple[int, ...], bias: bool, seed: int = 0) -> tuple:
    torch.manual_seed(seed)
    linear = torch.nn.Linear(shape[-1], 24, bias=bias).requires_grad_(False)
    if bias:
        torch.nn.init.normal_(linear.bias)
    x = torch.randn(*shape, requires_grad=True)
    l_in = torch.nn.Parameter(1 + 0.3 * torch.randn(shape[-1]))
    l_out = torch.nn.Parameter(1 + 0.3 * torch.randn(24))
    grad = torch.randn(*shape[:-1], 24)
    return linear, x, l_in, l_out, grad


def outputs_and_grads(y: torch.Tensor, grad: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [y.detach(), *torch.autograd.grad(y, inputs, grad.to(y.dtype))]


@pytest.mark.parametrize("shape", [(7, 16), (3, 5, 16)], ids=["2d", "3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_ssb_fused_equals_the_earlier_expression_in_float32(shape: tuple[int, ...], bias: bool) -> None:
    linear, x, l_in, l_out, grad = case(shape, bias)
    inputs = [x, l_in, l_out]
    fused = outputs_and_grads(scaled_linear(x, linear.weight, linear.bias, l_in, l_out), grad, inputs)
    earlier = outputs_and_grads(earlier_ssb(x, linear, l_in, l_out), grad, inputs)
    for new, old, name in zip(fused, earlier, ["y", "∂x", "∂l_in", "∂l_out"], strict=True):
        assert new.dtype == old.dtype == torch.float32, name
        torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("shape", [(7, 16), (3, 5, 16)], ids=["2d", "3d"])
def test_ssl_fused_equals_the_earlier_expression_in_float32(shape: tuple[int, ...]) -> None:
    linear, x, l_in, _, grad = case(shape, bias=True)
    fused = outputs_and_grads(scaled_linear(x, linear.weight, linear.bias, l_in), grad, [x, l_in])
    earlier = outputs_and_grads(earlier_ssl(x, linear, l_in), grad, [x, l_in])
    for new, old, name in zip(fused, earlier, ["y", "∂x", "∂l_in"], strict=True):
        torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6, msg=name)


def test_a_trainable_base_weight_and_bias_get_autograds_gradients() -> None:
    """Not the methods' case (the base is frozen), but the function gives every input's gradient."""
    linear, x, l_in, l_out, grad = case((4, 6, 16), bias=True)
    linear.requires_grad_(True)
    inputs = [x, linear.weight, linear.bias, l_in, l_out]
    fused = outputs_and_grads(scaled_linear(x, linear.weight, linear.bias, l_in, l_out), grad, inputs)
    earlier = outputs_and_grads(earlier_ssb(x, linear, l_in, l_out), grad, inputs)
    for new, old in zip(fused, earlier, strict=True):
        torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)


def test_no_input_gradient_when_the_input_needs_none() -> None:
    linear, x, l_in, l_out, grad = case((7, 16), bias=False)
    x = x.detach()
    y = scaled_linear(x, linear.weight, None, l_in, l_out)
    g_in, g_out = torch.autograd.grad(y, [l_in, l_out], grad)
    y_old = earlier_ssb(x, linear, l_in, l_out)
    torch.testing.assert_close([g_in, g_out], list(torch.autograd.grad(y_old, [l_in, l_out], grad)))


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["fp32-input", "bf16-input"])
def test_under_bf16_autocast_the_output_is_the_matmuls_dtype_and_values_agree(x_dtype: torch.dtype) -> None:
    """Under autocast the earlier SSB returned float32 for a float32 input (l_out cast to the input's dtype);
    the fused one returns bf16 as a plain linear does, with values and gradients within bf16's rounding."""
    linear, x, l_in, l_out, grad = case((4, 6, 16), bias=True)
    x = x.detach().to(x_dtype).requires_grad_()
    inputs = [x, l_in, l_out]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = scaled_linear(x, linear.weight, linear.bias, l_in, l_out)
        y_old = earlier_ssb(x, linear, l_in, l_out)
        assert y.dtype == linear(x).dtype == torch.bfloat16
        assert y_old.dtype == torch.float32  # the float32 bias (and l_out in a float32 input's dtype) promoted it
    fused, earlier = outputs_and_grads(y, grad, inputs), outputs_and_grads(y_old, grad, inputs)
    assert fused[1].dtype == x_dtype and fused[2].dtype == fused[3].dtype == torch.float32
    for new, old, name in zip(fused, earlier, ["y", "∂x", "∂l_in", "∂l_out"], strict=True):
        scale = old.float().abs().max()
        torch.testing.assert_close(new.float(), old.float(), rtol=0, atol=2e-2 * float(scale), msg=name)


@pytest.mark.parametrize("kind", ["ssl", "ssb"])
def test_layers_match_their_merged_weight_and_train(kind: str) -> None:
    linear, x, l_in, l_out, grad = case((3, 5, 16), bias=True)
    layer = SslLayer(linear) if kind == "ssl" else SsbLayer(linear)
    with torch.no_grad():
        layer.l_in.copy_(l_in)
        if kind == "ssb":
            layer.l_out.copy_(l_out)
    y = layer(x)
    torch.testing.assert_close(y, x @ layer.merged_weight().T + linear.bias, rtol=1e-5, atol=1e-5)
    y.backward(grad)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.adapter_parameters())
