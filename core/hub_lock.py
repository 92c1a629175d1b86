"""The hub lock file (`conf/hub.lock.yaml`): every hub model and dataset a sweep reads, fixed at a commit.

Like a package lock: `peftbench prefetch <sweep>` resolves each asset the sweep reads to the commit its branch
(or the `revision:` its config pins) points at, downloads it at that commit and writes the commit, the config's
pin and the files' sizes and hashes (as `huggingface_hub` reports them) here; later prefetches keep a locked
commit until `prefetch --update` moves it. Runs read the locked commit (`revision=` for `from_pretrained` and
`load_dataset`) and refuse to start, with one line naming the asset and both revisions, when the local cache
holds other revisions of it but not the locked one. An asset the lock does not name is read as before (the
branch or the pin) and its record says `locked: false`. A missing lock file is an empty lock.

`PEFTBENCH_HUB_LOCK` names another lock file (the tests use their own).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from omegaconf import DictConfig
from peftbench.core.errors import ConfigError
from peftbench.core.paths import CONF_DIR
from peftbench.core.provenance import note_read


class HubLoad(Protocol):
    """One `load_dataset` call (tasks.base.HubLoad): what the lock needs of it, named here so core imports no task."""

    path: str
    name: str | None
    split: str | None
    revision: str | None


class Task(Protocol):
    """A task (peftbench.tasks.base.Task) as the lock sees it: the hub loads it makes."""

    def hub_loads(self) -> list[HubLoad]: ...


LOCK_ENV = "PEFTBENCH_HUB_LOCK"
DEFAULT_LOCK = CONF_DIR / "hub.lock.yaml"
KINDS = {"model": "models", "dataset": "datasets"}  # asset kind -> its section of the lock
HEADER = """\
# The hub lock: the commit of every hub model and dataset the sweeps read (core/hub_lock.py).
# Written by `peftbench prefetch <sweep>` (kept on later prefetches; `peftbench prefetch <sweep> --update` moves
# it); runs read these commits and refuse a cache that holds other revisions of an asset but not the locked one.
# revision: what the config pins (null: the main branch); commit: what that resolved to; files: the repository's
# files at the commit (for models, the files prefetch downloads) with size and sha256 (LFS) or git blob id.
"""
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def lock_path() -> Path:
    return Path(os.environ.get(LOCK_ENV) or DEFAULT_LOCK)


@dataclass(frozen=True)
class Asset:
    """A hub repository a run reads, with the revision its config pins (None: the main branch)."""

    kind: str  # "model" or "dataset"
    repo_id: str
    revision: str | None = None

    @property
    def key(self) -> str:
        """The record's and the report's name of the asset: the hub's own address (`datasets/` for datasets)."""
        return self.repo_id if self.kind == "model" else f"datasets/{self.repo_id}"

    def __str__(self) -> str:
        return f"{self.kind} {self.repo_id}"


def model_asset(model_cfg: DictConfig) -> Asset | None:
    """The hub repository of a model entry (`source: hub`), with its `revision:` pin; None for other sources."""
    if model_cfg.get("source") != "hub":
        return None
    return Asset("model", model_cfg.hub_id, model_cfg.get("revision"))


def dataset_assets(loads: list[HubLoad]) -> dict[Asset, list[HubLoad]]:
    """The dataset repositories of a list of `load_dataset` calls, each with its calls; one repository pinned at two
    revisions by two task entries is a ConfigError (the lock holds one commit per repository)."""
    pins: dict[str, set[str | None]] = {}
    for load in loads:
        pins.setdefault(load.path, set()).add(load.revision)
    for path, revisions in pins.items():
        if len(revisions) > 1:
            shown = ", ".join(sorted(repr(r) for r in revisions))
            raise ConfigError(f"dataset {path} is pinned at several revisions ({shown}); give its task entries one")
    grouped: dict[Asset, list[HubLoad]] = {}
    for load in loads:
        grouped.setdefault(Asset("dataset", load.path, load.revision), []).append(load)
    return grouped


def run_assets(cfg: DictConfig, task: Task) -> dict[Asset, list[HubLoad]]:
    """The hub assets one run reads: its model (under `source: hub`) and its task's datasets (under `data=hub`)."""
    assets: dict[Asset, list[HubLoad]] = {}
    model = model_asset(cfg.model)
    if model is not None:
        assets[model] = []
    if cfg.data == "hub":
        assets.update(dataset_assets(task.hub_loads()))
    return assets


