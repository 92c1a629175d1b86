"""Each paper table's params column recomputed from its sweep: the sweep's resolved targets, applied to the model's
real architecture (meta device), give the printed value; a row that cannot carries a `params_note`, and only such
rows do (so a note cannot go stale, and a target change that breaks a row fails here)."""

from __future__ import annotations

import pytest
from peftbench.bench.paper_params import check_table_params
from peftbench.bench.paper_tables import load_paper_table, paper_tables

TABLES = [name for name in paper_tables() if load_paper_table(name).get("params")]


def test_every_table_with_a_params_column_is_checked() -> None:
    with_column = [n for n in paper_tables() if any(k.startswith("params") for k in load_paper_table(n)["rows"][0])]
    assert sorted(with_column) == sorted(TABLES)
    assert len(TABLES) == 9


@pytest.mark.parametrize("name", TABLES)
def test_params_column_matches_or_says_why(name: str) -> None:
    checks = check_table_params(name)
    assert checks
    wrong = [c for c in checks if not c.matches and not c.note]
    assert not wrong, [f"{c.label} r{c.rank} {c.model}: paper {c.paper}, ours {c.ours}" for c in wrong]
    stale = [c for c in checks if c.matches and c.note]
    assert not stale, [f"{c.label} r{c.rank} {c.model} matches ({c.ours}) but has a params_note" for c in stale]
    noted = [f"{c.label} r{c.rank} {c.model}: paper {c.paper}, ours {c.ours}" for c in checks if c.note]
    print(f"{name}: {len(checks) - len(noted)} rows match; with a params_note: {noted}")


@pytest.mark.parametrize(
    ("name", "label", "rank"),
    [("goat_t4_roberta_large_glue", "LoRA", 32), ("subspace_t2_roberta_base_glue", "LoRA", 2),
     ("subspace_t4_roberta_large_glue", "LoRA", 16), ("goat_t1_clip_vit", "LoRA (rank32)", 32),
     ("singlora_t2_llama_mnli", "LoRA", 8), ("goat_t3_llama2_commonsense", "LoRA†", 32)],
)  # fmt: skip
def test_lora_rows_fit_without_a_note(name: str, label: str, rank: int) -> None:
    (check,) = [c for c in check_table_params(name) if c.label == label and c.rank == rank]
    assert check.matches and check.note is None, check
