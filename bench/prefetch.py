"""`peftbench prefetch <sweep> [overrides] [--update] [--check]`: every model and dataset a sweep reads, into the HF
cache at the commit the hub lock (peftbench.core.hub_lock, `conf/hub.lock.yaml`) fixes.

Run it where there is internet (a login node); compute jobs then run with `HF_HUB_OFFLINE=1
HF_DATASETS_OFFLINE=1` and read the cache. Offline-protocol points and package/config models need
nothing from the hub and are skipped. What would otherwise fail hours into a sweep is caught here, each in one line:
a gated model this token may not read (checked for every model first; the other assets are still fetched and
the exit status is 1), a dataset repository that holds a loading script (`datasets` 5 refuses them), and no
route to the hub. `--check` downloads nothing and writes no lock: it makes those checks and compares each
dataset's real features with the schema docs/hub_assets.md states (tasks/hub_schema.py), printing every
difference. `--update` moves locked assets to what their branch (or pin) points at now.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any

from peftbench.bench.grid import grid_points, launch_grid, sweep_config
from peftbench.core.hub_lock import Asset, HubLock, dataset_assets, lock_path, model_asset
from peftbench.tasks.base import HubLoad


def hub_assets(sweep: str, overrides: list[str]) -> tuple[list[Asset], list[HubLoad]]:
    """(the hub models, the `load_dataset` calls) that the sweep's grid makes, in grid order, each once."""
    from peftbench.bench.run import identify

    models: dict[Asset, None] = {}
    datasets: dict[HubLoad, None] = {}
    _, axes, fixed = launch_grid(sweep, overrides)  # `task=glue_rte`: that task alone
    for point in grid_points(axes):
        cfg = sweep_config(sweep, [*fixed, *(f"{k}={v}" for k, v in point.items())])
        task = identify(cfg)[3]  # validates the point too: a bad grid fails here, before any download
        model = model_asset(cfg.model)
        if model is not None:
            models[model] = None
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


# ---------- talking to the hub ----------


class Unreachable(Exception):
    """The hub could not be reached for an asset: nothing else can be fetched either."""


def _unreachable(exc: BaseException) -> str | None:
    """Why an exception means "no route to the hub" (its class name), or None for any other failure. The offline
    switch raises OfflineModeIsEnabled; no network raises httpx's ConnectError or a timeout, which `datasets`
    wraps into a ConnectionError; the chain of causes is searched."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OfflineModeIsEnabled):
            return "OfflineModeIsEnabled"
        name = type(seen).__name__
        if name in ("ConnectError", "ConnectTimeout", "TimeoutException", "ReadTimeout") or isinstance(
            seen, ConnectionError | TimeoutError
        ):
            return name
        seen = seen.__cause__ or seen.__context__
    return None


def _hub_call(asset: Asset | HubLoad, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        why = _unreachable(exc)
        if why is None:
            raise
        what = asset if isinstance(asset, Asset) else f"dataset {asset}"
        if why == "OfflineModeIsEnabled":
            fix = "the hub is switched off here (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE"
        else:
            fix = "run `peftbench prefetch` where the hub is reachable (a login node), then copy or share the cache"
        raise Unreachable(f"cannot reach the hub for {what} ({why}); {fix}") from None


def access_problem(api: Any, asset: Asset) -> str | None:
    """One line when this token may not read the model (a gated licence not accepted, no token, a private or
    missing repository); None when it may."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        _hub_call(asset, lambda: api.auth_check(asset.repo_id, repo_type=asset.kind))
    except GatedRepoError:
        return (
            f"{asset} is gated: accept its licence at https://huggingface.co/{asset.repo_id} (signed in), then "
            "`hf auth login` or set HF_TOKEN to a token of that account; skipped, the other assets are fetched"
        )
    except RepositoryNotFoundError:
        return (
            f"{asset} does not exist or this token cannot see it (private): check the model entry's hub_id, "
            "or `hf auth login` / HF_TOKEN with an account that can; skipped"
        )
    return None


class AssetProblem(Exception):
    """An asset that cannot be fetched, in one line (the other assets still are)."""


