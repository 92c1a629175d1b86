"""Peak GPU memory and step time of LoRA and full fine-tuning, for checking `peftbench plan`'s memory model.

Run on a CUDA machine with torch, transformers and peft (no harness, no weights, no data: random models built from
RoBERTa-base's and LLaMA-7B's dimensions, 4 LLaMA blocks, random tokens): each configuration trains 6 AdamW steps
under bf16 autocast with float32 trainables (as the harness trains) and records torch.cuda.max_memory_allocated and
the median step. Writes $OUT/gpu_memory.json; tests/fixtures/plan_gpu/h200_training_memory.json is its output on
an H200 (torch 2.11, transformers 5.17, peft as installed there), which tests/bench/test_plan.py compares with
`peftbench.bench.plan.training_memory`.

    OUT=/tmp python scripts/plan_gpu_memory.py   # ~2 min on an H200
"""

from __future__ import annotations

import json
import os
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

ROBERTA = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
               intermediate_size=3072, max_position_embeddings=514)  # fmt: skip
LLAMA = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=4, num_attention_heads=32)
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def measure(name, kind, model_type, values, dtype, method, batch, seq, targets):  # noqa: ANN001, ANN201
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = kind.from_config(AutoConfig.for_model(model_type, **values), dtype=dtype).cuda()
    if method == "lora":
        saved = ["classifier"] if kind is AutoModelForSequenceClassification else None
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, modules_to_save=saved))
    for param in model.parameters():  # float32 trainables, as every method of the harness keeps them
        if param.requires_grad:
            param.data = param.data.float()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    ids = torch.randint(5, values["vocab_size"], (batch, seq), device="cuda")
    labels = ids if kind is AutoModelForCausalLM else torch.zeros(batch, dtype=torch.long, device="cuda")
    steps = []
    for _ in range(6):
        torch.cuda.synchronize()
        start = time.time()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        steps.append(time.time() - start)
    return dict(name=name, method=method, batch=batch, seq=seq, trainable=sum(p.numel() for p in trainable),
                total=sum(p.numel() for p in model.parameters()), peak_bytes=torch.cuda.max_memory_allocated(),
                step_seconds=sorted(steps[2:])[1])  # fmt: skip


def main() -> None:
    runs = []
    for method in ("lora", "full"):
        for batch, seq in ((16, 128), (32, 512)):
            runs.append(measure("roberta-base", AutoModelForSequenceClassification, "roberta", ROBERTA,
                                torch.float32, method, batch, seq, ["query", "value"]))  # fmt: skip
    for batch, seq in ((4, 512), (8, 1024)):
        runs.append(measure("llama7b-4layers", AutoModelForCausalLM, "llama", LLAMA, torch.bfloat16, "lora", batch,
                            seq, LLAMA_TARGETS))  # fmt: skip
    runs.append(measure("llama7b-4layers", AutoModelForCausalLM, "llama", LLAMA, torch.bfloat16, "full", 4, 512,
                        LLAMA_TARGETS))  # fmt: skip
    out = os.path.join(os.environ.get("OUT", "."), "gpu_memory.json")
    with open(out, "w") as handle:
        json.dump({"device": torch.cuda.get_device_name(), "runs": runs}, handle, indent=1)
    print(out)


if __name__ == "__main__":
    main()
