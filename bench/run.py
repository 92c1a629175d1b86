"""Run one grid point: config -> task data -> model -> method -> train -> evaluate -> one record.

    python -m bench.run method=lora model=minilm task=glue_sst2 rank=8 lr=5e-4 seed=0 data=offline
    python -m bench.run sweep=demo          # a grid from conf/sweep/ (Hydra multirun)

Bad input (unknown names, bad values, a missing offline asset) ends the process with one line on
stderr, exit code 2, before anything is trained and without a record. Any other exception during a
run is recorded as `failed` with a one-line error, and a sweep goes on with its next point.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from peftbench.bench.checkpoints import latest_complete
from peftbench.bench.config import (
    check_moved_keys,
    check_overrides,
    check_store_writable,
    compute_run_id,
    experiment_config,
    normalized_axes,
    resolve_point,
    sweep_strategy,
)
from peftbench.bench.console import VERBOSE_ENV, run_log
from peftbench.bench.measure import PeakMemory, Stopwatch, count_params
from peftbench.bench.method_defaults import install as install_method_defaults
from peftbench.bench.models import load_model, load_processor
from peftbench.bench.record import new_record, now
from peftbench.bench.tracking import track
from peftbench.bench.train import (
    batch_sampler,
    best_evaluation,
    check_compile,
    check_eval_every,
    check_val_loss_every,
    optimizer_steps,
    train_and_evaluate,
    training_arguments,
)
from peftbench.core.assets import from_hub_cache
from peftbench.core.errors import ConfigError, one_line
from peftbench.core.hub_lock import check_run, finish_revisions
from peftbench.core.provenance import take_reads
from peftbench.core.store import RunStore
from peftbench.methods.base import Method, RunContext, get_method, trainable_dtypes
from peftbench.tasks.base import Task, build_task
from transformers import set_seed

log = logging.getLogger("peftbench")


def check_config(cfg: DictConfig) -> tuple[Method, Any, dict[str, Any], Task]:
    """Validate a config on its own, without loading anything heavy or reading the store; returns its method,
    params, axes and task."""
    check_moved_keys(cfg)
    sweep_strategy(cfg)  # an unknown sweep strategy stops here too (a sweep's sweeper checks it before any run)
    method = get_method(cfg.method.get("name"), cfg.method.get("module"))
    resolve_point(cfg)
    params = method.parse(OmegaConf.to_container(cfg.method, resolve=True))
    axes = normalized_axes(cfg, method.uses_rank)
    check_eval_every(cfg.trainer.get("eval_every"))
    check_compile(cfg.trainer.get("compile", False))
    task = build_task(cfg.task)
    if cfg.task.get("held_out") is not None and not task.holds_out:
        raise ConfigError(f"task.held_out is not available for task family {task.family!r}; set task.held_out=null")
    task.validate(cfg.data)
    check_val_loss_every(cfg.trainer.get("val_loss_every"), cfg.task.get("held_out"))
    return method, params, axes, task


def identify(cfg: DictConfig) -> tuple[Method, Any, dict[str, Any], Task, dict[str, Any], str]:
    """`check_config`, then the method's inputs from outside the config (`Method.inputs`, e.g. LoRAHub's upstream
    adapters, read from the store); returns method, params, axes, task, inputs and the run_id."""
    method, params, axes, task = check_config(cfg)
    inputs = method.inputs(params, cfg)
    return method, params, axes, task, inputs, compute_run_id(experiment_config(cfg, axes, inputs))


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Run one grid point and write its record; None when the point already has a complete record."""
    method, params, axes, task, inputs, run_id = identify(cfg)
    store = RunStore(check_store_writable(cfg.store.root))
    store.clean_stale_temps(cfg.sweep)
    if store.is_done(cfg.sweep, run_id):
        log.info("skip %s: already done (%s)", run_id, store.record_path(cfg.sweep, run_id))
        return None

    # before anything loads: a lock the cache does not match stops here, in one line, with no record
    planned_revisions = check_run(cfg, task)
    take_reads()  # forget what an earlier point of this process read
    rank, world_size = process_rank()
    fields: dict[str, Any] = {
        "run_id": run_id, "sweep": cfg.sweep, "method": method.name, "model": cfg.model.name,
        "task": task.name, **axes, "primary_metric": task.primary, "started_at": now(),
        "resumed_from_step": None, "world_size": world_size, "inputs": inputs or None, "strategy": sweep_strategy(cfg),
        "config": {**OmegaConf.to_container(cfg, resolve=True), "rank": axes["rank"]},
    }  # fmt: skip
    work_dir = store.sweep_dir(cfg.sweep) / ".work" / run_id
    predictions: list[dict[str, Any]] = []
    try:
        with run_log(store.sweep_dir(cfg.sweep) / "logs" / f"{run_id}.log"):
            point = _train_point(cfg, method, params, axes, task, inputs, store, run_id, work_dir)
        predictions = point.pop("predictions", [])
        fields.update(point)
    except ConfigError:
        raise
    except Exception as exc:  # any failure of one point is recorded; the sweep goes on
        if world_size > 1:  # one process of several failed (or lost a peer): no record, torchrun ends the run
            raise
        log.debug("run %s failed", run_id, exc_info=True)
        fields.update(status="failed", error=one_line(exc))
    fields["revisions"] = finish_revisions(planned_revisions, take_reads())
    if rank != 0:  # several processes, one run: the first process alone writes (the others hold the same)
        return None
    if predictions:  # first the predictions, then the record: a record never points at a missing file
        fields["predictions_file"] = store.write_predictions(cfg.sweep, run_id, predictions).name
    record = new_record(**fields, finished_at=now())
    path = store.write(record)
    # only once the record is written: a preempted job (SIGUSR2/SIGTERM -> SystemExit) or a kill
    # leaves its checkpoints for the requeued run
    shutil.rmtree(work_dir, ignore_errors=True)
    _report(record, path)
    track(cfg, record)
    return record


