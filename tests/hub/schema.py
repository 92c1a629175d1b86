"""The hub datasets' schemas as docs/hub_assets.md states them: one `HubDataset` per table row.

The table is the single statement of what the hub serves; the fixtures are built from it, so code that reads a
column the table does not list fails on the fixtures, and a table that drifts from the code fails too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from datasets import ClassLabel, Features, Image, List, Value

from core.paths import CONF_DIR

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
