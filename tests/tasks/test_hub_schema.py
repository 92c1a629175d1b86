"""The columns the code reads exist in the hub schemas of docs/hub_assets.md (the table the hub fixtures are built
from): renaming a column in the code, or in the table, without the other fails here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import ClassLabel
from omegaconf import OmegaConf
from peftbench.core.paths import CONF_DIR
from peftbench.tasks.base import build_task
from peftbench.tasks.commonsense import COLUMNS, FORMATS, LLM_ADAPTERS_LABELS, extract_first
from peftbench.tasks.hub_schema import hub_datasets
from transformers import AutoImageProcessor

from tests.hub.fixtures import CLIP_PREPROCESSOR, _rows

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


def test_arc_rows_of_three_and_five_choices_and_digit_keys() -> None:
    """ARC on the hub mixes 4-letter rows with 3- and 5-letter ones and digit keys ("1".."4"); the fixtures do too,
    and each row's answer is its key's position among the row's own choices."""
    rows = list(_rows(_schema("allenai/ai2_arc", "ARC-Challenge"), "test", 4))
    build, _ = FORMATS["arc"]
    assert [list(row["choices"]["label"]) for row in rows] == [
        ["A", "B", "C", "D"], ["A", "B", "C"], ["A", "B", "C", "D", "E"], ["1", "2", "3", "4"],
    ]  # fmt: skip
    built = [build(row) for row in rows]
    assert [answer for _, answer in built] == ["answer1", "answer2", "answer3", "answer4"]  # keys A, B, C, "4"
    assert built[1][0].endswith("Answer format: answer1/answer2/answer3")
    assert built[2][0].endswith("Answer format: answer1/answer2/answer3/answer4/answer5")
    assert extract_first("the correct answer is answer5", LLM_ADAPTERS_LABELS["arc"]) == "answer5"


def test_piqa_label_is_a_class_label_as_on_the_hub() -> None:
    schema = _schema("baber/piqa", None)
    assert schema.features["label"] == ClassLabel(names=["0", "1"])
    build, _ = FORMATS["piqa"]
    assert [build(row)[1] for row in _rows(schema, "validation", 2)] == ["solution1", "solution2"]


def test_images_of_every_mode_through_the_hubs_old_style_clip_processor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's CLIP preprocessor_config.json (plain-int sizes, a feature extractor's type) loads as an image
    processor, and grayscale and RGBA rows go through it (and GOAT's augmentation) like RGB ones."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    processor = AutoImageProcessor.from_pretrained(str(tmp_path))
    rows = _rows(_schema("tanganke/dtd", None), "train", 3)
    assert [row["image"].mode for row in rows] == ["RGB", "L", "RGBA"]
    cfg = _task("img_dtd")
    cfg.augment = {"kind": "random_resized_crop", "scale": [0.9, 1.0], "ratio": [0.75, 1.3333]}
    task = build_task(cfg)
    monkeypatch.setattr(task, "_raw_splits", lambda data: (rows, rows, {"name": "paper"}))
    data = task.prepare("hub", processor)
    for split in (data.train, data.evals[""]):
        assert [tuple(split[i]["pixel_values"].shape) for i in range(3)] == [(3, 224, 224)] * 3