def _train_point(cfg, method, params, axes, task, inputs, store, run_id, work_dir) -> dict[str, Any]:  # noqa: ANN001
    """Load, adapt, train and evaluate; returns the record fields this produces."""
    set_seed(axes["seed"])
    model_name = f"model {cfg.model.get('hub_id') or cfg.model.name!r}"
    with from_hub_cache(model_name, cfg.sweep):
        processor = load_processor(cfg.model, task.modality)
    with from_hub_cache(f"the data of task {task.name!r} ({', '.join(map(str, task.hub_loads()))})", cfg.sweep):
        data = task.prepare(cfg.data, processor, axes["seed"])
    with from_hub_cache(model_name, cfg.sweep):
        model = load_model(cfg.model, task.model_kind, **task.model_head(processor))
    collate = task.collator(processor)
    ctx = RunContext.build(
        params,
        cfg.model.target_modules,
        rank=axes["rank"],
        lr=axes["lr"],
        seed=axes["seed"],
        head_modules=task.head_modules(cfg.model),
        total_steps=optimizer_steps(len(data.train), cfg.trainer),
        weight_decay=float(cfg.trainer.weight_decay),
        sample_batches=batch_sampler(data.train, collate, cfg.trainer.per_device_train_batch_size, axes["seed"]),
        store_root=str(store.root),
        inputs=inputs,
    )
    method.validate(params, model, ctx)
    base_dtype = next(model.parameters()).dtype
    set_seed(axes["seed"])  # the adapter's init depends on the seed alone, not on what loading drew
    model = method.adapt(model, params, ctx)  # trainable parameters in float32 whatever the base dtype
    counts = count_params(model, ctx.head_modules)
    # a bf16 base always computes under bf16 autocast (its float32 adapters and head need it)
    use_bf16 = base_dtype == torch.bfloat16 or (bool(cfg.trainer.bf16) and torch.cuda.is_available())
    args = training_arguments(cfg.trainer, axes, str(work_dir), use_bf16)
    resume = latest_complete(work_dir)
    memory = PeakMemory()
    memory.start()
    with Stopwatch() as watch:
        outcome = train_and_evaluate(
            model,
            collate,
            task,
            data,
            method,
            params,
            ctx,
            args,
            str(resume[0]) if resume else None,
            check_eval_every(cfg.trainer.get("eval_every")),
        )
    if outcome.held_out_losses:  # which checkpoint was evaluated, and why: beside the held-out rows' ids
        data.protocol["held_out"].update(losses=outcome.held_out_losses, restored_step=outcome.restored_step)
    fields: dict[str, Any] = {
        "protocol": data.protocol,
        "trainable_params": counts.trainable_params,
        "head_params": counts.head_params,
        "total_params": counts.total_params,
        "trainable_pct": counts.trainable_pct,
        **memory.stop(),
        "train_seconds": outcome.train_seconds,  # the Trainer's own clock: training only, not evaluation
        "run_seconds": watch.seconds,
        "steps": outcome.steps,
        "resumed_from_step": resume[1] if resume else None,
        "final_loss": outcome.final_loss,
        "dtypes": {"base": str(base_dtype).removeprefix("torch."), "trainable": trainable_dtypes(model),
                   "autocast": "bfloat16" if use_bf16 else None},
    }  # fmt: skip
    if outcome.diverged_at_step is not None:
        # JSON has no NaN: a diverged run's final loss is null, its step is in the error line
        error = f"loss became NaN/inf at step {outcome.diverged_at_step}"
        return {**fields, "status": "diverged", "error": error, "metrics": {}, "final_loss": None}
    metrics = {**outcome.metrics, "primary": outcome.metrics[task.primary]}
    fields.update(
        predictions=outcome.predictions, eval_seconds=outcome.eval_seconds,
        generated_tokens_per_second=outcome.generated_tokens_per_second,
    )  # fmt: skip
    best = best_evaluation(outcome.history, task.primary)
    if best is not None:  # the protocol evaluated during training: its best evaluation, with its step
        fields["eval_history"] = outcome.history
        fields["best_metrics"] = {**{k: v for k, v in best.items() if k != "step"}, "primary": best[task.primary]}
        fields["best_step"] = best["step"]
    if cfg.store.get("save_adapter"):  # beside the records; the record names the folder, relative to its own
        fields["adapter_dir"] = f"adapters/{run_id}"
        method.save(model, str(store.sweep_dir(cfg.sweep) / fields["adapter_dir"]))
    return {**fields, "status": "ok", "metrics": metrics}


