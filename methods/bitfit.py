"""BitFit (Ben Zaken et al. 2022, arXiv 2106.10199): only the bias terms (and the task head) train.

PEFT has no BitFit, so it is ours: freeze everything, then unfreeze every parameter named `bias` and
the head. Saved as the trainable tensors in safetensors; loading puts them on a fresh base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext, register
from peftbench.methods.targets import in_head
from safetensors.torch import load_file, save_file

WEIGHTS = "bitfit.safetensors"


def _trainable(name: str, head_modules: list[str]) -> bool:
    return name.endswith(".bias") or name == "bias" or in_head(name, head_modules)


@register
class BitFit(Method):
    name = "bitfit"
    uses_rank = False

    def validate(self, params: Any, model: torch.nn.Module, ctx: RunContext) -> None:
        # Llama-family models have no bias terms: BitFit would train nothing
        if not any(_trainable(name, []) for name, _ in model.named_parameters()):
            model_name = type(model).__name__
            raise ConfigError(f"method bitfit needs bias terms and {model_name} has none; choose another method")

    def apply(self, model: torch.nn.Module, params: Any, ctx: RunContext) -> torch.nn.Module:
        for name, param in model.named_parameters():
            param.requires_grad_(_trainable(name, ctx.head_modules))
        return model

    def save(self, model: torch.nn.Module, out_dir: str) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(out / WEIGHTS))
        (out / "bitfit_config.json").write_text(json.dumps({"method": self.name, "tensors": sorted(tensors)}))

    def load(self, base_model: torch.nn.Module, out_dir: str, params: Any, ctx: RunContext) -> torch.nn.Module:
        model = self.adapt(base_model, params, ctx)
        missing = model.load_state_dict(load_file(str(Path(out_dir) / WEIGHTS)), strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"BitFit weights do not fit this model: {missing.unexpected_keys[:3]}")
        return model