def _file_entry(sibling: Any) -> dict[str, Any]:
    """A file's size and hash as the hub reports them: sha256 for an LFS file, the git blob id for the others."""
    if sibling.lfs is not None:
        return {"size": sibling.size, "sha256": sibling.lfs["sha256"]}
    return {"size": sibling.size, "blob": sibling.blob_id}


def resolve(api: Any, asset: Asset, loads: list[HubLoad] | None = None) -> dict[str, Any]:
    """A lock entry for the asset as the hub serves it now: the commit its pin (or main) points at, its files."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    info_of = api.model_info if asset.kind == "model" else api.dataset_info
    try:
        info = _hub_call(asset, lambda: info_of(asset.repo_id, revision=asset.revision, files_metadata=True))
    except RevisionNotFoundError:
        raise AssetProblem(f"{asset} has no revision {asset.revision!r} on the hub: fix its `revision:` pin") from None
    except GatedRepoError:
        raise AssetProblem(f"{asset} is gated: accept its terms at https://huggingface.co/{asset.key}, then "
                           "`hf auth login` or set HF_TOKEN; skipped") from None  # fmt: skip
    except RepositoryNotFoundError:
        raise AssetProblem(f"{asset} does not exist or this token cannot see it; skipped") from None
    siblings = list(info.siblings or [])
    if asset.kind == "model":
        from huggingface_hub.utils import filter_repo_objects

        patterns = model_patterns([s.rfilename for s in siblings])
        siblings = list(filter_repo_objects(siblings, allow_patterns=patterns, key=lambda s: s.rfilename))
    entry: dict[str, Any] = {"revision": asset.revision, "commit": info.sha}
    if loads is not None:
        entry["loads"] = _loads_of(loads)
    entry["files"] = {s.rfilename: _file_entry(s) for s in sorted(siblings, key=lambda s: s.rfilename)}
    return entry


def _loads_of(loads: list[HubLoad], earlier: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    seen = {(d["config"], d["split"]): d for d in earlier or []}
    seen.update({(load.name, load.split): {"config": load.name, "split": load.split} for load in loads})
    return [seen[key] for key in sorted(seen, key=lambda k: (str(k[0]), str(k[1])))]


def script_problem(asset: Asset, files: list[str]) -> str | None:
    """One line when the dataset repository holds a loading script `<name>.py` (what `datasets` 5 looks for and
    refuses), with the fix; None when it holds none."""
    script = f"{asset.repo_id.split('/')[-1]}.py"
    if script not in files:
        return None
    return (
        f"{asset} holds a loading script ({script}), which datasets 5 refuses ('Dataset scripts are no longer "
        "supported'); pin the hub's parquet conversion in its task entry (`revision: refs/convert/parquet` beside "
        "`path:`) or use a parquet copy of the dataset"
    )


# ---------- schema drift ----------


def real_features(load: HubLoad, commit: str) -> tuple[Any, list[str] | None] | None:
    """(features, split names or None) of the dataset at `commit`: from the local cache's copy where it has one (no
    network), else from the dataset card the hub serves (`load_dataset_builder`); None when neither states them."""
    from datasets import DatasetDict
    from peftbench.core.hub_lock import _cached_at

    cached = _cached_at(HubLoad(load.path, load.name, None), commit)
    if cached is not None:
        first = next(iter(cached.values())) if isinstance(cached, DatasetDict) else cached
        return first.features, list(cached) if isinstance(cached, DatasetDict) else None
    from datasets import load_dataset_builder

    info = _hub_call(load, lambda: load_dataset_builder(load.path, load.name, revision=commit)).info
    if info.features is None:
        return None
    return info.features, list(info.splits) if info.splits else None


def schema_problems(load: HubLoad, commit: str) -> list[str]:
    """Every difference between the dataset's real features (columns, types, label names) and splits and what
    docs/hub_assets.md states for it, one line each."""
    from peftbench.tasks.hub_schema import differences, find

    where = f"dataset {load.path}{'/' + load.name if load.name else ''}"
    stated = find(load.path, load.name)
    if stated is None:
        return [f"{where} is not in docs/hub_assets.md's table: add its row (the fixtures are built from it)"]
    found = real_features(load, commit)
    if found is None:
        return [f"{where}: the hub states no features at {commit}; run `peftbench prefetch` and check again"]
    features, splits = found
    lines = [f"{where}: {difference}" for difference in differences(stated.features, features)]
    wanted = [load.split] if load.split else list(stated.splits)
    if splits is not None:
        lines += [
            f"{where}: split {s!r} is not on the hub (it has {', '.join(splits)})" for s in wanted if s not in splits
        ]
    return lines


# ---------- the command ----------


@dataclass
class Outcome:
    """What a prefetch did: one line per problem (each also said as it happened)."""

    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> int:
        return 1 if self.problems else 0


def prefetch(
    sweep: str, overrides: list[str], say: Callable[[str], None] = print, *, update: bool = False,
    check: bool = False, api: Any = None,
) -> int:  # fmt: skip
    """Fetch (or with `check`, check) every hub asset of the sweep; returns the exit status (1: problems)."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    models, loads = hub_assets(sweep, overrides)
    datasets = dataset_assets(loads)
    lock = HubLock.load(lock_path())
    say(f"sweep {sweep!r}: {len(models)} hub models, {len(datasets)} hub datasets (lock: {lock.path})")
    outcome = Outcome()

    def problem(line: str) -> None:
        say(f"  {line}")
        outcome.problems.append(line)

    try:
        readable = []
        for asset in models:  # access first: a gated model is known before anything downloads
            line = access_problem(api, asset)
            if line is None:
                readable.append(asset)
            else:
                problem(line)
        for asset in readable:
            try:
                entry = _entry(api, lock, asset, None, update, check, say)
            except AssetProblem as exc:
                problem(str(exc))
                continue
            if not check:
                _fetch_model(api, asset, entry, say)
                lock.set(asset, entry)
        for asset, its_loads in datasets.items():
            try:
                entry = _entry(api, lock, asset, its_loads, update, check, say)
            except AssetProblem as exc:
                problem(str(exc))
                continue
            line = script_problem(asset, list(entry["files"]))
            if line is not None:
                problem(line)
                continue
            if check:
                for load in its_loads:
                    for line in schema_problems(load, entry["commit"]):
                        problem(line)
                continue
            for load in its_loads:
                _fetch_dataset(load, entry["commit"], say)
            lock.set(asset, entry)
    except Unreachable as exc:
        say(f"peftbench: {exc}")
        return 1
    if not check:
        lock.save()
        say(f"lock written: {lock.path}")
    if outcome.problems:
        say(f"{len(outcome.problems)} problem(s), listed above; exit status 1")
    elif check:
        say("check: every model readable, no loading script, every schema as docs/hub_assets.md states")
    else:
        say("done: compute jobs can run with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1")
    return outcome.status


