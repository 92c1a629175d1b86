"""`peftbench plan`: parameter counts and FLOPs against hand computations, memory against analytic counts, the plan of
every paper sweep (runs counted after the protocol rules), and `plan --check` on recorded CPU runs of the demo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from peftbench.bench.cli import main as cli_main
from peftbench.bench.config import CONF_DIR, group_choices
from peftbench.bench.grid import resolve_grid
from peftbench.bench.plan import (
    GIB,
    Lengths,
    RunCost,
    arch_of,
    check_store,
    median_error,
    perf_row_flops,
    perf_tables,
    plan_sweep,
    run_cost,
    task_lengths,
    training_memory,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "plan_records"
# The median |predicted / recorded - 1| of the demo's recorded CPU runs (docs/plan.md: measured 2026-12-04)
MEDIAN_TIME_ERROR_BOUND = 0.25

# tiny-roberta (conf/model/tiny-roberta.yaml): hidden 32, FFN 64, 2 layers, vocab 30522, 514 positions, 2 types
H, F, L, V = 32, 64, 2, 30522
EMBEDDINGS = V * H + 514 * H + 2 * H + 2 * H  # word, position, token type, LayerNorm
BLOCK = 4 * (H * H + H) + 2 * H + (H * F + F) + (F * H + H) + 2 * H  # q k v o, LN, FFN in and out, LN
HEAD = (H * H + H) + (H * 2 + 2)  # RobertaClassificationHead: dense, out_proj (2 labels)
MATMUL = L * (4 * H * H + 2 * H * F)  # the weights a token multiplies through (the head runs on one token)


def _experiment(*overrides: str) -> dict:
    """The one run of `peftbench.bench.run` with these overrides (sweep none: no grid)."""
    grid = resolve_grid("none", list(overrides))
    (experiment,) = grid.experiments.values()
    return experiment


TINY = ["model=tiny-roberta", "data=offline", "task=glue_sst2", "trainer=demo", "task.max_seq_length=4"]


def test_parameter_counts_equal_the_hand_count_for_lora_and_full_ft() -> None:
    arch = arch_of(_experiment(*TINY, "method=lora")["model"], "sequence-classification", 2)
    assert (arch.total_params, arch.head_params, arch.matmul_params) == (EMBEDDINGS + L * BLOCK + HEAD, HEAD, MATMUL)
    lora = run_cost(_experiment(*TINY, "method=lora", "rank=4"), "cpu")
    adapter = L * 2 * 4 * (H + H)  # r (in + out) on query and value of each block
    assert (lora.trainable, lora.total_params) == (adapter + HEAD, EMBEDDINGS + L * BLOCK + HEAD + adapter)
    full = run_cost(_experiment(*TINY, "method=full"), "cpu")
    assert full.trainable == full.total_params == EMBEDDINGS + L * BLOCK + HEAD


def test_flops_equal_the_hand_computation_for_lora_and_full_ft() -> None:
    # max_seq_length 4 truncates every SST-2 row (the shortest is 4 tokens): each padded row is 4 tokens exactly
    tokens = 610 * 2 * 4  # offline train rows x 2 epochs (trainer=demo) x 4
    attention = 4 * L * 4 * H  # QK^T and AV per token at context 4
    lora = run_cost(_experiment(*TINY, "method=lora", "rank=4"), "cpu")
    adapter = L * 2 * 4 * (H + H)
    assert lora.train_tokens == pytest.approx(tokens)
    # forward 2N + 2P + A, activation gradients 2N + 2A, the adapter's gradients 4P
    assert lora.train_flops == pytest.approx(tokens * (4 * MATMUL + 6 * adapter + 3 * attention))
    full = run_cost(_experiment(*TINY, "method=full"), "cpu")
    assert full.train_flops == pytest.approx(tokens * (6 * MATMUL + 3 * attention))  # the classic 6N per token
    assert lora.steps == full.steps == 2 * 39  # ceil(610 / 16) batches per epoch
    eval_tokens = 262 * 4  # the offline eval rows, evaluated once at the end
    assert full.eval_flops == pytest.approx(eval_tokens * (2 * MATMUL + attention))


def test_full_ft_of_llama_7b_is_6n_per_token_with_n_counted_by_hand() -> None:
    model = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "llama2-7b.yaml"), resolve=True)
    arch = arch_of(model, "causal-lm", 2)
    hidden, ffn, layers, vocab = 4096, 11008, 32, 32000
    assert arch.matmul_params == layers * (4 * hidden * hidden + 3 * hidden * ffn) + vocab * hidden  # + LM head
    assert arch.total_params == 6_738_415_616  # Llama-2-7B's published count
    assert (arch.gated, arch.causal, arch.kv_heads, arch.head_dim) == (True, True, 32, 128)


def test_memory_is_the_analytic_count_of_weights_gradients_and_adamw_states() -> None:
    lora = run_cost(_experiment(*TINY, "method=lora", "rank=4"), "cpu")
    adapter = L * 2 * 4 * (H + H)
    total = EMBEDDINGS + L * BLOCK + HEAD + adapter
    assert lora.memory["weights"] == 4 * total  # float32 on CPU
    assert (lora.memory["gradients"], lora.memory["optimizer"]) == (4 * (adapter + HEAD), 8 * (adapter + HEAD))
    full = run_cost(_experiment(*TINY, "method=full"), "cpu")
    params = EMBEDDINGS + L * BLOCK + HEAD
    assert (full.memory["weights"], full.memory["gradients"], full.memory["optimizer"]) == (
        4 * params, 4 * params, 8 * params
    )  # fmt: skip
    # on a GPU a bf16 model keeps frozen weights in 2 bytes, its float32 trainables in 4
    llama = run_cost(_experiment("model=llama2-7b", "task=gsm8k", "method=lora", "rank=8"), "h100")
    frozen = llama.total_params - llama.trainable
    assert llama.memory["weights"] == 2 * frozen + 4 * llama.trainable
    assert llama.memory["optimizer"] == 8 * llama.trainable
    # generating GSM8K: K and V of 32 layers x 32 heads x 128 per token, bf16, for a batch of 16 prompts + answers,
    # and the batch's float32 logits over the vocabulary
    lengths, _ = task_lengths("gsm8k", "bpe")
    context = lengths["eval"].mean(512) + min(lengths["answer"].expected_max(16) + 1, 512)
    kv = 2 * 32 * 32 * 128 * context * 16 * 2
    assert llama.memory["generation"] == pytest.approx(kv + 16 * 32000 * 4)


GPU_MEMORY = Path(__file__).resolve().parents[1] / "fixtures" / "plan_gpu" / "h200_training_memory.json"
# scripts/plan_gpu_memory.py's models, as conf/model entries of source `config`
GPU_MODELS = {
    "roberta-base": {"name": "roberta", "source": "config", "architecture": "roberta", "head_modules": ["classifier"],
                     "config": {"vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12,
                                "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 514}},
    "llama7b-4layers": {"name": "llama", "source": "config", "architecture": "llama",
                        "config": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                                   "num_hidden_layers": 4, "num_attention_heads": 32}},
}  # fmt: skip


def test_memory_model_is_within_15_percent_of_the_peaks_an_h200_measured() -> None:
    measured = json.loads(GPU_MEMORY.read_text())
    assert measured["device"] == "NVIDIA H200" and len(measured["runs"]) == 7
    for run in measured["runs"]:
        roberta = run["name"] == "roberta-base"
        arch = arch_of(GPU_MODELS[run["name"]], "sequence-classification" if roberta else "causal-lm", 2)
        # the same model: LoRA adds its trainables (PEFT's trainable copy of the head among them), full FT nothing
        assert run["total"] == arch.total_params + (run["trainable"] if run["method"] == "lora" else 0)
        memory = training_memory(
            arch, trainable=run["trainable"], total=run["total"], batch=run["batch"], seq=run["seq"],
            base_bytes=4 if roberta else 2, act_bytes=2, trains_layers=True, full_like=run["method"] == "full",
        )  # fmt: skip
        assert memory["peak"] / run["peak_bytes"] == pytest.approx(1.0, abs=0.15), run


def test_a_run_fits_the_smallest_capacity_above_its_peak_and_overhead() -> None:
    def cost(gib: float) -> RunCost:
        return RunCost({}, 0, 0, 0, 0, 0, 0, 0, 0, 0, {"peak": gib * GIB}, "")

    assert [cost(g).fits() for g in (10, 23, 23.5, 39, 79.5, 140, 140.5)] == [24, 24, 40, 40, 141, 141, None]


def test_padded_length_is_the_expected_longest_row_of_a_batch() -> None:
    uniform = Lengths(tuple(float(10 + 5 * i) for i in range(21)))  # uniform on [10, 110]
    assert uniform.mean() == pytest.approx(60, abs=0.01)
    assert uniform.expected_max(4) == pytest.approx(10 + 100 * 4 / 5, abs=0.01)  # E[max of 4 uniforms] = 4/5
    assert uniform.expected_max(4, cap=50) < 50


def test_perf_rows_flops_equal_the_hand_count() -> None:
    table = next(t for t in perf_tables() if t.device == "cpu" and t.model == "minilm")
    n = 6 * (4 * 384 * 384 + 2 * 384 * 1536)  # MiniLM: 6 layers, hidden 384, FFN 1536
    attention = 4 * 6 * table.seq * 384
    tokens = table.batch * table.seq
    assert perf_row_flops(table, "floor", 0) == tokens * (4 * n + 3 * attention)
    assert perf_row_flops(table, "head_only", 770) == tokens * (2 * n + attention)
    assert perf_row_flops(table, "full", 0) == tokens * (6 * n + 3 * attention)


PAPER_SWEEPS = [s for s in group_choices("sweep") if s not in ("none",)]
SLOW = {"subspace_t2", "subspace_t3", "subspace_t4"}  # 12,160 points each: a minute each on 2 busy cores


@pytest.mark.parametrize("sweep", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s for s in PAPER_SWEEPS])
def test_plan_of_every_sweep_has_one_line_per_distinct_run(sweep: str) -> None:
    grid = resolve_grid(sweep)
    plan = plan_sweep(sweep)
    assert sorted(c.key["run_id"] for c in plan.runs) == sorted(grid.runs)
    for cost in plan.runs:
        assert cost.train_flops > 0 and cost.seconds > 0 and cost.memory["peak"] > cost.memory["weights"] > 0
        assert cost.eval_tokens > 0


def test_plan_cli_prints_totals_and_refuses_an_unknown_gpu(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:  # fmt: skip
    assert cli_main(["plan", "glue", "--store", str(tmp_path), "--gpu", "a100-80gb", "--gpus", "4",
                     "--csv", str(tmp_path / "plan.csv")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("plan of sweep 'glue': 144 grid points, 96 runs, on NVIDIA A100 80GB\n")
    assert "per method:" in out and "per task:" in out and "whole sweep:" in out and "wall on 4 GPUs" in out
    assert len((tmp_path / "plan.csv").read_text().splitlines()) == 1 + 96
    assert cli_main(["plan", "glue", "--gpu", "tpu"]) == 2
    assert capsys.readouterr().err.strip() == (
        "peftbench: error: --gpu 'tpu' is not known; valid choices: cpu, a10, l4, rtx4090, a100-40gb, l40s, "
        "a100-80gb, h100, h100-pcie, h200"
    )


def test_plan_check_on_the_demos_recorded_cpu_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "runs"
    shutil.copytree(FIXTURES, store)
    rows = check_store("demo", str(store))
    recorded = {json.loads(p.read_text())["run_id"] for p in (store / "demo").glob("*.json")}
    assert {r.run_id for r in rows} == recorded and len(rows) >= 4
    assert median_error(rows) <= MEDIAN_TIME_ERROR_BOUND
    assert cli_main(["plan", "demo", "--check", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"median time error: {median_error(rows):.1%}" in out
