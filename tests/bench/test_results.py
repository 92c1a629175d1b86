"""The results model: runs that differ never share a cell (golden), one table pipeline computed once per report,
provenance flags, the two-stage strategy in the caption and the lr choice, the cross-paper view (golden), and the
methods' own properties instead of a hard-coded `full`."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from peftbench.bench.cli import main as cli_main
from peftbench.bench.cross_paper import cross_paper_table, write_cross_paper
from peftbench.bench.html_report import build_page
from peftbench.bench.paper import paper_table
from peftbench.bench.report import build_tables, write_report
from peftbench.bench.results import Results
from peftbench.core.store import RunStore
from peftbench.methods.base import get_method, method_names

from tests.bench.records import write_run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = FIXTURES / "golden"
RIGHT_90 = [i % 10 != 0 for i in range(200)]  # 90% right
RIGHT_60 = [1 <= i % 10 <= 6 for i in range(200)]  # 60% right


def _config(task: str, max_seq_length: int, method: str = "lora") -> dict[str, Any]:
    return {"method": {"name": method, "lora_alpha": 16}, "model": {"name": "roberta-base"},
            "task": {"name": task, "max_seq_length": max_seq_length},
            "trainer": {"num_train_epochs": 3, "progress_bar": True}}  # fmt: skip


def _two_settings(root: Path, sweep: str = "s", task_pair: tuple[str, ...] = ("glue_rte", "glue_sst2")) -> Path:
    """LoRA on two tasks at max_seq_length 128 (90% right) and 256 (60% right), two seeds each; full FT on RTE."""
    store = RunStore(root)
    for seed in (0, 1):
        for length, correct in ((128, RIGHT_90), (256, RIGHT_60)):
            for task in task_pair:
                write_run(store, sweep, "lora", seed, correct, task=task, run_id=f"lora-{length}-{task}-{seed}",
                          config=_config(task, length))  # fmt: skip
        write_run(store, sweep, "full", seed, RIGHT_90, rank=None, config=_config("glue_rte", 128, "full"))
    return root


def test_runs_differing_only_in_max_seq_length_never_share_a_cell(tmp_path: Path) -> None:
    written = write_report(_two_settings(tmp_path / "runs"), "s", tmp_path / "out")
    for name in ("main.md", "main.tex", "lr_sensitivity.md"):
        assert written[name].read_text() == (GOLDEN / "settings" / name).read_text(), name
    results = Results.load(tmp_path / "runs", "s")
    lora = results.runs[results.runs["method"] == "lora"]
    assert sorted(set(lora["task.max_seq_length"])) == [128, 256]
    assert lora.groupby("task")["setting"].nunique().to_dict() == {"glue_rte": 2, "glue_sst2": 2}
    assert results.split_rows == {"lora r8 (roberta-base)": ["task.max_seq_length"]}


def test_runs_of_one_setting_are_averaged_over_seeds(tmp_path: Path) -> None:
    """The control: the same four runs, one setting, four seeds: one row, their mean ± std."""
    store = RunStore(tmp_path)
    for seed, correct in enumerate([RIGHT_90, RIGHT_90, RIGHT_60, RIGHT_60]):
        write_run(store, "s", "lora", seed, correct, config=_config("glue_rte", 128))
    main = build_tables(Results.load(tmp_path, "s")).main
    assert main.columns[:4] == ["method", "model", "rank", "glue_rte"] and not main.notes
    assert main.frame().at[0, "glue_rte"].startswith("75.00 ± 17.32 ")


def test_a_paper_row_is_shown_per_setting(tmp_path: Path) -> None:
    _two_settings(tmp_path, "sl", ("glue_qqp",))
    paper = paper_table(Results.load(tmp_path, "sl"), "singlora_t1_glue")
    shown = paper.table.frame()
    assert list(shown.columns[:5]) == ["Model", "Method", "r", "setting", "Params (M)"]
    lora = shown[(shown["Model"] == "roberta-base") & (shown["Method"] == "LoRA")].set_index("setting")["QQP"]
    assert lora.to_dict() == {
        "task.max_seq_length=128": "90.00 ± 0.00 [86.0, 94.0] (88.50, Δ +1.50)",
        "task.max_seq_length=256": "60.00 ± 0.00 [53.0, 67.0] (88.50, Δ -28.50)",
    }
    assert shown[shown["Method"] == "DoRA"]["setting"].tolist() == ["", ""]  # rows not run stay one row each
    assert paper.table.notes == [
        "Rows shown per setting, never averaged: their runs differ in more than seed and lr "
        "(lora r8 (roberta-base) by task.max_seq_length)."
    ]


def test_revisions_enter_the_setting(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    write_run(store, "s", "lora", 0, RIGHT_90, revisions={"model": "abc123", "data": {"glue": "d1"}})
    write_run(store, "s", "lora", 1, RIGHT_60, revisions={"model": "def456", "data": {"glue": "d1"}})
    write_run(store, "s", "lora", 2, RIGHT_60)  # a record from before revisions were recorded
    runs = Results.load(tmp_path, "s").runs.set_index("seed")
    assert runs["variant"].to_dict() == {
        0: "revisions.data.glue=d1, revisions.model=abc123",
        1: "revisions.data.glue=d1, revisions.model=def456",
        2: "revisions.data.glue=(none), revisions.model=(none)",
    }


def test_the_report_builds_its_tables_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`peftbench report --paper`: the records read once, the sweep's tables built once, each paper table once,
    shared by the Markdown files and the page."""
    import peftbench.bench.paper
    import peftbench.bench.report
    import peftbench.bench.results

    calls: dict[str, int] = {}

    def counted(module: Any, name: str) -> None:
        original = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for module, name in ((peftbench.bench.report, "build_tables"), (peftbench.bench.report, "main_numbers"),
                         (peftbench.bench.report, "sensitivity_table"), (peftbench.bench.paper, "paper_table"),
                         (RunStore, "iter_records"), (peftbench.bench.results.Results, "_runs_frame")):  # fmt: skip
        counted(module, name)
    store = FIXTURES / "records"
    # a paper table without a params column: no parameter counts on the meta device (slow, and not the point)
    args = ["report", "paper", "--store", str(store), "--out", str(tmp_path), "--paper", "goat_t2_llama2_nlg"]
    assert cli_main(args) == 0
    assert (tmp_path / "paper" / "index.html").is_file()
    assert calls == {"iter_records": 1, "_runs_frame": 1, "paper_table": 1, "build_tables": 1, "main_numbers": 1,
                     "sensitivity_table": 1}  # fmt: skip


