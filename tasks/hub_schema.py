"""The hub datasets' schemas as docs/hub_assets.md states them: one `HubDataset` per table row, and how a real
dataset's features differ from them.

The table is the single statement of what the hub serves; the hub-shaped fixtures (tests/hub/fixtures.py) are built
from it, so code that reads a column the table does not list fails on the fixtures, and a table that drifts from the
code fails too. What the fixtures cannot see is the hub changing under the table: `peftbench prefetch --check`
compares the real features with the table (`differences`) and prints every difference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from datasets import ClassLabel, Features, Image, List, Value
from peftbench.core.paths import CONF_DIR

DOC = CONF_DIR.parent / "docs" / "hub_assets.md"
_ROW = re.compile(r"^\| (\S+/\S+) \| (\S+) \| (.+?) \| (.+?) \|$")


@dataclass(frozen=True)
class HubDataset:
    """A dataset id and config with the splits the code loads (and their hub sizes) and its features."""

    path: str
    config: str  # "default" where the repository has a single unnamed one
    splits: dict[str, int]
    features: Features


def parse_type(text: str) -> object:
    text = text.strip()
    if text in ("string", "int32", "int64", "float32", "bool"):
        return Value(text)
    if text == "image":
        return Image()
    if text.startswith("list(") and text.endswith(")"):
        return List(parse_type(text[5:-1]))
    if text.startswith("ClassLabel(") and text.endswith(")"):
        inside = [name.strip() for name in text[11:-1].split(",")]
        if len(inside) == 1 and inside[0].isdigit():
            return ClassLabel(names=[f"class_{i}" for i in range(int(inside[0]))])
        return ClassLabel(names=inside)
    if text.startswith("{") and text.endswith("}"):
        return {key.strip(): parse_type(value) for key, value in _fields(text[1:-1], ",")}
    raise ValueError(f"unknown feature type {text!r} in {DOC.name}")


def _fields(text: str, separator: str) -> list[tuple[str, str]]:
    """`a: x; b: {c: y, d: z}` split at top-level separators only."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "({"
        depth -= char in ")}"
        if char == separator and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [tuple(part.split(":", 1)) for part in parts if part.strip()]


def hub_datasets() -> list[HubDataset]:
    """Every row of the document's dataset table."""
    rows = []
    text = DOC.read_text()
    section = text[text.index("## Datasets") : text.index("## Models")]
    for line in section.splitlines():
        match = _ROW.match(line)
        if not match or "(" not in match.group(3):
            continue
        path, config, splits, features = match.groups()
        sizes = {name: int(rows_) for name, rows_ in re.findall(r"(\w+) \((\d+)\)", splits)}
        parsed = Features({key.strip(): parse_type(value) for key, value in _fields(features, ";")})
        rows.append(HubDataset(path, config, sizes, parsed))
    return rows


def find(path: str, name: str | None) -> HubDataset | None:
    """The table's row of a `load_dataset(path, name)` call (name None: the repository's only or default config)."""
    rows = [d for d in hub_datasets() if d.path == path]
    if name is None and len(rows) == 1:
        return rows[0]
    return next((d for d in rows if d.config == (name or "default")), None)


def describe(feature: Any) -> str:
    """A feature in the table's own syntax (`string`, `ClassLabel(a, b)`, `list(string)`, `{a: x, b: y}`)."""
    if isinstance(feature, Value):
        return feature.dtype
    if isinstance(feature, Image):
        return "image"
    if isinstance(feature, ClassLabel):
        return f"ClassLabel({', '.join(feature.names)})"
    if isinstance(feature, List):
        return f"list({describe(feature.feature)})"
    if isinstance(feature, dict):
        return "{" + ", ".join(f"{key}: {describe(sub)}" for key, sub in feature.items()) + "}"
    return type(feature).__name__


def _placeholder(label: ClassLabel) -> bool:
    """`ClassLabel(N)` in the table: N classes whose names the code never reads (only their number counts)."""
    return label.names == [f"class_{i}" for i in range(label.num_classes)]


def differences(expected: Features | dict, actual: Features | dict, where: str = "") -> list[str]:
    """Every way `actual` (the hub's features) differs from `expected` (the table's): a missing or extra column, a
    different type, different label names. Empty when they agree."""
    found = []
    for column in expected:
        if column not in actual:
            found.append(f"column {where}{column} is missing (the table has {describe(expected[column])})")
    for column in actual:
        if column not in expected:
            found.append(f"column {where}{column} ({describe(actual[column])}) is not in the table")
    for column in (c for c in expected if c in actual):
        want, have = expected[column], actual[column]
        if isinstance(want, dict) and isinstance(have, dict):
            found += differences(want, have, f"{where}{column}.")
        elif isinstance(want, ClassLabel) and isinstance(have, ClassLabel):
            if have.num_classes != want.num_classes or (not _placeholder(want) and have.names != want.names):
                found.append(f"column {where}{column}: the hub has {describe(have)}, the table {describe(want)}")
        elif describe(want) != describe(have):
            found.append(f"column {where}{column}: the hub has {describe(have)}, the table {describe(want)}")
    return found
