"""Preemption-safe runs: Trainer checkpoints under the run's work folder, each marked complete last.

A run with `trainer.checkpoint_steps > 0` saves a Trainer checkpoint (adapter or model weights,
optimizer, scheduler, RNG states, step) every that many optimizer steps into
`<store>/<sweep>/.work/<run_id>/checkpoint-<step>/`; once the Trainer has finished writing it, a
marker file is added. A relaunched or requeued run resumes from the newest marked checkpoint and
deletes unmarked ones (a kill during a save leaves one). The work folder is removed once the
run's record is written.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

MARKER = "PEFTBENCH_COMPLETE"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class MarkCompleteCheckpoints(TrainerCallback):
    """Write the marker into a checkpoint folder after the Trainer has saved everything in it.

    The Trainer also saves at the last step whatever the schedule; that checkpoint is skipped: the
    record follows at once and the work folder is removed, so it would only cost a write of the
    weights and optimizer (tens of GB for a fully fine-tuned 7B model).
    """

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer's signature)
        if state.global_step >= state.max_steps and state.global_step % max(state.save_steps, 1):
            control.should_save = False
        return control

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer's signature)
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            (folder / MARKER).write_text(f"{state.global_step}\n")
        return control


def latest_complete(work_dir: Path) -> tuple[Path, int] | None:
    """The newest marked checkpoint and its step; unmarked (partly written) checkpoints are deleted."""
    if not work_dir.is_dir():
        return None
    complete: list[tuple[int, Path]] = []
    for folder in work_dir.iterdir():
        match = CHECKPOINT.match(folder.name)
        if not match or not folder.is_dir():
            continue
        if (folder / MARKER).exists():
            complete.append((int(match.group(1)), folder))
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if not complete:
        return None
    step, folder = max(complete)
    return folder, step
