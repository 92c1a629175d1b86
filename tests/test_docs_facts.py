"""What README.md, docs/*.md and the Makefile state about the code is checked against the code, so a rename, a
new method or a changed grid fails here instead of leaving the docs wrong (tests/test_docs_commands.py runs the
commands; this file checks the names, paths, counts and timings in the prose around them).

- every `--paper`, `sweep=`, `method=`, `task=`, `model=`, `trainer=`, `logger=` value names a file of conf/;
- every `make <target>` names a Makefile target; every repository path in code spans and links exists;
- every count of methods, runs or grid points is matched by a fact below, which computes it;
- a command's (or a make target's) timing is stated once: two statements of one timing cannot disagree.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from peftbench.bench.config import CONF_DIR, group_choices
from peftbench.bench.grid import resolve_grid
from peftbench.methods.base import method_names

from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TEXTS = {path: path.read_text() for path in [*DOCS, REPO / "Makefile"]}
GROUP_KEYS = ("sweep", "method", "task", "model", "trainer", "logger")
# names of a researcher's own package in the docs' examples (tests/bench/test_outside_*.py run them), and the typo
# docs/running.md shows the one-line error for
OUTSIDE = {"method": {"my_method", "lorra"}, "task": {"counted_rte"}}
# a path is the repository's when its first folder is one of the repository's (others: reference repositories)
TOP_FOLDERS = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")} | {".ci"}
# path prefixes that are not files of this repository: outside packages, what a run writes, the user's machine
NOT_REPO_PATHS = ("my_pkg/", "my_tasks/", "their_pkg/", "results/", ".venv/", "~", "/", "http", "$")


def _code(text: str) -> list[str]:
    """Inline code spans and the lines of fenced blocks: where names, paths and commands are written."""
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    blocks = [line for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S) for line in block.splitlines()]
    return spans + blocks


def _lines() -> list[tuple[Path, int, str, bool]]:
    """Every line of the docs and the Makefile, and whether it is a command (a fenced block's line)."""
    found = []
    for path, text in TEXTS.items():
        in_block = False
        for i, line in enumerate(text.splitlines(), 1):
            if line.startswith("```"):
                in_block = not in_block
                continue
            found.append((path, i, line, in_block))
    return found


@pytest.mark.parametrize("key", GROUP_KEYS)
def test_every_group_value_named_in_the_docs_exists(key: str) -> None:
    choices = set(group_choices(key)) | OUTSIDE.get(key, set())
    wrong = []
    for path, text in TEXTS.items():
        for snippet in _code(text):
            for value in re.findall(rf"(?<![\w.+/-]){key}=([\w.,-]++)(?![{{*])", snippet):
                wrong += [f"{path.name}: {key}={v}" for v in value.split(",") if v and v not in choices]
    assert not wrong, wrong


def test_every_paper_table_named_in_the_docs_exists() -> None:
    tables = {p.stem for p in (CONF_DIR / "paper").glob("*.yaml")}
    named = [(path.name, name) for path, text in TEXTS.items() for name in re.findall(r"--paper\s+([\w-]+)", text)]
    assert named and all(name in tables for _, name in named), [n for n in named if n[1] not in tables]


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*(?:%)?):", TEXTS[REPO / "Makefile"], flags=re.M))


def test_every_make_target_named_in_the_docs_exists() -> None:
    targets = _make_targets()
    wrong = []
    for path, text in TEXTS.items():
        for snippet in _code(text):
            for words in re.findall(r"(?<![\w-])make ((?:[a-z][\w-]*(?: |$))+)", snippet):
                for target in words.split():
                    known = target in targets or any(t.endswith("%") and target.startswith(t[:-1]) for t in targets)
                    if not known:
                        wrong.append(f"{path.name}: make {target}")
    assert not wrong, wrong


def _repo_paths(text: str, base: Path) -> list[Path]:
    """Repository paths in code spans (from the repo root) and in Markdown links (from the file's folder)."""
    found = []
    for snippet in _code(text):
        for token in re.findall(
            r"(?<![\w./-])((?:[\w.-]+/)+[\w.-]*\.(?:py|md|yaml|toml|sh|ipynb|json|txt))\b", snippet
        ):
            if token.split("/")[0] in TOP_FOLDERS and not token.startswith(NOT_REPO_PATHS) and "<" not in token:
                found.append(REPO / token)
    for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not link.startswith(NOT_REPO_PATHS):
            found.append((base / link).resolve())
    return found


def test_every_repository_path_named_in_the_docs_exists() -> None:
    missing = [
        f"{path.name}: {target.relative_to(REPO) if target.is_relative_to(REPO) else target}"
        for path, text in TEXTS.items()
        for target in _repo_paths(text, path.parent)
        if not target.exists()
    ]
    assert not missing, missing


# ---------- counts: each stated count is computed here ----------


@functools.cache
def runs_and_points(*sweeps: str, method: str | None = None) -> tuple[int, int]:
    """Distinct runs (run_ids after protocol rules, as `peftbench grid` counts them) and grid points of one or more
    sweeps (the demo is two), of one method's points when `method` is given."""
    run_ids, points = set(), 0
    for sweep in sweeps:
        grid = resolve_grid(sweep)
        for point, run_id in zip(grid.points, grid.run_ids, strict=True):
            if method is None or point.get("method", grid.experiments[run_id]["method"]["name"]) == method:
                run_ids.add(run_id)
                points += 1
    return len(run_ids), points


def _demo_full() -> tuple[int, int]:
    return runs_and_points("demo", method="full")


