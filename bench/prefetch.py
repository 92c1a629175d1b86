"""`peftbench prefetch <sweep> [overrides]`: put every model and dataset a sweep needs into the HF cache.

Run it where there is internet (a login node); compute jobs then run with `HF_HUB_OFFLINE=1
HF_DATASETS_OFFLINE=1` and read the cache. Offline-protocol points and package/config models need
nothing from the hub and are skipped.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.grid import grid_axes, grid_points, sweep_config


def hub_assets(sweep: str, overrides: list[str]) -> tuple[list[str], list[tuple[str, str | None]]]:
    """(hub model ids, hub datasets as (path, config name)) that the sweep's grid reads, in grid order."""
    from bench.run import identify

    models: dict[str, None] = {}
    datasets: dict[tuple[str, str | None], None] = {}
    for point in grid_points(grid_axes(sweep_config(sweep, overrides))):
        cfg = sweep_config(sweep, [*overrides, *(f"{k}={v}" for k, v in point.items())])
        task = identify(cfg)[3]  # validates the point too: a bad grid fails here, before any download
        if cfg.model.source == "hub":
            models[cfg.model.hub_id] = None
        if cfg.data == "hub":
            datasets.update(dict.fromkeys(task.hub_datasets()))
    return list(models), list(datasets)


def prefetch(sweep: str, overrides: list[str], say: Callable[[str], None] = print) -> None:
    from datasets import load_dataset
    from huggingface_hub import snapshot_download

    models, datasets = hub_assets(sweep, overrides)
    say(f"sweep {sweep!r}: {len(models)} hub models, {len(datasets)} hub datasets")
    for hub_id in models:
        # the weights in safetensors (or PyTorch's format where a repo has no safetensors), config, tokenizer
        path = snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.bin"])
        say(f"  model {hub_id}: {path}")
    for path, name in datasets:
        load_dataset(path, name)
        say(f"  dataset {path}{'/' + name if name else ''}: cached")
    say("done: compute jobs can run with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1")