def _record(run_id: str, **fields: Any) -> dict[str, Any]:
    return {"run_id": run_id, "sweep": "p", "status": "ok", "method": "lora", "model": "m", "task": "glue_rte",
            "rank": 8, "lr": 1e-4, "seed": int(run_id[-1]), "data": "hub", "primary_metric": "accuracy",
            "metrics": {"accuracy": 0.8, "primary": 0.8}, "git_commit": "aaa", "git_dirty": False,
            "versions": {"torch": "2.5.1", "peft": "0.14.0"}, "device": "cpu", **fields}  # fmt: skip


def test_provenance_flags_a_sweep_that_mixes_its_setup(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clean = RunStore(tmp_path / "clean")
    for seed in (0, 1):
        clean.write(_record(f"c{seed}", revisions={"model": "abc"}))
    results = Results.load(tmp_path / "clean", "p")
    assert results.provenance.flags == [] and results.provenance.fields["torch"] == {"2.5.1": 2}
    assert 'id="provenance-flag"' not in build_page(tmp_path / "clean", "p")
    mixed = RunStore(tmp_path / "mixed")
    mixed.write(_record("m0", revisions={"model": "abc"}))
    mixed.write(_record("m1", git_commit="bbb", git_dirty=True, versions={"torch": "2.6.0", "peft": "0.14.0"},
                        revisions={"model": "def"}))  # fmt: skip
    mixed.write(_record("m2", status="failed", metrics={}, git_commit="ccc"))  # not behind any number
    results = Results.load(tmp_path / "mixed", "p")
    assert results.provenance.flags == [
        "code commit: 2 values", "torch: 2 values", "revisions.model: 2 values",
        "1 of 2 records ran from a tree with uncommitted changes",
    ]  # fmt: skip
    page = build_page(tmp_path / "mixed", "p")
    assert '<p id="provenance-flag">⚠ These records do not come from one setup: code commit: 2 values; ' in page
    assert '<li class="mixed"><b>torch</b>: 2.5.1 (1), 2.6.0 (1)</li>' in page
    assert "<li><b>peft</b>: 0.14.0 (2)</li>" in page
    assert cli_main(["report", "p", "--store", str(tmp_path / "mixed"), "--out", str(tmp_path / "out")]) == 0
    assert "provenance: torch: 2 values" in capsys.readouterr().out.splitlines()


def test_a_two_stage_sweep_is_stated_and_chooses_its_lr_on_the_first_seed(tmp_path: Path) -> None:
    """lr 1e-4: seed 0 80% right; lr 5e-4: seed 0 85%, then seeds 1 and 2 70%. The sweep chose 5e-4 on seed 0;
    the full-grid rule would now prefer 1e-4 (80 > 75), a one-seed lr the second stage never ran."""
    runs = [(1e-4, 0, [i % 5 != 0 for i in range(200)]), (5e-4, 0, [i % 20 > 2 for i in range(200)]),
            (5e-4, 1, [i % 10 > 2 for i in range(200)]), (5e-4, 2, [i % 10 > 2 for i in range(200)])]  # fmt: skip
    for root, name in ((tmp_path / "two", "lr_then_seeds"), (tmp_path / "grid", "grid")):
        store = RunStore(root)
        for lr, seed, correct in runs:
            strategy = {"name": name, "stage": (2 if seed else 1) if name == "lr_then_seeds" else None}  # as recorded
            write_run(store, "s", "lora", seed, correct, run_id=f"lora-{lr}-{seed}", lr=lr, strategy=strategy)
    two = build_tables(Results.load(tmp_path / "two", "s"))
    assert two.main.frame().at[0, "glue_rte"].startswith("75.00 ± 8.66 ")
    assert two.sensitivity.frame().at[0, "best lr"] == "0.0005" and two.sensitivity.frame().at[0, "best"] == "85.00"
    written = write_report(tmp_path / "two", "s", tmp_path / "out")
    caption = written["main.md"].read_text().splitlines()[0]
    header = paper_table(Results.load(tmp_path / "two", "s"), "goat_t4_roberta_large_glue").header
    stated = (
        " Sweep strategy lr_then_seeds (the first seed over the lr grid, the other seeds only at the lr chosen on "
        "it): not the full grid, each cell's lr chosen on its first seed."
    )
    assert caption.endswith(stated) and header.endswith(stated)
    grid = build_tables(Results.load(tmp_path / "grid", "s"))
    assert grid.main.frame().at[0, "glue_rte"].startswith("80.00 [")
    assert "strategy" not in write_report(tmp_path / "grid", "s", tmp_path / "g")["main.md"].read_text()


def test_cross_paper_golden(tmp_path: Path) -> None:
    paths = write_cross_paper(cross_paper_table(), tmp_path)
    assert paths["md"].read_text() == (GOLDEN / "cross_paper.md").read_text()


def test_cross_paper_shows_ours_from_each_tables_sweep(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    for seed in (0, 1):  # SingLoRA Table 1's sweep; Subspace Tuning Table II's (subspace_t2) not run
        write_run(store, "singlora_t1", "lora", seed, RIGHT_90, task="glue_qqp")
    table = cross_paper_table(tmp_path / "runs").frame().set_index(["method", "model", "task"])
    assert table.at[("lora", "roberta-base", "glue_qqp"), "ours (sweep)"] == "90.00 ± 0.00 [86.0, 94.0] (singlora_t1)"
    assert table.at[("lora", "roberta-base", "glue_qqp"), "spread"] == "0.89"
    assert table.at[("lora", "roberta-base", "glue_mnli"), "ours (sweep)"] == ""
    out = tmp_path / "out"
    assert cli_main(["report", "--cross-paper", "--store", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert 'id="table-cross"' in (out / "cross_paper" / "index.html").read_text()
    with_sweep = ["report", "singlora_t1", "--cross-paper", "--store", str(tmp_path / "runs"), "--out", str(out)]
    assert cli_main(with_sweep) == 0
    page = (out / "singlora_t1" / "index.html").read_text()
    assert 'id="table-main"' in page and 'id="table-cross"' in page and "(singlora_t1)</td>" in page


def test_a_method_without_rank_matches_its_records_whatever_rank_the_paper_prints(tmp_path: Path) -> None:
    """GOAT Table 4 prints FT-MoE at rank 32; FT-MoE has no rank (`uses_rank`), so its runs record none."""
    store = RunStore(tmp_path)
    write_run(store, "s", "ft_moe", 0, RIGHT_90, model="roberta-large", rank=None)
    shown = paper_table(Results.load(tmp_path, "s"), "goat_t4_roberta_large_glue").table.frame().set_index("Method")
    assert shown.at["Full FT MoE", "RTE"] == "90.00 [86.0, 94.0] (84.48, Δ +5.52)"
    assert [name for name in method_names() if get_method(name).trains_base] == ["full"]


def test_the_report_modules_import_one_way() -> None:
    """No circle among the report's modules, function-level imports included (paper ⇄ paper_params was one)."""
    names = ["paper_tables", "results", "render", "report", "paper", "paper_params", "cross_paper", "html_report"]
    root = Path(__file__).resolve().parents[2] / "bench"
    graph = {}
    for name in names:
        tree = ast.parse((root / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        graph[name] = {m.removeprefix("bench.") for m in imported if m.removeprefix("bench.") in names}

    def reaches(start: str, target: str, seen: frozenset = frozenset()) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph[start])

    assert [name for name in names if reaches(name, name)] == []
    assert "paper" not in graph["paper_params"] and graph["paper_tables"] == set()


def test_records_are_read_once_per_sweep_by_the_cross_paper_view(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    store = RunStore(tmp_path)
    write_run(store, "subspace_t2", "lora", 0, RIGHT_90, task="glue_qqp", best_metrics={"accuracy": 0.9})
    loads: list[str] = []
    original = Results.load.__func__

    def load(cls: type[Results], root: Path, sweep: str) -> Results:
        loads.append(sweep)
        return original(cls, root, sweep)

    monkeypatch.setattr(Results, "load", classmethod(load))
    table = cross_paper_table(tmp_path).frame().set_index(["method", "model", "task"])
    assert loads == ["subspace_t2"]  # one sweep in the store, read once for all its cells
    # Subspace Tuning selects the best evaluation during training: no sidecar holds it, no interval
    assert table.at[("lora", "roberta-base", "glue_qqp"), "ours (sweep)"] == "90.00 [n/a] (subspace_t2)"