def process_rank() -> tuple[int, int]:
    """(this process's rank, the number of processes) under torchrun/accelerate; (0, 1) alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _report(record: dict[str, Any], path: Path) -> None:
    primary = (record.get("metrics") or {}).get("primary")
    result = f"{record['primary_metric']}={primary:.4f}" if primary is not None else record["error"]
    log.info(
        "[%s] %s %s %s rank=%s lr=%g seed=%s: %s -> %s",
        record["status"], record["method"], record["model"], record["task"], record["rank"],
        record["lr"], record["seed"], result, path,
    )  # fmt: skip


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except ConfigError as exc:
        print(f"peftbench: error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    if "-v" in sys.argv[1:]:  # the libraries' chatter back on the console (peftbench.bench.console)
        sys.argv.remove("-v")
        os.environ[VERBOSE_ENV] = "1"
    try:
        check_overrides(sys.argv[1:])
    except ConfigError as exc:
        print(f"peftbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    # `method.module=` and `task.module=` work whether or not the YAML has a `module` key (Hydra wants `++` to add one)
    sys.argv[1:] = [f"++{arg}" if arg.startswith(("method.module=", "task.module=")) else arg for arg in sys.argv[1:]]
    install_method_defaults()
    _hydra_main()


if __name__ == "__main__":
    main()