# ---------- the lock file ----------


class HubLock:
    """The lock's entries: `{"models": {repo_id: entry}, "datasets": {repo_id: entry}}`, an entry being
    `{revision, commit, files}` (datasets also `loads`: the configs and splits read)."""

    def __init__(self, path: Path, entries: dict[str, dict[str, Any]] | None = None) -> None:
        self.path = path
        self.entries = {section: dict((entries or {}).get(section) or {}) for section in KINDS.values()}

    @classmethod
    def load(cls, path: Path | None = None) -> HubLock:
        path = path or lock_path()
        if not path.exists():
            return cls(path)
        try:
            entries = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"hub lock {path} is not valid YAML ({one_line_yaml(exc)}); fix or delete it") from None
        if not isinstance(entries, dict) or set(entries) - set(KINDS.values()):
            raise ConfigError(f"hub lock {path} has sections {sorted(entries)}; valid: {', '.join(KINDS.values())}")
        return cls(path, entries)

    def entry(self, asset: Asset) -> dict[str, Any] | None:
        return self.entries[KINDS[asset.kind]].get(asset.repo_id)

    def set(self, asset: Asset, entry: dict[str, Any]) -> None:
        self.entries[KINDS[asset.kind]][asset.repo_id] = entry

    def save(self) -> None:
        """Write the lock, sorted (a lock moved by one asset differs from the old one in that asset's lines only)."""
        body = yaml.safe_dump({s: dict(sorted(e.items())) for s, e in self.entries.items()}, sort_keys=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text(HEADER + body)
        os.replace(temporary, self.path)


def one_line_yaml(exc: Exception) -> str:
    return " ".join(str(exc).split())


@functools.cache
def _cached_lock(path: Path, mtime_ns: int) -> HubLock:
    return HubLock.load(path)


def current_lock() -> HubLock:
    """The lock file as it is now (parsed once per change: every load of a run asks it)."""
    path = lock_path()
    return _cached_lock(path, path.stat().st_mtime_ns) if path.exists() else HubLock(path)


def locked_commit(asset: Asset, lock: HubLock | None = None) -> str | None:
    """The commit the lock fixes for the asset, or None when it names none (or a pin other than the config's,
    which `check_run` refuses before anything loads)."""
    entry = (lock or current_lock()).entry(asset)
    if entry is None or entry.get("revision") != asset.revision:
        return None
    return entry["commit"]


def revision_to_read(asset: Asset) -> str | None:
    """What a load passes as `revision=`: the locked commit, else the config's pin, else None (the main branch)."""
    return locked_commit(asset) or asset.revision


# ---------- what the local cache holds ----------


def _datasets_root(repo_id: str) -> Path:
    """`datasets`' cache folder of a hub dataset: `<HF_DATASETS_CACHE>/<org>___<snake_name>`."""
    from datasets import config
    from datasets.naming import camelcase_to_snakecase

    *namespace, name = repo_id.split("/")
    return Path(config.HF_DATASETS_CACHE) / "___".join([*namespace, camelcase_to_snakecase(name)])


def _model_root(repo_id: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"


def cached_commits(asset: Asset, loads: list[HubLoad] | None = None) -> list[str]:
    """The commits of the asset the local cache holds, oldest first: a model's snapshots; for a dataset, the
    prepared copies of every config the loads read (`datasets` names a hub dataset's copy by its commit), a commit
    counting only where every one of those configs has it."""
    if asset.kind == "model":
        snapshots = _model_root(asset.repo_id) / "snapshots"
        folders = [p for p in snapshots.iterdir() if p.is_dir()] if snapshots.is_dir() else []
        return [p.name for p in sorted(folders, key=lambda p: p.stat().st_mtime)]
    root = _datasets_root(asset.repo_id)
    per_config = []
    for config in dict.fromkeys(load.name or "*" for load in loads or []) or ["*"]:
        folders = sorted((p for p in root.glob(f"{config}/*/*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
        per_config.append([p.name for p in folders])
    common = set(per_config[0]).intersection(*per_config[1:])
    return [c for c in dict.fromkeys(per_config[0]) if c in common]


def model_commit_read(repo_id: str, revision: str | None) -> str | None:
    """The commit a model load read: the revision itself when it is a commit, else what the cache's ref of that
    branch (main) points at, which from_pretrained has just used (and updated, online)."""
    if revision and _COMMIT.match(revision):
        return revision
    ref = _model_root(repo_id) / "refs" / (revision or "main")
    return ref.read_text().strip() if ref.is_file() else None


def _dataset_commit_read(data: Any) -> str | None:
    """The commit of the prepared copy a loaded Dataset or DatasetDict is memory-mapped from (its folder's name)."""
    from datasets import DatasetDict

    files = (next(iter(data.values())) if isinstance(data, DatasetDict) else data).cache_files
    return Path(files[0]["filename"]).parent.name if files else None


# ---------- reading at a revision ----------


def read_dataset(load: HubLoad, revision: str | None) -> Any:
    """`load_dataset(path, name, split=, revision=)`, noted for the record. With the hub off, `datasets` ignores
    `revision` and reads the newest prepared copy; a commit is then read from its own copy (the same `Cache`
    builder an offline `load_dataset` uses, given the commit instead of "the newest")."""
    from peftbench.core.assets import hub_offline

    data = None
    if revision and _COMMIT.match(revision) and hub_offline():
        data = _cached_at(load, revision)
    if data is None:
        from datasets import load_dataset

        data = load_dataset(load.path, load.name, split=load.split, revision=revision)
    read = _dataset_commit_read(data)
    if revision and _COMMIT.match(revision) and read != revision:  # the lock (or a commit pin) not honoured
        raise RuntimeError(f"dataset {load} was read at revision {read}, not at {revision}")
    note_read(Asset("dataset", load.path).key, read)
    return data


def _cached_at(load: HubLoad, commit: str) -> Any:
    """The load's rows from the cache's copy at `commit`, or None where the cache has no such copy."""
    from datasets.packaged_modules.cache.cache import Cache

    folders = sorted(p for p in _datasets_root(load.path).glob(f"{load.name or '*'}/*/{commit}") if p.is_dir())
    if not folders:
        return None
    folder = folders[0]  # <root>/<config>/<version>/<commit>
    builder = Cache(
        dataset_name=load.path.split("/")[-1], repo_id=load.path, config_name=folder.parent.parent.name,
        version=folder.parent.name, hash=commit,
    )  # fmt: skip
    builder.download_and_prepare()
    return builder.as_dataset(split=load.split)


# ---------- the check a run makes before anything loads ----------


def check_run(cfg: DictConfig, task: Task) -> dict[str, dict[str, Any]]:
    """Refuse, with one line, a run whose lock and cache disagree: an asset the lock fixes at a commit that the
    local cache does not hold while it holds others, or a config pin the lock did not resolve. Returns the record's
    `revisions` as planned (`finish_revisions` fills in what was read)."""
    lock = current_lock()
    command = f"peftbench prefetch {cfg.sweep}" if cfg.sweep != "adhoc" else "peftbench prefetch none <your overrides>"
    planned: dict[str, dict[str, Any]] = {}
    for asset, loads in run_assets(cfg, task).items():
        entry = lock.entry(asset)
        if entry is None:
            planned[asset.key] = {"revision": asset.revision, "locked": False}
            continue
        if entry.get("revision") != asset.revision:
            raise ConfigError(
                f"{asset}: its config pins revision {asset.revision!r}, the hub lock {lock.path} "
                f"{entry.get('revision')!r}; run `{command} --update` to lock the new pin"
            )
        commit = entry["commit"]
        held = cached_commits(asset, loads)
        if held and commit not in held:
            raise ConfigError(
                f"{asset}: the hub lock {lock.path} is at revision {commit}, the local cache holds {', '.join(held)}; "
                f"run `{command}` to fetch the locked revision, or `{command} --update` to move the lock"
            )
        planned[asset.key] = {"revision": commit, "locked": True}
    return planned


def finish_revisions(planned: dict[str, dict[str, Any]], reads: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """The record's `revisions`: for each planned asset the commit it was read at (a locked one is read at its
    commit or not at all: `read_dataset` and `revision=` see to it), else, for one a failed run never read, the
    planned revision."""
    return {
        key: {"revision": reads.get(key) or plan["revision"], "locked": plan["locked"]} for key, plan in planned.items()
    }
