"""A quiet console: a sweep prints its progress bars and one result line per run; the libraries' chatter
(transformers' load report, its FutureWarnings, `datasets`' map bars) goes to the run's log; `-v` brings it back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

# MiniLM from its package: a real from_pretrained with a fresh head, so transformers has a load report to print
POINT = ["model=minilm", "data=offline", "task=glue_rte", "trainer.max_steps=2", "task.max_eval_samples=8"]
CHATTER = ["LOAD REPORT", "FutureWarning", "is_gradient_checkpointing", "Loading weights", "tokenize glue_rte"]


def test_a_sweep_prints_no_library_chatter_and_its_log_has_it(tmp_path: Path) -> None:
    store = tmp_path / "runs"
    done = run_cli("-m", *POINT, "lr=1e-4,2e-4", f"store.root={store}", f"hydra.sweep.dir={tmp_path}/hydra")
    assert done.returncode == 0, done.stderr[-2000:]
    console = done.stdout + done.stderr
    assert [text for text in CHATTER if text in console] == []
    assert console.count("[ok] lora minilm glue_rte") == 2  # one result line per run
    logs = sorted((store / "adhoc" / "logs").glob("*.log"))
    assert [p.stem for p in logs] == sorted(p.stem for p in (store / "adhoc").glob("*.json"))
    for log in logs:  # the chatter is kept, in the run's own log
        text = log.read_text()
        assert "LOAD REPORT" in text and "is_gradient_checkpointing" in text


@pytest.mark.slow  # the quiet default stays in `make test`; this, its opposite, in `make test-slow`
def test_verbose_brings_the_chatter_back(tmp_path: Path) -> None:
    done = run_cli(*POINT, "-v", f"store.root={tmp_path / 'runs'}", f"hydra.run.dir={tmp_path}/hydra")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LOAD REPORT" in done.stdout + done.stderr and "FutureWarning" in done.stderr
