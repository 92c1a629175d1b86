"""Hand-made runs for the report tests: a completed record and its predictions sidecar, written through the store."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from peftbench.core.store import RunStore


def write_run(
    store: RunStore,
    sweep: str,
    method: str,
    seed: int,
    correct: Iterable[bool],
    task: str = "glue_rte",
    run_id: str | None = None,
    **fields: Any,
) -> str:
    """A run right where `correct` says (references alternate 0/1), its accuracy the record's primary metric;
    `fields` override the record's (model, rank, trainable_params, config, ...). Returns the run_id (default:
    method-model-task-seed; give one where two runs differ in anything else)."""
    correct = [bool(c) for c in correct]
    run_id = run_id or f"{method}-{fields.get('model', 'roberta-base')}-{task}-{seed}"
    rows = [{"split": "eval", "id": i, "reference": i % 2, "prediction": i % 2 if c else 1 - i % 2, "correct": c}
            for i, c in enumerate(correct)]  # fmt: skip
    accuracy = sum(correct) / len(rows)
    sidecar = store.write_predictions(sweep, run_id, rows).name
    store.write({
        "run_id": run_id, "sweep": sweep, "status": "ok", "method": method, "model": "roberta-base", "task": task,
        "rank": 8, "lr": 1e-4, "seed": seed, "data": "hub", "metrics": {"accuracy": accuracy, "primary": accuracy},
        "primary_metric": "accuracy", "trainable_pct": 1.0, "predictions_file": sidecar, **fields,
    })  # fmt: skip
    return run_id
