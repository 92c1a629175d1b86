"""The generation speed-ups change no result: batching by length and stopping a batch once every answer has
ended give the same token ids up to each sequence's stop point, and the same extracted answers; adapters merged
into their fp32 base weights for generation give the same ids and leave the weights as they were, bit for bit."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf
from peftbench.bench.models import load_model, load_tokenizer
from peftbench.core.merging import merged_adapters
from peftbench.core.paths import CONF_DIR
from peftbench.methods.base import get_method
from peftbench.tasks.generation import PromptEncoder, cut_at_stop, generate
from peftbench.tasks.gsm8k import ANSWER_END, extract_flexible, extract_goat, extract_strict

from tests.helpers import context, perturb

TINY_LLAMA = OmegaConf.load(CONF_DIR / "model" / "tiny-llama.yaml")
# SmolLM2-135M's shape (hidden 576, 9 heads over 3 key-value heads, FFN 1536, tied embeddings), 2 of its 30 layers
SMOLLM2_SHAPED = OmegaConf.merge(
    TINY_LLAMA,
    {"name": "smollm2-shaped", "config": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 2,
     "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True}},
)  # fmt: skip
QUESTIONS = [
    "how many legs has a cat", "a train leaves at noon and travels far", "x", "sum two and two",
    "the long question about apples oranges pears and the farmer who sells them at the market on sunday",
    "what", "count the birds in three trees", "nine",
]  # fmt: skip
# random tiny models rarely write "####": a pattern they do write exercises the early stop
FREQUENT = re.compile(r"[a-z]{4}\s")


@pytest.mark.parametrize("spec", [TINY_LLAMA, SMOLLM2_SHAPED], ids=["tiny-llama", "smollm2-shaped"])
@pytest.mark.parametrize("pattern", [FREQUENT, ANSWER_END], ids=["frequent", "gsm8k"])
def test_sorting_and_early_stop_give_identical_ids_up_to_the_stop(spec, pattern: re.Pattern[str]) -> None:
    torch.manual_seed(0)
    model = load_model(spec, "causal-lm")
    tokenizer = load_tokenizer(spec)
    encoder = PromptEncoder(tokenizer, max_length=512)
    prompts = [encoder.prompt(f"question: {q}\nanswer:") for q in QUESTIONS]
    settings = {"max_new_tokens": 40, "num_beams": 1, "batch_size": 3}
    eos = tokenizer.sep_token_id
    plain, plain_count = generate(model, prompts, tokenizer.pad_token_id, eos, {**settings, "sort_by_length": False})
    fast, fast_count = generate(model, prompts, tokenizer.pad_token_id, eos, settings, stop=(pattern, tokenizer.decode))
    for slow_ids, fast_ids in zip(plain, fast, strict=True):
        slow_text, fast_text = tokenizer.decode(slow_ids), tokenizer.decode(fast_ids)
        assert cut_at_stop(slow_text, pattern) == cut_at_stop(fast_text, pattern)
        assert fast_ids == slow_ids[: len(fast_ids)]  # the same tokens, the fast ones a prefix
        for extract in (extract_strict, extract_flexible, extract_goat):
            assert extract(cut_at_stop(slow_text, pattern)) == extract(cut_at_stop(fast_text, pattern))
    if pattern is FREQUENT:
        assert fast_count < plain_count  # it did stop early


def test_an_answer_ends_at_its_first_hash_line() -> None:
    text = "so 9 * 2 = 18\n#### 18\nThe answer is: 18\n#### 19"
    assert cut_at_stop(text, ANSWER_END) == "so 9 * 2 = 18\n#### 18\n"
    assert extract_strict(cut_at_stop(text, ANSWER_END)) == 18
    assert cut_at_stop("#### 18", ANSWER_END) == "#### 18"  # no line end yet: EOS ends it
    assert cut_at_stop("#### 18.5\n", ANSWER_END) == "#### 18.5\n"


def _adapted_llm(name: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    model = load_model(TINY_LLAMA, "causal-lm").to(dtype)
    method = get_method(name)
    params = method.parse({"name": name})
    adapted = method.adapt(model, params, context(8, spec=TINY_LLAMA, targets=["q_proj", "v_proj", "down_proj"]))
    perturb(adapted, size=0.2)  # adapters off their init (B = 0 would make merging trivially exact)
    for layer in adapted.modules():
        if hasattr(layer, "set_ramp"):
            layer.set_ramp(1.0)  # SingLoRA past its ramp: u(t) = 1 (at t = 0 its update is zero)
    return adapted.eval()


@pytest.mark.parametrize(
    ("name", "mergeable"), [("lora", True), ("dora", True), ("vera", True), ("singlora", True), ("goat", False)]
)
def test_merged_adapters_generate_the_same_ids_and_give_the_weights_back_bit_for_bit(
    name: str, mergeable: bool
) -> None:
    model = _adapted_llm(name)
    tokenizer = load_tokenizer(TINY_LLAMA)
    encoder = PromptEncoder(tokenizer, max_length=512)
    prompts = [encoder.prompt(f"question: {q}\nanswer:") for q in QUESTIONS]
    settings = {"max_new_tokens": 24, "num_beams": 1, "batch_size": 4}
    before = {key: value.clone() for key, value in model.state_dict().items()}
    eos = tokenizer.sep_token_id
    plain, _ = generate(model, prompts, tokenizer.pad_token_id, eos, settings)
    merged, _ = generate(model, prompts, tokenizer.pad_token_id, eos, settings, merge=True)
    assert merged == plain
    with merged_adapters(model) as count:
        assert (count > 0) is mergeable
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # the base weights restored exactly
    with torch.no_grad():  # and the adapters act again, unmerged
        ids = torch.tensor([prompts[0]])
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
        if mergeable:
            with model.disable_adapter():
                base = model(input_ids=ids).logits
            assert not torch.allclose(model(input_ids=ids).logits, base)


def test_a_bf16_base_is_not_merged() -> None:
    """W0 + ΔW rounded to bf16 is not the unmerged forward: greedy decoding could change, so nothing merges."""
    with merged_adapters(_adapted_llm("lora", torch.bfloat16)) as count:
        assert count == 0
