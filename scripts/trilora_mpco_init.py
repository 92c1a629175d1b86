"""TriLoRA+MPCo's regulariser at init on the Subspace Tuning GLUE models: why `mpc_lambda` defaults to 1e-7.

For each model (its conf/model entry's dimensions, no weights) and rank, TriLoRA layers are built on the six
linears of every block (`all_linear`, the Subspace Tuning scripts' `--lora_module`), as `trilora_mpco` builds them,
and the MPCo penalty Σ_layers ‖AAᵀ − I‖_F² + ‖BᵀB − I‖_F² is computed at init (seed 0), then times λ = 1e-7 (the
default) and 1e-3 (the earlier default, LoRA-MPCo's). Run: `PYTHONPATH=. .venv/bin/python scripts/trilora_mpco_init.py`
(~30 s on 2 shared CPU cores); docs/methods.md quotes the table.
"""

from __future__ import annotations

import torch
from peftbench.bench.grid import sweep_config
from peftbench.bench.param_count import meta_model
from peftbench.methods.mpc import mpc_penalty
from peftbench.methods.targets import target_layers
from peftbench.methods.trilora import TriLoraLayer
from torch import nn


def init_penalty(model_name: str, rank: int, seed: int = 0) -> float:
    """The MPCo penalty (λ = 1) of TriLoRA layers at init on every `all_linear` target of `model_name`."""
    spec = sweep_config("none", [f"model={model_name}"]).model  # composed: its target_sets come from conf/target_sets
    layers = target_layers(meta_model(spec, "sequence-classification", num_labels=2), spec.target_sets.all_linear)
    torch.manual_seed(seed)
    pairs = []
    for layer in layers:
        base = nn.utils.skip_init(nn.Linear, layer.in_features, layer.out_features)  # W0 plays no role here
        adapter = TriLoraLayer(base, rank, 1.0, 0.0)
        pairs.append((adapter.lora_A.detach(), adapter.lora_B.detach()))
    return float(mpc_penalty(pairs, "o"))


def main() -> None:
    print("| model | r | penalty at init | × 1e-7 (default) | × 1e-3 |\n|---|---|---|---|---|")
    for model in ("roberta-base", "deberta-v3-base", "roberta-large"):
        for rank in (2, 4, 8, 16):
            value = init_penalty(model, rank)
            print(f"| {model} | {rank} | {value:.3g} | {1e-7 * value:.2f} | {1e-3 * value:,.0f} |")


if __name__ == "__main__":
    main()
