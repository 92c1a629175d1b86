"""LoRA (Hu et al. 2021, arXiv 2106.09685) through HF PEFT, and the base of its PEFT variants.

h = W0 x + s · B A x with A ∈ R^{r×in} (Kaiming-uniform), B ∈ R^{out×r} (zeros), s = lora_alpha / r,
so the model's output at init equals the base model's. Trainable: r·(in + out) per target layer,
plus the task head (PEFT `modules_to_save`). A variant (rsLoRA, DoRA, PiSSA, …) subclasses `Lora`
and returns its extra `LoraConfig` options from `peft_options`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, get_peft_model
from peft.utils import SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext, register
from safetensors.torch import save_file


@dataclass
class LoraParams:
    lora_alpha: float = field(default=16, metadata={"help": "scaling numerator: s = lora_alpha / r"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input, in [0, 1)"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "layer names to adapt; null = the model config's target_modules"}
    )
    bias: Literal["none", "all", "lora_only"] = field(
        default="none", metadata={"help": "which biases train: PEFT's `bias` option"}
    )

    def check(self) -> None:
        if self.lora_alpha <= 0:
            raise ConfigError(f"method.lora_alpha={self.lora_alpha} is not valid; give a positive number")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"method.lora_dropout={self.lora_dropout} is not valid; give a value in [0, 1)")


def lora_config(params: LoraParams, ctx: RunContext, **extra: Any) -> LoraConfig:
    """PEFT's LoraConfig for this run; `extra` carries a variant's own options (use_dora, …)."""
    return LoraConfig(
        r=ctx.rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=list(ctx.target_modules),
        bias=params.bias,
        modules_to_save=list(ctx.head_modules),
        **extra,
    )


@register
class Lora(Method):
    name = "lora"
    Params = LoraParams

    def peft_options(self, params: Any, ctx: RunContext) -> dict[str, Any]:
        """Extra LoraConfig options of a variant (none for plain LoRA)."""
        return {}

    def apply(self, model: torch.nn.Module, params: Any, ctx: RunContext) -> torch.nn.Module:
        return get_peft_model(model, lora_config(params, ctx, **self.peft_options(params, ctx)))


class ResidualInitLora(Lora):
    """A LoRA variant whose init moves part of W0 into B·A (PiSSA, OLoRA, LoRA-GA): W_res + s·B·A = W0.

    A saved adapter is converted to plain LoRA relative to the original W0, as PEFT's
    `path_initial_model_for_weight_conversion` does: rank 2r with A' = [A; A0], B' = [B, −B0], the same
    scale, so that W0 + s·B'A' = W_res + s·B·A and it loads onto the untouched base model. (PEFT's own
    conversion fails when the model also has a `modules_to_save` head, which every classifier here has.)
    """

    def apply(self, model: torch.nn.Module, params: Any, ctx: RunContext) -> torch.nn.Module:
        if next(model.parameters()).is_meta:  # a shapes-only model (parameter counting): no weights to decompose
            return get_peft_model(model, lora_config(params, ctx))
        return self._keep_initial(super().apply(model, params, ctx))

    @staticmethod
    def _keep_initial(peft_model: torch.nn.Module) -> torch.nn.Module:
        """Remember the initial factors A0, B0 for the conversion at save time."""
        peft_model._peftbench_initial = {
            name: param.detach().clone()
            for name, param in peft_model.named_parameters()
            if ".lora_A." in name or ".lora_B." in name
        }
        return peft_model

    def save(self, model: torch.nn.Module, out_dir: str) -> None:
        initial = model._peftbench_initial
        state = get_peft_model_state_dict(model)
        for key, value in state.items():
            adapter_key = key.replace(".weight", ".default.weight")
            if ".lora_A." in key:
                state[key] = torch.cat([value, initial[adapter_key]], dim=0)
            elif ".lora_B." in key:
                state[key] = torch.cat([value, -initial[adapter_key]], dim=1)
        config = copy.deepcopy(model.peft_config["default"])
        config.init_lora_weights = True
        config.r *= 2
        config.lora_alpha *= 2**0.5 if config.use_rslora else 2  # keeps s = alpha/r (or alpha/sqrt(r))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(Path(out_dir) / SAFETENSORS_WEIGHTS_NAME))
        config.save_pretrained(out_dir)