def _entry(
    api: Any, lock: HubLock, asset: Asset, loads: list[HubLoad] | None, update: bool, check: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """The asset's lock entry: the locked one (its pin unchanged, no --update), else resolved on the hub now."""
    locked = lock.entry(asset)
    if locked is not None and not update and locked.get("revision") == asset.revision:
        if loads is not None:
            locked = {**locked, "loads": _loads_of(loads, locked.get("loads"))}
        return locked
    entry = resolve(api, asset, loads)
    if loads is not None and locked is not None:
        entry["loads"] = _loads_of(loads, locked.get("loads"))
    if check:
        say(f"  {asset}: checking revision {entry['commit']} (what {asset.revision or 'main'} points at)")
    elif locked is None:
        say(f"  {asset}: locked at {entry['commit']}")
    elif locked["commit"] != entry["commit"]:
        say(f"  {asset}: lock moved from {locked['commit']} to {entry['commit']}")
    return entry


def _fetch_dataset(load: HubLoad, commit: str, say: Callable[[str], None]) -> None:
    from peftbench.core.hub_lock import read_dataset

    _hub_call(load, lambda: read_dataset(load, commit))  # the run's own call, so the run finds this cache entry
    say(f"  dataset {load} at {commit}: cached")


def _fetch_model(api: Any, asset: Asset, entry: dict[str, Any], say: Callable[[str], None]) -> None:
    patterns = model_patterns(list(entry["files"])) if entry["files"] else None
    path = _hub_call(
        asset, lambda: api.snapshot_download(asset.repo_id, revision=entry["commit"], allow_patterns=patterns)
    )
    say(f"  {asset} at {entry['commit']}: {path}")
