"""`make gpu-check`'s script (scripts/gpu_check.py): its --dry mode end to end on the CPU, so that it cannot rot
between GPU loans, and its budget: a stage past its share is stopped cleanly, a spent budget runs nothing more."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
import torch
from peftbench.bench.models import load_model
from peftbench.core.errors import ConfigError
from peftbench.methods.base import RunContext, get_method, method_names

from tests.conftest import REPO
from tests.helpers import TINY, TINY_LLAMA, tiny_classifier

SCRIPT = REPO / "scripts" / "gpu_check.py"


def load_script():  # noqa: ANN201 (a module)
    if "gpu_check" in sys.modules:
        return sys.modules["gpu_check"]
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dry_check_runs_every_stage_and_writes_one_dated_folder(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry", "--budget", "400", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (folder,) = tmp_path.iterdir()
    assert folder.name == f"{date.today().isoformat()}_dry"
    summary = (folder / "summary.md").read_text()
    assert summary in result.stdout  # the one table, printed
    stages = ["perf_b2x16", "perf_svd_b2x16", "runs_tiny_roberta", "runs_tiny_llama", "torchrun_fsdp"]
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in summary.splitlines() if line.startswith("| ")}
    for stage in stages:
        assert rows[stage].split(" | ")[2] == "ok" and (folder / f"{stage}.log").exists()
    (perf,) = folder.glob("*_cpu_tiny-llama_b2x16.csv")
    assert perf.read_text().splitlines()[0].startswith("method,step_ms,vs_floor,vs_peft_lora")
    assert [line.split(",")[0] for line in perf.read_text().splitlines()[1:]] == [
        "floor", "head_only", "lora", "ssb", "full",
    ]  # fmt: skip
    (svd,) = (folder / "svd").glob("*_cpu_tiny-llama_b2x16.csv")  # the full-SVD inits, in a process of their own
    assert [line.split(",")[0] for line in svd.read_text().splitlines()[1:]] == [
        "floor", "head_only", "lora", "sam_parser", "full",
    ]  # fmt: skip
    assert "| perf_svd_b2x16 | peftbench perf, 2 × 16 tokens, the full-SVD inits | ok |" in summary

    def records(stage: str) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((folder / "store" / stage / "adhoc").glob("*.json"))]

    classify = records("runs_tiny_roberta")
    assert sorted(r["method"] for r in classify) == ["goat", "lora", "ssb"]
    for record in classify:
        assert record["status"] == "ok" and record["peak_memory_bytes"] > 0 and record["eval_seconds"] > 0
    (generate,) = records("runs_tiny_llama")
    assert generate["status"] == "ok" and generate["generated_tokens_per_second"] > 0
    assert generate["config"]["task"]["generation"]["merge_adapters"] is True
    (distributed,) = records("torchrun_fsdp")
    assert distributed["status"] == "ok" and distributed["world_size"] == 1 and distributed["steps"] == 1
    assert distributed["config"]["trainer"]["fsdp"] == "full_shard auto_wrap"
    assert "| lora | ok |" in summary  # the per-stage rows: records read back into the summary


CHILD = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # as torchrun starts its workers
print(worker.pid, flush=True)
time.sleep(120)
"""


def test_a_stage_past_its_share_is_stopped_and_its_process_group_ended(tmp_path: Path) -> None:
    check = load_script()
    stage = check.Stage("sleepy", "a stage that outlives its share", 1.0, lambda limit: [sys.executable, "-c", CHILD])
    begin = time.monotonic()
    outcome = check.run_stage(stage, 3.0, tmp_path, dict(os.environ))
    assert outcome.status == "stopped at its 3 s share of the budget"
    assert time.monotonic() - begin < 20
    worker = int((tmp_path / "sleepy.log").read_text().split()[0])
    for _ in range(50):  # the worker got the group's SIGTERM too (it may take a moment to be reaped)
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, 9)
        pytest.fail("the stage's child process outlived the stop")


