"""wandb offline runs, prefetch's asset list, the offline-cache error, and the launcher configs."""

from __future__ import annotations

import json
from pathlib import Path

import peftbench.bench.run
import pytest
from omegaconf import OmegaConf
from peftbench.bench.grid import sweep_config
from peftbench.bench.prefetch import hub_assets
from peftbench.core.errors import ConfigError
from peftbench.core.hub_lock import Asset
from peftbench.tasks.base import HubLoad

from tests.conftest import compose_run, records, run_cli

SECRET = "sekrit-0123456789abcdef"


def _summary_value(blob: bytes, key: str) -> bytes:
    """The JSON text stored after a summary key in a .wandb file (protobuf: key, then value_json)."""
    start = blob.index(key.encode() + b"\x82\x01") + len(key) + 2
    return blob[start + 1 : start + 1 + blob[start]]


def test_wandb_offline_run_has_the_record_as_summary_and_no_secret(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    wandb_dir = tmp_path / "wandb"
    record = peftbench.bench.run.run(compose_run(store, "logger=wandb", f"logger.dir={wandb_dir}"))
    assert record["status"] == "ok"
    runs = list((wandb_dir / "wandb").glob(f"offline-run-*-{record['run_id']}"))
    assert len(runs) == 1  # id = run_id
    blob = (runs[0] / f"run-{record['run_id']}.wandb").read_bytes()
    assert _summary_value(blob, "trainable_params") == str(record["trainable_params"]).encode()
    assert json.loads(_summary_value(blob, "metrics/primary")) == pytest.approx(record["metrics"]["primary"])
    assert _summary_value(blob, "status") == b'"ok"'
    assert record["sweep"].encode() in blob  # group = sweep
    for path in [*wandb_dir.rglob("*"), *store.rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_second_run_in_the_same_process_is_a_new_wandb_run(store: Path, tmp_path: Path) -> None:
    first = peftbench.bench.run.run(compose_run(store, "logger=wandb", f"logger.dir={tmp_path}", "seed=0"))
    second = peftbench.bench.run.run(compose_run(store, "logger=wandb", f"logger.dir={tmp_path}", "seed=1"))
    folders = sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert folders == sorted([first["run_id"], second["run_id"]])


def test_prefetch_lists_every_hub_model_and_dataset_of_a_grid() -> None:
    models, datasets = hub_assets("goat_t4", ["method=lora"])
    assert models == [Asset("model", "FacebookAI/roberta-large")]
    assert datasets == [
        HubLoad("nyu-mll/glue", name) for name in ("cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte")
    ]
    models, datasets = hub_assets("goat_t3", ["method=goat"])
    assert models == [Asset("model", "meta-llama/Llama-2-7b-hf")]
    assert datasets[0] == HubLoad("zwhe99/commonsense_170k", None, "train")
    assert HubLoad("baber/piqa", None, "validation") in datasets and len(datasets) == 1 + 8
    assert hub_assets("demo", []) == ([], [])  # offline protocol, package model: nothing to fetch
    _, images = hub_assets("goat_t1", ["method=lora", "task=img_svhn"])
    assert images == [HubLoad("ufldl-stanford/svhn", "cropped_digits", s) for s in ("train", "test")]  # not `extra`
    # a launch's own sweep values narrow the grid (a task axis) or add one (`task.max_eval_samples`), as Hydra would
    _, two = hub_assets("goat_t4", ["method=lora", "task=glue_rte,glue_mrpc", "task.max_eval_samples=8,16"])
    assert two == [HubLoad("nyu-mll/glue", "rte"), HubLoad("nyu-mll/glue", "mrpc")]


def test_prefetch_downloads_one_weight_format() -> None:
    from peftbench.bench.prefetch import model_patterns

    both = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "original/consolidated.00.pth"]
    assert model_patterns(both) == ["*.json", "*.model", "*.txt", "*.safetensors"]
    assert model_patterns(["config.json", "pytorch_model.bin", "spm.model"]) == ["*.json", "*.model", "*.txt", "*.bin"]


def test_missing_asset_in_an_offline_job_is_one_line_and_no_record(store: Path) -> None:
    result = run_cli("model=roberta-base", "task=glue_rte", "data=offline", "trainer=smoke", f"store.root={store}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "peftbench: error: model 'FacebookAI/roberta-base' is not in the local Hugging Face cache and the hub is "
        "off (HF_HUB_OFFLINE=1); run `peftbench prefetch none <your overrides>` where there is internet"
    )
    assert "Traceback" not in result.stderr and records(store) == []


def test_missing_dataset_names_the_task_and_its_hub_id(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"^the data of task 'glue_rte' \(nyu-mll/glue/rte\) is not in the local"):
        peftbench.bench.run.run(compose_run(store, "data=hub"))
    assert records(store) == []


def test_launcher_configs_compose() -> None:
    # kept unresolved: the setup lines name the submission directory, known only inside a Hydra run
    slurm = OmegaConf.to_container(sweep_config("goat_t4", ["hydra/launcher=slurm"]).hydra, resolve=False)["launcher"]
    assert slurm["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (slurm["gpus_per_node"], slurm["max_num_timeout"], slurm["array_parallelism"]) == (1, 3, 32)
    assert any("WANDB_MODE=offline" in line and "HF_HUB_OFFLINE=1" in line for line in slurm["setup"])
    assert slurm["setup"][0].startswith("source ${oc.env:PEFTBENCH_VENV")
    assert slurm["additional_parameters"] == {} and "srun_args" not in slurm
    ray = sweep_config("goat_t4", ["hydra/launcher=ray_local"]).hydra.launcher
    assert ray._target_.endswith("RayLauncher") and ray.ray.remote.num_gpus == 1
