"""Prefix tuning (Li & Liang 2021, arXiv 2101.00190) through PEFT's `PrefixTuningConfig` (LLM-Adapters' baseline).

n learned key and value vectors per layer are prepended to every attention's keys and values:
attention(q, [P_k; K], [P_v; V]) with P_k, P_v ∈ R^{n×d_kv} per layer. With `prefix_projection=False`
the prefix is a plain embedding (PEFT's init: N(0, 1)), so the output differs from the base at init.
Trainable: n·L·2·d_kv (+ the task head), d_kv = the key/value width (the hidden size without grouped-query
attention): 262,144·n on LLaMA-7B, 7,864,320 at n = 30. PEFT's task type follows the model: CAUSAL_LM for
a causal LM, SEQ_CLS for a sequence classifier; other models (an image classifier) are refused.
Generation must go through the PEFT model (`PeftModelForCausalLM.generate` puts the prefix in the cache);
the bare transformers model inside it has no prefix.
Reference: LLM-Adapters `finetune.py` (prefix-tuning, num_virtual_tokens 30).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import PrefixTuningConfig, get_peft_model
from peftbench.core.errors import ConfigError
from peftbench.methods.base import Method, RunContext, register

TASK_TYPES = {"ForCausalLM": "CAUSAL_LM", "ForSequenceClassification": "SEQ_CLS"}


@dataclass
class PrefixParams:
    num_virtual_tokens: int = field(default=30, metadata={"help": "n, the prefix length per layer (LLM-Adapters: 30)"})
    prefix_projection: bool = field(
        default=False, metadata={"help": "reparametrise the prefix through an MLP (Li & Liang); LLM-Adapters: false"}
    )

    def check(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ConfigError(f"method.num_virtual_tokens={self.num_virtual_tokens} is not valid; give an integer >= 1")


def task_type(model: torch.nn.Module) -> str:
    """PEFT's task type for this model's class, or a one-line ConfigError."""
    name = type(model).__name__
    for suffix, kind in TASK_TYPES.items():
        if name.endswith(suffix):
            return kind
    raise ConfigError(
        f"method prefix needs a causal LM or a sequence classifier and {name} is neither; "
        f"valid: *{', *'.join(TASK_TYPES)} models"
    )


@register
class Prefix(Method):
    name = "prefix"
    Params = PrefixParams
    uses_rank = False

    def validate(self, params: PrefixParams, model: torch.nn.Module, ctx: RunContext) -> None:
        task_type(model)

    def apply(self, model: torch.nn.Module, params: PrefixParams, ctx: RunContext) -> torch.nn.Module:
        config = PrefixTuningConfig(
            task_type=task_type(model),
            num_virtual_tokens=params.num_virtual_tokens,
            prefix_projection=params.prefix_projection,
            modules_to_save=list(ctx.head_modules) or None,
        )
        return get_peft_model(model, config)
