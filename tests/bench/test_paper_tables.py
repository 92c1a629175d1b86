"""The published numbers in conf/paper/: complete, well-formed, and each printed Avg equal to its cells' mean.

A row whose printed Avg is not the mean of its cells must be listed in its file's `known_inconsistent`
(the paper's own error, as the sources note); any other mismatch is a transcription typo and fails.
"""

from __future__ import annotations

import pytest
import yaml
from peftbench.bench.config import CONF_DIR, group_choices
from peftbench.methods.base import method_names

PAPER_DIR = CONF_DIR / "paper"
# rows and non-empty cells per table, as transcribed: a dropped or added row or cell fails here
EXPECTED_SIZES = {
    "goat_t1_clip_vit": (12, 84),
    "goat_t2_llama2_nlg": (8, 24),
    "goat_t3_llama2_commonsense": (11, 88),
    "goat_t4_roberta_large_glue": (11, 77),
    "goat_t6_lr_sensitivity": (9, 9),
    "singlora_t1_glue": (8, 20),
    "singlora_t2_llama_mnli": (4, 4),
    "subspace_fair_commonsense": (26, 208),
    "subspace_t2_roberta_base_glue": (58, 464),
    "subspace_t3_debertav3_base_glue": (58, 464),
    "subspace_t4_roberta_large_glue": (58, 464),
}


def load(stem: str) -> dict:
    return yaml.safe_load((PAPER_DIR / f"{stem}.yaml").read_text())


def row_key(row: dict) -> tuple:
    return (row["label"], row.get("rank"), row.get("model"))


def test_every_table_is_listed() -> None:
    assert sorted(p.stem for p in PAPER_DIR.glob("*.yaml")) == sorted(EXPECTED_SIZES)


@pytest.mark.parametrize("stem", sorted(EXPECTED_SIZES))
def test_table_shape_and_names(stem: str) -> None:
    table = load(stem)
    assert table["paper"] and table["arxiv"] and table["table"] and table["source"]
    width = len(table["columns"])
    assert len(table["column_labels"]) == len(table["metrics"]) == width
    rows = table["rows"]
    cells = sum(1 for row in rows for value in row["values"] if value is not None)
    assert (len(rows), cells) == EXPECTED_SIZES[stem]
    assert all(len(row["values"]) == width for row in rows)
    known_methods, known_tasks = set(method_names()), set(group_choices("task"))
    for row in rows:
        assert row["method"] is None or row["method"] in known_methods, row["label"]
    for task in table["columns"]:
        assert task is None or task in known_tasks, task


@pytest.mark.parametrize("stem", sorted(EXPECTED_SIZES))
def test_printed_averages_match_their_cells(stem: str) -> None:
    table = load(stem)
    # cells and Avg are printed rounded: the mean of the rounded cells may differ from the Avg by one last digit
    tolerance = 1.05 * 10 ** -table.get("avg_decimals", 2)
    known = {(k["label"], k.get("rank"), k.get("model")) for k in table["known_inconsistent"]}
    mismatched = set()
    for row in table["rows"]:
        if row.get("avg") is None:
            continue
        values = [v for v in row["values"] if v is not None]
        if abs(sum(values) / len(values) - row["avg"]) > tolerance:
            mismatched.add(row_key(row))
    assert mismatched == known  # known exceptions are real, and there is no other mismatch


def test_known_exceptions_are_the_ones_the_sources_name() -> None:
    assert {k["label"] for k in load("subspace_t2_roberta_base_glue")["known_inconsistent"]} == {"(IA)3", "FLoRA"}
    assert {k["label"] for k in load("subspace_t3_debertav3_base_glue")["known_inconsistent"]} == {"LoRA", "DoRA"}
    assert {k["label"] for k in load("subspace_t4_roberta_large_glue")["known_inconsistent"]} == {"LoRA+MPCo"}
    fair = {(k["label"], k["model"]) for k in load("subspace_fair_commonsense")["known_inconsistent"]}
    assert ("LieRA (r=32)", "llama3-8b") in fair


def test_a_cell_by_hand() -> None:
    goat = load("goat_t4_roberta_large_glue")
    row = next(r for r in goat["rows"] if r["label"] == "GOAT")
    assert dict(zip(goat["column_labels"], row["values"], strict=True))["RTE"] == 85.56
    assert row["avg"] == 89.76 and row["params_pct"] == 4.5
