"""Every command in README.md and docs/*.md is exercised: the README's commands each state their cost; every
`peftbench.bench.run` command composes and passes the pre-training checks at every value of its grid; every `make`
target exists and the cheap ones run; and (marked slow) the commands a CPU can run are run, in the order a
reader meets them, into a temporary store with training capped at a few steps. A command the tests cannot
run (a GPU, the hub, a cluster, the test targets themselves) is listed in NOT_RUN with its reason, so a new
command in the docs fails here until it is run or listed."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from peftbench.bench.config import CONF_DIR, check_overrides
from peftbench.bench.grid import launch_grid
from peftbench.bench.run import check_config

from tests.conftest import REPO, run_cli

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BENCH_RUN = ".venv/bin/python -m bench.run "
PEFTBENCH = ".venv/bin/peftbench "
COST = re.compile(r"~\s?\d+(\.\d+)?\s?(s|min|h)\b|not measured|not timed|runs nothing")

# (pattern matched from the start of the command, why no test runs it); each is still checked below where it can be
NOT_RUN = {
    "make setup": "the test run itself starts from `make setup` (CI runs it on a clean clone)",
    "make test": "the test targets are what CI runs (.ci/run)",
    "make lint": "CI runs it (.ci/run)",
    "make format": "rewrites the working tree; `make lint` checks the same rules in CI",
    "make demo": "13 min (demo) / 8 min (demo-llm) of CPU: its sweeps compose and their commands run below, capped",
    "make reproduce-glue$": "a GPU and the hub; its grid composes (`reproduce-glue DRY=1` runs)",
    "make reproduce-goat-t4": "a GPU and the hub; every paper sweep runs through the hub path in tests/hub/",
    "make wandb-sync": "needs internet; the offline wandb run it uploads is tested (tests/reliability)",
    "tmux": "not ours",
    ".venv/bin/peftbench prefetch": "downloads from the hub; tested against a fake hub (tests/bench/test_hub_lock.py)",
    f"{BENCH_RUN}method=my_method": "an outside package: tests/bench/test_outside_methods.py runs these with one",
    f"{BENCH_RUN}task=counted_rte": "an outside package: tests/bench/test_outside_tasks.py runs these with one",
}
# peftbench.bench.run commands that name a GPU model or the hub: checked (composed and validated), not trained here
NEEDS_GPU_OR_HUB = re.compile(
    r"model=(llama|clip-vit|roberta-base|roberta-large|deberta|gpt2 )|hydra/launcher=|sweep=(goat|glue)"
)
# the caps a slow test adds to each CPU command it runs: the command's own settings, a few steps, a few rows
CAPS = {"trainer.max_steps": "2", "task.max_eval_samples": "8", "task.generation.max_new_tokens": "8"}


def doc_commands(path: Path) -> list[str]:
    """The shell commands of a file's ```bash blocks: continuation lines joined, comment lines dropped."""
    commands, in_block, pending = [], False, ""
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_block = not in_block and line.strip() in ("```bash", "```sh")
            continue
        if not in_block:
            continue
        line = f"{pending} {line.strip()}" if pending else line
        pending = ""
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1].rstrip()
        elif line.strip() and not line.lstrip().startswith("#"):
            commands.append(line.strip())
    return commands


def strip_comment(command: str) -> str:
    return command.split("  #")[0].split(" # ")[0].strip()


ALL = [(path.relative_to(REPO).as_posix(), command) for path in DOCS for command in doc_commands(path)]


def not_run_reason(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN.items() if re.match(re.escape(pattern).replace(r"\$", "$"),
                                                                     strip_comment(command))), None)  # fmt: skip


def test_the_docs_have_commands_and_every_readme_command_states_its_cost() -> None:
    readme = [command for path, command in ALL if path == "README.md"]
    assert len(readme) >= 8 and any(path.startswith("docs/") for path, _ in ALL)
    costless = [command for command in readme if not COST.search(command.partition("#")[2])]
    assert not costless, f"README commands without their cost in a comment: {costless}"


def test_every_command_is_of_a_kind_the_tests_know() -> None:
    known = (BENCH_RUN, PEFTBENCH, "make ")
    unknown = [c for _, c in ALL if not strip_comment(c).startswith(known) and not_run_reason(c) is None]
    assert not unknown, f"commands neither run by a test nor listed in NOT_RUN with a reason: {unknown}"


def _overrides(command: str) -> list[str]:
    return shlex.split(strip_comment(command).removeprefix(BENCH_RUN))