def test_a_stage_whose_runs_failed_is_not_ok(tmp_path: Path) -> None:
    """bench.run writes a failed run's record and exits 0 (as torchrun's FSDP step on the H200 did): the stage's
    status says so, from its records."""
    check = load_script()
    rows = [{"method": "lora", "status": "failed"}, {"method": "ssb", "status": "ok"}]
    stage = check.Stage("quiet", "exits 0", 1.0, lambda limit: [sys.executable, "-c", "pass"], lambda: rows)
    outcome = check.run_stage(stage, 30.0, tmp_path, dict(os.environ))
    assert outcome.status == "failed: 1 of 2 runs (see their records' error)" and outcome.rows == rows


def test_a_spent_budget_runs_no_stage(tmp_path: Path) -> None:
    check = load_script()
    assert check.main(["--dry", "--budget", "1", "--out", str(tmp_path)]) == 1
    summary = next(tmp_path.iterdir()).joinpath("summary.md").read_text()
    assert summary.count("| not run: the budget was spent |") == 5


def test_stages_can_be_chosen_and_a_bad_name_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    check = load_script()
    assert check.main(["--dry", "--budget", "1", "--stages", "perf,torchrun", "--out", str(tmp_path)]) == 1
    summary = next(tmp_path.iterdir()).joinpath("summary.md").read_text()
    assert "| perf_b2x16 |" in summary and "| perf_svd_b2x16 |" in summary and "| torchrun_fsdp |" in summary
    assert "runs_" not in summary
    assert check.main(["--dry", "--stages", "perff", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "gpu_check: error: --stages perff names no stage; valid: perf_b2x16, perf_svd_b2x16, runs_tiny_roberta, "
        "runs_tiny_llama, torchrun_fsdp"
    )


def test_the_stage_shares_pass_unused_time_on() -> None:
    """Each stage gets left × its share / the shares still to run: a stage that finishes early leaves its time."""
    check = load_script()
    plan = check.stages(Path("/tmp/unused"), dry=False)
    assert [s.name for s in plan] == [
        "perf_b8x1024", "perf_b4x512", "perf_svd_b4x512", "perf_svd_b8x1024", "runs_minilm", "runs_smollm2",
        "torchrun_fsdp",
    ]  # fmt: skip
    assert sum(s.share for s in plan) == pytest.approx(1.0)
    argv = plan[0].command(300.0)
    assert argv[argv.index("--model") + 1] == "llama7b-layers" and argv[argv.index("--batch") + 1] == "8"
    assert argv[argv.index("--seq") + 1] == "1024" and float(argv[argv.index("--budget") + 1]) == 210.0
    # every method perf's `--methods all` times, the full-SVD inits in their own process
    every = [m for m in method_names() if get_method(m).trains]
    assert argv[argv.index("--methods") + 1].split(",") == [m for m in every if m not in check.SVD_INIT]
    svd = plan[2].command(100.0)
    assert svd[svd.index("--methods") + 1].split(",") == list(check.SVD_INIT) and svd[svd.index("--seq") + 1] == "512"
    assert svd[svd.index("--out") + 1] == "/tmp/unused/svd"  # the same file names as the main table's


def test_without_the_offline_models_the_run_stages_use_the_tiny_ones_first_in_bf16() -> None:
    """A bare GPU machine: the run stages run on the tiny config-built models, labelled, in bf16 on the GPU, first
    (seconds each, so that what they leave passes on to perf), the dry run's three families first."""
    check = load_script()
    plan = check.stages(Path("/tmp/unused"), dry=False, tiny_runs=True)
    assert [s.name for s in plan] == [
        "runs_tiny_roberta", "runs_tiny_llama", "torchrun_fsdp", "perf_b8x1024", "perf_b4x512", "perf_svd_b4x512",
        "perf_svd_b8x1024",
    ]  # fmt: skip
    assert all(s.what.endswith("(tiny config-built models)") for s in plan[:3])
    spec = json.loads(plan[0].command(60.0)[plan[0].command(60.0).index("--worker") + 1])
    assert spec["methods"][:3] == check.DRY_FAMILIES
    assert sorted(spec["methods"]) == sorted({c for c, _ in check.FAMILIES.values()})
    assert {"model=tiny-roberta", "trainer.bf16=true", "data=offline"} <= set(spec["overrides"])
    fsdp = plan[2].command(60.0)
    assert {"model=tiny-llama", "trainer=fsdp", "trainer.bf16=true"} <= set(fsdp) and "trainer=smoke" not in fsdp


def test_a_perf_stage_stopped_before_its_table_is_read_from_its_log(tmp_path: Path) -> None:
    """perf prints each row of each round; a stage stopped at its limit keeps those, medians and ratios."""
    log = tmp_path / "perf_b8x1024.log"
    lines = [("floor", 1, 10.0), ("lora", 1, 20.0), ("goat", 1, 30.0), ("floor", 2, 12.0), ("lora", 2, 22.0)]
    log.write_text("[perf] loading\n" + "".join(f"  round {r}/3 {m:16s} {ms:9.2f} ms/step\n" for m, r, ms in lines))
    rows = {row["method"]: row for row in load_script().perf_log_rows(log)}
    assert rows["floor"]["step_ms"] == 11.0 and rows["lora"]["rounds"] == 2 and rows["goat"]["rounds"] == 1
    assert rows["lora"]["vs_floor"] == pytest.approx(21 / 11) and rows["goat"]["vs_peft_lora"] == pytest.approx(30 / 21)
    assert load_script().perf_log_rows(tmp_path / "absent.log") == []


def test_the_full_svd_inits_are_the_methods_whose_init_runs_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """SVD_INIT is exactly the methods whose adapter init runs a full SVD (not a randomised low-rank one, as
    LoRA-GA's gradient estimate does): counted through perf's own row preparation on the tiny Llama."""
    from peftbench.bench import perf

    full, inside_lowrank = Counter(), []
    svd, lowrank = torch.linalg.svd, torch.svd_lowrank

    def counted_svd(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 (torch's signature)
        if not inside_lowrank:
            full[current[0]] += 1
        return svd(*args, **kwargs)

    def counted_lowrank(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        inside_lowrank.append(1)
        try:
            return lowrank(*args, **kwargs)
        finally:
            inside_lowrank.pop()

    monkeypatch.setattr(torch.linalg, "svd", counted_svd)
    monkeypatch.setattr(torch, "svd_lowrank", counted_lowrank)
    spec, base = perf.load_base("tiny-llama")
    batch = perf.synthetic_batch(base.config.vocab_size, 2, 16, torch.device("cpu"))
    current = [""]
    for name in (m for m in method_names() if get_method(m).trains):
        current[0] = name
        try:
            perf.prepare(name, base, spec, perf.perf_context(spec, 8, 12, batch))
        except ConfigError:  # a method that does not apply to a decoder (the encoder adapters)
            continue
    assert set(full) == set(load_script().SVD_INIT), dict(full)


@pytest.mark.parametrize("kind", ["classify", "generate"])
def test_every_family_applies_to_its_model(kind: str) -> None:
    """The GPU stages run FAMILIES on MiniLM (a BERT classifier) and SmolLM2 (a Llama decoder): each method builds on
    the tiny model of that architecture, so no family is refused on a loan."""
    check = load_script()
    names = [pair[0 if kind == "classify" else 1] for pair in check.FAMILIES.values()]
    assert len(set(names)) == len(check.FAMILIES) and set(check.DRY_FAMILIES) <= set(names)
    base = tiny_classifier() if kind == "classify" else load_model(TINY_LLAMA, "causal-lm")
    spec = TINY if kind == "classify" else TINY_LLAMA
    heads = list(spec.head_modules) if kind == "classify" else []
    for name in names:
        method = get_method(name)
        params = method.parse({"name": name})
        ctx = RunContext(rank=8, lr=1e-4, seed=0, target_modules=list(spec.target_modules), head_modules=heads,
                         total_steps=10)  # fmt: skip
        method.validate(params, base, ctx)
        method.adapt(copy.deepcopy(base), params, ctx)
