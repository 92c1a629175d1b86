"""Checkpoint bookkeeping: which checkpoints count as complete, and which saves are skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
from peftbench.bench.checkpoints import MARKER, MarkCompleteCheckpoints, latest_complete
from transformers import TrainerControl, TrainerState, TrainingArguments


def test_latest_complete_takes_the_newest_marked_checkpoint_and_removes_unmarked(tmp_path: Path) -> None:
    for step, marked in [(4, True), (6, True), (8, False), (10, False)]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if marked:
            (folder / MARKER).write_text(f"{step}\n")
    (tmp_path / "runs").mkdir()  # not a checkpoint: left alone
    assert latest_complete(tmp_path) == (tmp_path / "checkpoint-6", 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6", "runs"]
    assert latest_complete(tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("step", "max_steps", "saved"),
    [(5, 5, False), (4, 5, True), (6, 6, True), (2, 5, True)],
    ids=["last-step-off-schedule", "before-the-end", "last-step-on-schedule", "on-schedule"],
)
def test_only_scheduled_checkpoints_are_saved(tmp_path: Path, step: int, max_steps: int, saved: bool) -> None:
    state = TrainerState(global_step=step, max_steps=max_steps, save_steps=2)
    control = TrainerControl(should_save=True)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    MarkCompleteCheckpoints().on_step_end(args, state, control)
    assert control.should_save is saved
