"""The hub lock and prefetch's checks, on hub-shaped fixtures and a fake `HfApi`.

The fixture cache holds FacebookAI/roberta-base (a tiny model of the real class) and three revisions of GLUE RTE, as
re-uploads leave a cache: DRIFT (a schema the table does not state), OLD (8 rows a split) and NEW (6 rows, written
last, so the copy an offline `load_dataset` picks when nothing says otherwise). The fake hub answers the calls
prefetch makes (`auth_check`, `model_info`/`dataset_info` with files, `snapshot_download`) from a table; downloads
resolve offline from the fixture cache, as they would after a real download.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets.config
import httpx2
import huggingface_hub
import huggingface_hub.constants
import peftbench.bench.run
import pytest
import yaml
from datasets import ClassLabel, Features, Value
from huggingface_hub.errors import GatedRepoError
from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling
from omegaconf import OmegaConf
from peftbench.bench.cli import main as cli_main
from peftbench.bench.prefetch import prefetch
from peftbench.core.errors import ConfigError
from peftbench.core.hub_lock import LOCK_ENV, Asset, HubLock, cached_commits
from peftbench.core.paths import CONF_DIR
from peftbench.core.provenance import differing
from peftbench.tasks.base import HubLoad
from peftbench.tasks.hub_schema import HubDataset, find

from tests.conftest import compose_run, records
from tests.hub.fixtures import model_commit, write_dataset, write_model

ROBERTA = "FacebookAI/roberta-base"
RTE = find("nyu-mll/glue", "rte")
DRIFT, OLD, NEW = "d" * 40, "a" * 40, "b" * 40
RUN = ["model=roberta-base", "task=glue_rte", "data=hub"]  # one hub model, one hub dataset
# RTE as the hub might re-upload it: a column renamed, the label a plain integer
DRIFTED = HubDataset(RTE.path, RTE.config, RTE.splits, Features({
    "sentence1": Value("string"), "hypothesis": Value("string"), "label": Value("int64"), "idx": Value("int32"),
}))  # fmt: skip


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf_home")
    work = root / ".work"
    write_dataset(DRIFTED, root / "datasets", work, commit=DRIFT)
    write_dataset(RTE, root / "datasets", work, commit=OLD, rows=8)
    write_dataset(RTE, root / "datasets", work, commit=NEW, rows=6)
    write_model(OmegaConf.load(CONF_DIR / "model" / "roberta-base.yaml"), root / "hub", work)
    return root


@pytest.fixture
def offline_cache(hf_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process reads the fixture cache with the hub off, and its own lock file (returned)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hf_home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lock = tmp_path / "hub.lock.yaml"
    monkeypatch.setenv(LOCK_ENV, str(lock))
    return lock


def _sibling(name: str, data: bytes) -> RepoSibling:
    """A file as `*_info(files_metadata=True)` lists it: LFS (sha256) for weights, a git blob id for the rest."""
    if name.endswith((".safetensors", ".bin", ".parquet")):
        lfs = BlobLfsInfo(size=len(data), sha256=hashlib.sha256(data).hexdigest(), pointer_size=134)
        return RepoSibling(rfilename=name, size=len(data), blob_id=hashlib.sha1(data).hexdigest(), lfs=lfs)
    return RepoSibling(rfilename=name, size=len(data), blob_id=hashlib.sha1(data).hexdigest())


class FakeHub:
    """The HfApi calls prefetch makes, answered from `repos` ({repo_id: {"main": commit, commit: {file: bytes}}})."""

    def __init__(self, repos: dict[str, dict[str, Any]], gated: tuple[str, ...] = ()) -> None:
        self.repos, self.gated = repos, gated

    def auth_check(self, repo_id: str, repo_type: str | None = None) -> None:
        if repo_id in self.gated:
            url = f"https://huggingface.co/api/models/{repo_id}/auth-check"
            raise GatedRepoError("gated", response=httpx2.Response(403, request=httpx2.Request("GET", url)))

    def _info(self, repo_id: str, revision: str | None = None, files_metadata: bool = False) -> SimpleNamespace:
        repo = self.repos[repo_id]
        commit = repo["main"] if revision in (None, "main") else revision
        return SimpleNamespace(sha=commit, siblings=[_sibling(n, d) for n, d in repo[commit].items()])

    model_info = dataset_info = _info

    def snapshot_download(self, repo_id: str, revision: str, allow_patterns: list[str]) -> str:
        return huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns)


def _hub(hf_home: Path, glue_main: str, glue_files: dict[str, bytes] | None = None) -> FakeHub:
    commit = model_commit(ROBERTA)
    snapshot = hf_home / "hub" / f"models--{ROBERTA.replace('/', '--')}" / "snapshots" / commit
    model_files = {p.name: p.read_bytes() for p in snapshot.iterdir()}
    model_files["pytorch_model.bin"] = b"the same weights again"  # the hub holds both formats; one is fetched
    glue = glue_files or {"README.md": b"---\nconfigs: ...", "rte/train-00000-of-00001.parquet": b"PAR1..."}
    return FakeHub({
        ROBERTA: {"main": commit, commit: model_files},
        "nyu-mll/glue": {"main": glue_main, **{c: glue for c in (DRIFT, OLD, NEW)}},
        "meta-llama/Llama-2-7b-hf": {},
    }, gated=("meta-llama/Llama-2-7b-hf",))  # fmt: skip


def _lock(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_prefetch_writes_the_lock_and_update_moves_it(offline_cache: Path, hf_home: Path) -> None:
    said: list[str] = []
    assert prefetch("none", RUN, said.append, api=_hub(hf_home, glue_main=OLD)) == 0
    lock = _lock(offline_cache)
    model = lock["models"][ROBERTA]
    weights = hf_home / "hub" / f"models--{ROBERTA.replace('/', '--')}" / "snapshots" / model_commit(ROBERTA)
    weights = (weights / "model.safetensors").read_bytes()
    assert (model["revision"], model["commit"]) == (None, model_commit(ROBERTA))
    assert model["files"]["model.safetensors"] == {"size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}
    assert "pytorch_model.bin" not in model["files"]  # the files prefetch downloads: one weight format
    assert model["files"]["config.json"]["blob"]  # a file outside LFS: its git blob id
    glue = lock["datasets"]["nyu-mll/glue"]
    assert (glue["commit"], glue["loads"]) == (OLD, [{"config": "rte", "split": None}])
    assert set(glue["files"]) == {"README.md", "rte/train-00000-of-00001.parquet"}
    assert f"  dataset nyu-mll/glue/rte at {OLD}: cached" in said

    said.clear()  # the hub moved on: a plain prefetch keeps the lock, --update moves it
    assert prefetch("none", RUN, said.append, api=_hub(hf_home, glue_main=NEW)) == 0
    assert _lock(offline_cache)["datasets"]["nyu-mll/glue"]["commit"] == OLD
    assert prefetch("none", RUN, said.append, update=True, api=_hub(hf_home, glue_main=NEW)) == 0
    assert _lock(offline_cache)["datasets"]["nyu-mll/glue"]["commit"] == NEW
    assert f"  dataset nyu-mll/glue: lock moved from {OLD} to {NEW}" in said
    assert _lock(offline_cache)["models"][ROBERTA] == model  # nothing else moved


def test_a_load_reads_the_locked_revision_not_the_newest_copy(offline_cache: Path) -> None:
    load = HubLoad("nyu-mll/glue", "rte")
    assert cached_commits(Asset("dataset", "nyu-mll/glue"), [load]) == [DRIFT, OLD, NEW]
    assert len(load.load()["train"]) == 6  # no lock: what an offline load_dataset picks, the newest copy
    lock = HubLock(offline_cache)
    lock.set(Asset("dataset", "nyu-mll/glue"), {"revision": None, "commit": OLD, "files": {}})
    lock.save()
    assert len(load.load()["train"]) == 8


def _locked(path: Path, dataset_commit: str, model: str | None = None) -> None:
    lock = HubLock(path)
    lock.set(Asset("model", ROBERTA), {"revision": None, "commit": model or model_commit(ROBERTA), "files": {}})
    lock.set(Asset("dataset", "nyu-mll/glue"), {"revision": None, "commit": dataset_commit, "files": {}})
    lock.save()


def test_a_stale_lock_is_refused_in_one_line_before_anything_loads(offline_cache: Path, store: Path) -> None:
    _locked(offline_cache, "c" * 40)
    with pytest.raises(ConfigError) as refused:
        peftbench.bench.run.run(compose_run(store, *RUN))
    assert str(refused.value) == (
        f"dataset nyu-mll/glue: the hub lock {offline_cache} is at revision {'c' * 40}, the local cache holds "
        f"{DRIFT}, {OLD}, {NEW}; run `peftbench prefetch none <your overrides>` to fetch the locked revision, or "
        "`peftbench prefetch none <your overrides> --update` to move the lock"
    )
    _locked(offline_cache, OLD, model="e" * 40)
    with pytest.raises(ConfigError, match=rf"^model {ROBERTA}: the hub lock .* is at revision e{{40}}, the local "
                                          rf"cache holds {model_commit(ROBERTA)}; run"):  # fmt: skip
        peftbench.bench.run.run(compose_run(store, *RUN))
    with pytest.raises(ConfigError, match=r"its config pins revision 'v2', the hub lock .* None; run .* --update"):
        peftbench.bench.run.run(compose_run(store, *RUN, "+model.revision=v2"))
    assert records(store) == []


def test_a_run_reads_the_lock_and_its_record_carries_the_revisions(offline_cache: Path, store: Path) -> None:
    _locked(offline_cache, OLD)
    record = peftbench.bench.run.run(compose_run(store, *RUN, "trainer.max_steps=1", "task.max_eval_samples=2"))
    assert record["status"] == "ok", record["error"]
    assert json.loads(records(store)[0].read_text())["revisions"] == record["revisions"]
    lock = offline_cache
    locked = _lock(lock)
    assert record["revisions"] == {
        ROBERTA: {"revision": locked["models"][ROBERTA]["commit"], "locked": True},
        "datasets/nyu-mll/glue": {"revision": locked["datasets"]["nyu-mll/glue"]["commit"], "locked": True},
    }
    assert record["protocol"]["train_rows"] == 8  # OLD's rows, though NEW is the newest copy in the cache
    assert differing([record, {**record, "revisions": {ROBERTA: record["revisions"][ROBERTA]}}]) == {
        "locked.datasets/nyu-mll/glue": [True, None], "revisions.datasets/nyu-mll/glue": [OLD, None],
    }  # fmt: skip


def test_a_gated_model_is_one_line_and_the_datasets_are_still_fetched(offline_cache: Path, hf_home: Path) -> None:
    said: list[str] = []
    status = prefetch("none", ["model=llama2-7b", "task=glue_rte", "data=hub"], said.append,
                      api=_hub(hf_home, glue_main=OLD))  # fmt: skip
    assert status == 1
    assert said[1] == (
        "  model meta-llama/Llama-2-7b-hf is gated: accept its licence at https://huggingface.co/meta-llama/"
        "Llama-2-7b-hf (signed in), then `hf auth login` or set HF_TOKEN to a token of that account; skipped, the "
        "other assets are fetched"
    )
    assert f"  dataset nyu-mll/glue/rte at {OLD}: cached" in said
    lock = _lock(offline_cache)
    assert lock["models"] == {} and lock["datasets"]["nyu-mll/glue"]["commit"] == OLD
    assert said[-1] == "1 problem(s), listed above; exit status 1"


def test_a_dataset_with_a_loading_script_is_one_line(offline_cache: Path, hf_home: Path) -> None:
    said: list[str] = []
    hub = _hub(hf_home, glue_main=OLD, glue_files={"glue.py": b"class Glue(datasets.GeneratorBasedBuilder): ..."})
    assert prefetch("none", RUN, said.append, api=hub) == 1
    assert (
        "  dataset nyu-mll/glue holds a loading script (glue.py), which datasets 5 refuses ('Dataset scripts are no "
        "longer supported'); pin the hub's parquet conversion in its task entry (`revision: refs/convert/parquet` "
        "beside `path:`) or use a parquet copy of the dataset"
    ) in said
    assert "nyu-mll/glue" not in _lock(offline_cache)["datasets"]


def test_check_prints_every_schema_difference(offline_cache: Path, hf_home: Path) -> None:
    said: list[str] = []
    assert prefetch("none", RUN, said.append, check=True, api=_hub(hf_home, glue_main=DRIFT)) == 1
    assert [line for line in said if ": column" in line] == [
        "  dataset nyu-mll/glue/rte: column sentence2 is missing (the table has string)",
        "  dataset nyu-mll/glue/rte: column hypothesis (string) is not in the table",
        "  dataset nyu-mll/glue/rte: column label: the hub has int64, the table ClassLabel(entailment, not_entailment)",
    ]
    assert not offline_cache.exists()  # --check writes no lock
    said.clear()
    assert prefetch("none", RUN, said.append, check=True, api=_hub(hf_home, glue_main=OLD)) == 0
    assert said[-1] == "check: every model readable, no loading script, every schema as docs/hub_assets.md states"


def test_no_route_to_the_hub_is_one_line(
    offline_cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the real HfApi, with the hub switched off (HF_HUB_OFFLINE=1, set by the fixture), through the command line
    assert cli_main(["prefetch", "none", *RUN]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (
        f"peftbench: cannot reach the hub for model {ROBERTA} (OfflineModeIsEnabled); the hub is switched off here "
        "(HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE"
    )
    # hub on, no route to it (a port nothing listens on): httpx's ConnectError
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    said: list[str] = []
    assert prefetch("none", RUN, said.append, api=huggingface_hub.HfApi(endpoint="http://127.0.0.1:9")) == 1
    assert said[-1] == (
        f"peftbench: cannot reach the hub for model {ROBERTA} (ConnectError); run `peftbench prefetch` where the "
        "hub is reachable (a login node), then copy or share the cache"
    )


def test_schema_differences_name_types_and_label_names() -> None:
    from peftbench.tasks.hub_schema import differences

    def labels(first: list[str], second: list[str]) -> Features:
        return Features({"label": ClassLabel(names=first), "y": ClassLabel(names=second)})

    stated = labels(["class_0", "class_1"], ["no", "yes"])
    assert differences(stated, labels(["cat", "dog"], ["no", "yes"])) == []
    assert differences(stated, labels(["a", "b", "c"], ["yes", "no"])) == [
        "column label: the hub has ClassLabel(a, b, c), the table ClassLabel(class_0, class_1)",
        "column y: the hub has ClassLabel(yes, no), the table ClassLabel(no, yes)",
    ]  # a placeholder ClassLabel(N) compares the number of classes only; named labels compare their order too