@functools.cache
def two_stage_demo() -> tuple[int, int]:
    """The demo's runs under strategy=lr_then_seeds (docs/sweeps.md): stage 1's, and stage 2's once stage 1 is done."""
    from peftbench.bench.strategy import launch_points, strategy_runs, sweep_identify

    points = launch_points("demo", ["strategy=lr_then_seeds"])
    runs = strategy_runs("lr_then_seeds", points, sweep_identify("demo"), REPO / "no-store", "demo")
    return len(runs.first), runs.second_total


# (a pattern over one line whose first group is the count, what the count is) — each stated count must match one
FACTS: list[tuple[str, Callable[[], int]]] = [
    (r"\b(\d+) methods\b", lambda: len(method_names())),
    (r"CPU demo: (\d+) runs|CPU, (\d+) runs", lambda: runs_and_points("demo", "demo_methods")[0]),
    (r"sweep=demo .*: (\d+) runs", lambda: runs_and_points("demo")[0]),
    (r"^\| `conf/sweep/demo.yaml` .*\| (\d+) ", lambda: runs_and_points("demo")[0]),
    (r"^\| `conf/sweep/demo_methods.yaml` .*\| (\d+) \|", lambda: runs_and_points("demo_methods")[0]),
    (r"full FT by a protocol rule: (\d+) runs", lambda: _demo_full()[0]),
    (r"the other (\d+) points are the same run_ids", lambda: _demo_full()[1] - _demo_full()[0]),
    (r"reproduce-glue .*\((\d+) runs", lambda: runs_and_points("glue")[0]),
    (r"reproduce-glue .*\((\d+) points", lambda: runs_and_points("glue")[1]),
    (r"reproduce-glue .*points, (\d+) runs", lambda: runs_and_points("glue")[0]),
    (r"`glue` is (\d+) points", lambda: runs_and_points("glue")[1]),
    (r"`glue` is \d+ points but (\d+) runs", lambda: runs_and_points("glue")[0]),
    (r"`demo` (\d+) points", lambda: runs_and_points("demo")[1]),
    (r"`demo` \d+ points but (\d+) runs", lambda: runs_and_points("demo")[0]),
    (r"reproduce-glue .*runs, (\d+) grid points", lambda: runs_and_points("glue")[1]),
    (r"^- `glue`: (\d+) grid points", lambda: runs_and_points("glue")[1]),  # docs/plan.md
    (r"^- `glue`: \d+ grid points, (\d+) runs", lambda: runs_and_points("glue")[0]),
    (r"^- `demo`: (\d+) grid points", lambda: runs_and_points("demo")[1]),
    (r"^- `demo`: \d+ grid points, (\d+) runs", lambda: runs_and_points("demo")[0]),
    (r"strategy=lr_then_seeds .*?(\d+) runs", lambda: sum(two_stage_demo())),
    (r"stage 1 \(seed 0 over the lr grid\): (\d+) runs", lambda: two_stage_demo()[0]),
    (r"stage 2 \(seeds 1 at each cell's best lr\): (\d+) runs|missing: (\d+) runs known", lambda: two_stage_demo()[1]),
]
COUNT = re.compile(r"\b(\d+) (?:registered )?(methods|runs|grid points|points)\b")


def test_every_stated_count_is_a_computed_fact() -> None:
    unexplained, wrong = [], []
    for path, number, line, _ in _lines():
        for match in COUNT.finditer(line):
            stated = int(match.group(1))
            facts = [(m, f) for pattern, f in FACTS if (m := re.search(pattern, line)) and str(stated) in m.groups()]
            if not facts:
                unexplained.append(f"{path.name}:{number}: {match.group(0)!r}")
            wrong += [f"{path.name}:{number}: {stated} != {f()}" for _, f in facts if f() != stated]
    assert not unexplained, f"a count in prose needs a fact in tests/test_docs_facts.py: {unexplained}"
    assert not wrong, wrong


def test_a_fact_can_fail() -> None:
    line = "`make setup demo`: the CPU demo: 999 runs"
    ((pattern, fact),) = [(p, f) for p, f in FACTS if re.search(p, line)]
    assert fact() != 999


# ---------- timings ----------

TIMING = re.compile(r"~\s?(\d+(?:\.\d+)?)\s?(s|min|h)\b")


SUBJECT = re.compile(r"(?<![\w-])make [a-z][\w-]*(?: DRY=1)?")


def _stated_timings() -> dict[str, set[str]]:
    """command -> every timing stated for it: a command line's own comment, or in prose the first `~N unit` after
    a `make <target>` before the next one is named."""
    stated: dict[str, set[str]] = {}
    for _, _, line, is_command in _lines():
        if is_command:
            command, _, comment = line.partition("#")
            command = " ".join(command.replace(".venv/bin/", "").split())
            if command and (timing := TIMING.search(comment)):
                stated.setdefault(command, set()).add("".join(timing.groups()))
            continue
        subjects = list(SUBJECT.finditer(line))
        for subject, following in zip(subjects, [*subjects[1:], None][: len(subjects)], strict=True):
            timing = TIMING.search(line, subject.end(), following.start() if following else len(line))
            if timing:
                stated.setdefault(subject.group(0), set()).add("".join(timing.groups()))
    return stated


def test_each_timing_is_stated_once_or_the_same_everywhere() -> None:
    disagree = {key: sorted(values) for key, values in _stated_timings().items() if len(values) > 1}
    assert not disagree, f"state a timing once and link to it: {disagree}"


def test_every_record_field_is_described_in_docs_results() -> None:
    from peftbench.bench.record import FIELDS

    described = set(re.findall(r"`([a-z_]+)`", TEXTS[REPO / "docs" / "results.md"]))
    assert not [field for field in FIELDS if field not in described]
