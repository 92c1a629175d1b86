"""Send a finished run's record to an experiment tracker (`logger=wandb`); `logger=none` sends nothing.

Called after the record is in the store, so a tracker failure never loses a result; it is logged as a
warning. One wandb run per grid point, finished before the next point starts, so a process that runs
many jobs (Hydra's local or Ray launcher) never mixes them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from peftbench.bench.record import scrub_secrets

log = logging.getLogger("peftbench")


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(f"{prefix}/{key}" if prefix else str(key), item))
        return out
    return {prefix: value}


def log_to_wandb(logger_cfg: DictConfig, record: dict[str, Any]) -> None:
    import wandb

    Path(logger_cfg.dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=logger_cfg.project, entity=logger_cfg.entity, mode=logger_cfg.mode, dir=str(logger_cfg.dir),
        group=record["sweep"], id=record["run_id"], resume="allow", job_type=record["task"],
        name=f"{record['method']}-{record['model']}-{record['task']}-r{record['rank']}-lr{record['lr']:g}-s{record['seed']}",
        tags=[record["method"], record["model"], record["task"], record["status"]],
        config=scrub_secrets(record["config"]), reinit="finish_previous",
    )  # fmt: skip
    try:
        summary = {k: v for k, v in record.items() if k != "config"}
        run.summary.update(scrub_secrets(_flat("", summary)))
    finally:
        run.finish()


def track(cfg: DictConfig, record: dict[str, Any]) -> None:
    """Send the record to the configured tracker; never raises (the record is already stored)."""
    name = cfg.logger.get("name", "none")
    if name == "none":
        return
    try:
        if name == "wandb":
            log_to_wandb(cfg.logger, record)
        else:
            log.warning("unknown logger %r: nothing tracked (choices: none, wandb)", name)
    except Exception as exc:  # a tracker outage must not turn a finished run into a failure
        log.warning("could not send run %s to %s: %s", record["run_id"], name, exc)
