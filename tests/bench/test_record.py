"""The record: every schema field present, environment facts filled in, no secret inside."""

from __future__ import annotations

import os
from pathlib import Path

import accelerate
import pytest
import torch
from peftbench.bench.record import FIELDS, new_record, scrub_secrets
from peftbench.core.provenance import cuda_versions


def test_new_record_has_every_field_and_environment() -> None:
    record = new_record(run_id="abc", status="ok", config={})
    assert list(record) == list(FIELDS)
    assert record["device"] == "cpu" and record["hostname"]
    libraries = {"torch", "transformers", "peft", "datasets", "accelerate", "huggingface_hub"}
    assert set(record["versions"]) == {"python", *libraries}  # no GPU here: no CUDA keys
    assert record["versions"]["accelerate"] == accelerate.__version__
    assert record["revisions"] is None  # filled by peftbench.bench.run: the hub assets the run read


def test_unknown_field_is_refused() -> None:
    with pytest.raises(KeyError, match="accuracy"):
        new_record(run_id="abc", accuracy=1.0)


def test_secrets_are_scrubbed_but_lookalikes_kept() -> None:
    config = {
        "logger": {"wandb_api_key": "k", "hf_token": "t", "password": "p", "project": "x"},
        "model": {"config": {"pad_token_id": 0}},
        "task": {"max_new_tokens": 8, "list": [{"secret": 1, "keep": 2}]},
    }
    assert scrub_secrets(config) == {
        "logger": {"project": "x"},
        "model": {"config": {"pad_token_id": 0}},
        "task": {"max_new_tokens": 8, "list": [{"keep": 2}]},
    }
    assert new_record(run_id="a", config=config)["config"]["logger"] == {"project": "x"}


def test_cuda_versions_name_the_runtime_and_the_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a GPU record adds to `versions` (this CPU machine's nvidia-smi is a stand-in printing a driver version)."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 550.54.15\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    found = cuda_versions()
    assert found["nvidia_driver"] == "550.54.15" and found["cuda"] == str(torch.version.cuda)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert "nvidia_driver" not in cuda_versions()  # no nvidia-smi: the key is absent, not made up
