"""The columns the code reads exist in the hub schemas of docs/hub_assets.md (the table the hub fixtures are built
from): renaming a column in the code, or in the table, without the other fails here."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from bench.config import CONF_DIR
from tasks.commonsense import COLUMNS, FORMATS
from tests.hub.fixtures import _rows
from tasks.hub_schema import hub_datasets

SCHEMAS = {(d.path, d.config): d for d in hub_datasets()}


def _schema(path: str, name: str | None):  # noqa: ANN202
    configs = [d for (p, c), d in SCHEMAS.items() if p == path and (name is None or c == name)]
    assert len(configs) == 1, f"{path}/{name}: not exactly one config in docs/hub_assets.md"
    return configs[0]


def _task(name: str):  # noqa: ANN202
    return OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml")


@pytest.mark.parametrize("name", [p.stem for p in sorted((CONF_DIR / "task").glob("glue_*.yaml"))])
def test_glue_columns_and_splits(name: str) -> None:
    cfg = _task(name)
    schema = _schema(cfg.hub.path, cfg.hub.name)
    assert {*cfg.text_fields, "label"} <= set(schema.features)
    assert {cfg.train_split, *cfg.eval_splits} <= set(schema.splits)


def test_commonsense_sets_read_only_their_schemas_columns() -> None:
    cfg = OmegaConf.merge(_task("commonsense"))
    train = _schema(cfg.train_hub.path, cfg.train_hub.name)
    assert {"instruction", "output"} <= set(train.features) and cfg.train_hub.split in train.splits
    for name, entry in cfg.sets.items():
        schema = _schema(entry.hub.path, entry.hub.name)
        assert entry.hub.split in schema.splits, name
        assert set(COLUMNS[entry.format]) <= set(schema.features), name
        row = _rows(schema, entry.hub.split)[0]
        build, labels = FORMATS[entry.format]
        instruction, answer = build({c: row[c] for c in COLUMNS[entry.format]})  # these columns suffice
        assert answer in labels and instruction, name


def test_gsm8k_sources() -> None:
    cfg = _task("gsm8k")
    for source in cfg.hub.values():
        schema = _schema(source.path, source.name)
        assert {source.question, source.answer} <= set(schema.features) and source.split in schema.splits
    assert "type" in _schema(cfg.hub.metamathqa.path, None).features  # GOAT's selection reads it


@pytest.mark.parametrize("name", [p.stem for p in sorted((CONF_DIR / "task").glob("img_*.yaml"))])
def test_image_columns_and_splits(name: str) -> None:
    cfg = _task(name)
    if cfg.hub is None:
        return
    schema = _schema(cfg.hub.path, cfg.hub.name)
    assert {cfg.image_column, cfg.label_column} <= set(schema.features)
    assert {cfg.train_split, cfg.eval_split} <= set(schema.splits)
    assert schema.features[cfg.label_column].num_classes == cfg.num_labels
