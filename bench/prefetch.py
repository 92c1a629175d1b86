"""`peftbench prefetch <sweep> [overrides]`: put every model and dataset a sweep needs into the HF cache.

Run it where there is internet (a login node); compute jobs then run with `HF_HUB_OFFLINE=1
HF_DATASETS_OFFLINE=1` and read the cache. Offline-protocol points and package/config models need
nothing from the hub and are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatch

from bench.grid import grid_axes, grid_points, sweep_config
from tasks.base import HubLoad


def hub_assets(sweep: str, overrides: list[str]) -> tuple[list[str], list[HubLoad]]:
    """(hub model ids, the `load_dataset` calls) that the sweep's grid makes, in grid order, each once."""
    from bench.run import identify

    models: dict[str, None] = {}
    datasets: dict[HubLoad, None] = {}
    axes = grid_axes(sweep_config(sweep, overrides))
    for override in overrides:  # `task=glue_rte` narrows the grid's task axis to that task
        key, sep, value = override.partition("=")
        if sep and key in axes:
            axes[key] = value.split(",")
    for point in grid_points(axes):
        cfg = sweep_config(sweep, [*overrides, *(f"{k}={v}" for k, v in point.items())])
        task = identify(cfg)[3]  # validates the point too: a bad grid fails here, before any download
        if cfg.model.source == "hub":
            models[cfg.model.hub_id] = None
        if cfg.data == "hub":
            datasets.update(dict.fromkeys(task.hub_loads()))
    return list(models), list(datasets)


WEIGHT_FORMATS = ("*.safetensors", "*.bin")
SIDE_FILES = ["*.json", "*.model", "*.txt"]  # config, tokenizer (vocab, merges, spm / sentencepiece models)


def model_patterns(repo_files: list[str]) -> list[str]:
    """What to download of a model repository: its config and tokenizer, and one set of weights, safetensors
    where the repository has them, else PyTorch's `.bin` (the 7B repositories hold each set twice). Only the
    top level: `original/` (Meta's consolidated checkpoints) and other subfolders are not what transformers loads."""
    top = [f for f in repo_files if "/" not in f]
    weights = next((p for p in WEIGHT_FORMATS if any(fnmatch(f, p) for f in top)), None)
    return [*SIDE_FILES, *([weights] if weights else [])]


def prefetch(sweep: str, overrides: list[str], say: Callable[[str], None] = print) -> None:
    from huggingface_hub import list_repo_files, snapshot_download

    models, datasets = hub_assets(sweep, overrides)
    say(f"sweep {sweep!r}: {len(models)} hub models, {len(datasets)} hub datasets")
    for hub_id in models:
        path = snapshot_download(hub_id, allow_patterns=model_patterns(list_repo_files(hub_id)))
        say(f"  model {hub_id}: {path}")
    for load in datasets:
        load.load()  # the run's own call, so the cache entry is the one the run reads
        say(f"  dataset {load}: cached")
    say("done: compute jobs can run with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1")