def _check_point(overrides: list[str]) -> None:
    """What `peftbench.bench.run` checks before it loads anything (`check_config`). Not the method's inputs from another
    sweep's records (LoRAHub's upstream): those exist once the commands before it ran, as the slow test does."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        check_config(compose("config", overrides=overrides))


BENCH_RUNS = [c for _, c in ALL if strip_comment(c).startswith(BENCH_RUN) and not_run_reason(c) is None]


def covering_points(axes: dict[str, list[str]]) -> list[dict[str, str]]:
    """The grid's first point and each other value of each axis in turn: every value is checked once,
    without composing the whole product (the paper grids have hundreds of points)."""
    first = {key: values[0] for key, values in axes.items()}
    return [first] + [{**first, key: value} for key, values in axes.items() for value in values[1:]]


@pytest.mark.parametrize("command", BENCH_RUNS)
def test_every_bench_run_command_passes_its_checks_at_every_value_of_its_grid(command: str) -> None:
    overrides = _overrides(command)
    check_overrides(overrides)
    plain = [o for o in overrides if not o.lstrip("+").startswith(("hydra.", "hydra/", "sweep="))]
    sweep = next((o.partition("=")[2] for o in overrides if o.startswith("sweep=")), None)
    if sweep is None:
        _check_point(plain)
        return
    _, axes, fixed = launch_grid(sweep, plain)  # the command's own sweep values (`seed=2,3`) narrow its axes
    assert all(axes.values()), axes
    for point in covering_points(axes):
        _check_point([f"sweep={sweep}", *fixed, *(f"{key}={value}" for key, value in point.items())])


MAKES = [c for _, c in ALL if strip_comment(c).startswith("make ")]


@pytest.mark.parametrize("command", MAKES)
def test_every_make_command_names_real_targets(command: str) -> None:
    words = shlex.split(strip_comment(command))[1:]
    dry = subprocess.run(["make", "-n", "-o", "setup", *words], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr


def test_make_reproduce_dry_runs_and_prints_the_grid_and_its_plan() -> None:
    command = next(c for c in MAKES if "DRY=1" in c)
    done = subprocess.run(["make", "-s", "-o", "setup", *shlex.split(strip_comment(command))[1:]],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(r"sweep 'glue': 144 grid points, 96 runs", done.stdout), done.stdout
    assert re.search(r"plan of sweep 'glue': 144 grid points, 96 runs, on ", done.stdout), done.stdout


def _capped(overrides: list[str], store: Path, hydra_dir: Path) -> list[str]:
    """The command's overrides with each cap in place of its own value (or added), a temporary store and Hydra dir."""
    generative = any(re.match(r"task=(gsm8k|commonsense|cs_)", o) for o in overrides)
    caps = {key: value for key, value in CAPS.items() if generative or "generation" not in key}
    keys = [o.partition("=")[0] for o in overrides]
    capped = [f"{key}={caps[key]}" if key in caps else o for key, o in zip(keys, overrides, strict=True)]
    capped += [f"{key}={value}" for key, value in caps.items() if key not in keys]
    is_sweep = "sweep" in keys
    return [*capped, f"store.root={store}", f"hydra.{'sweep' if is_sweep else 'run'}.dir={hydra_dir}"]


@pytest.mark.slow
@pytest.mark.parametrize("doc", [path for path in DOCS if any(c in BENCH_RUNS for c in doc_commands(path))],
                         ids=lambda p: p.name)  # fmt: skip
def test_the_cpu_commands_of_each_doc_run_in_order(doc: Path, tmp_path: Path) -> None:
    """Each CPU-runnable command, in the file's order (a report after its sweep, LoRAHub after its upstream),
    with the caps above, into one temporary store: each exits 0 and the store gets what the command promises."""
    store = tmp_path / "runs"
    for i, command in enumerate(doc_commands(doc)):
        if not_run_reason(command) is not None or NEEDS_GPU_OR_HUB.search(command):
            continue
        text = strip_comment(command)
        if text.startswith(BENCH_RUN):
            overrides = _overrides(command)
            before = set(store.glob("*/*.json"))
            done = run_cli(*_capped(overrides, store, tmp_path / f"hydra{i}"), timeout=900)
            assert done.returncode == 0, f"{text}\n{done.stderr[-3000:]}"
            assert set(store.glob("*/*.json")) - before, f"{text}: no new record in {store}"
        elif text.startswith(PEFTBENCH):
            args = shlex.split(text.removeprefix(PEFTBENCH))
            extra = ["--store", str(store)] + (["--out", str(tmp_path / "out")] if args[0] == "report" else [])
            done = subprocess.run([sys.executable, "-m", "peftbench.bench.cli", *args, *extra], cwd=REPO,
                                  capture_output=True, text=True, timeout=300)  # fmt: skip
            assert done.returncode == 0, f"{text}\n{done.stderr[-3000:]}"
            if args[0] == "report":
                assert (tmp_path / "out" / args[1] / "index.html").exists()
