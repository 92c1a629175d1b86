"""A method's name and defaults are stated once: its registration (`name`) and its `Params` dataclass.

conf/method/<name>.yaml holds only comments; Hydra composes `method_defaults/<name>` (bench/method_defaults.py)
under it. A second source — a key in a method YAML, a YAML without a registered method or the reverse — fails here.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from peftbench.bench.method_defaults import KNOBS, method_defaults
from peftbench.core.paths import CONF_DIR
from peftbench.methods.base import get_method, method_names

YAMLS = sorted((CONF_DIR / "method").glob("*.yaml"))


def _compose(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)).method, resolve=True)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_a_method_yaml_sets_no_key(path) -> None:  # noqa: ANN001
    assert yaml.safe_load(path.read_text()) is None, f"{path.name} states a value: defaults live in Params"


def test_every_yaml_names_a_registered_method_and_every_method_has_one() -> None:
    assert [p.stem for p in YAMLS] == method_names()


@pytest.mark.parametrize("name", method_names())
def test_the_composed_method_is_its_name_and_params_defaults(name: str) -> None:
    method = get_method(name)
    fields = dataclasses.fields(method.Params)
    assert all(f.metadata.get("help") for f in fields), f"{name}: every Params field says what it is"
    composed = _compose(f"method={name}")
    assert composed == {"name": name, **dataclasses.asdict(method.Params())}


def test_sweep_knobs_reach_every_method_with_the_field() -> None:
    assert _compose("method=lora", "+alpha=64", "+dropout=0.1")["lora_alpha"] == 64
    assert _compose("method=goat", "+moe_aux_loss_coef=0.5")["aux_loss_coef"] == 0.5
    assert _compose("method=singlora", "+alpha=32")["alpha"] == 32
    assert _compose("method=full", "+alpha=64") == {"name": "full"}  # no field, no effect
    node = method_defaults(get_method("lora"))
    assert node["lora_alpha"] == "${oc.select:alpha,16}" and node["lora_dropout"] == "${oc.select:dropout,0.0}"
    assert set(KNOBS) >= {"lora_alpha", "lora_dropout", "aux_loss_coef"}
