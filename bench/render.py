"""A report table as data (`Table`) and its renderers: Markdown, LaTeX (booktabs), CSV and an HTML `<table>`.

A table's cells are `bench.results.Cell` (numbers and markers as data), `Text` (ours and the paper's part, e.g. a
params column's "4.00 (4.0)") or plain strings (names, the LR-sensitivity figures). Every renderer reads the
markers from the cells — best (bold), tied (underlined), significant (†, the HTML class `sig`), Δ against the
paper — and never from the rendered text.

HTML hooks (for the page's CSS and script, and whoever adds markers):
- `<table class="sortable">`; a cell's `data-v` is the number it sorts by (ours as shown, else the paper's;
  in a text cell the first number of its text).
- label columns (the first `labels`) get the class `label` and no other.
- a cell printing a Δ gets `delta-pos`, `delta-neg` or `delta-zero` by the Δ as printed; a significant cell `sig`;
  in a table where any cell is significant, the other Δ cells `ns`; then `best` or `tied`.
- a paper cell's published part ("(84.47, Δ +1.03)", a params column's "(4.0)") is a `<span class="paper">`
  under ours.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from peftbench.bench.results import Cell

NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Text:
    """A text cell with an optional published part: ours '4.00', paper '(4.0)'."""

    ours: str
    published: str = ""

    @property
    def text(self) -> str:
        return " ".join(part for part in (self.ours, self.published) if part)


Entry = Cell | Text | str


@dataclass
class Table:
    """Columns, rows of cells, and how many leading columns are labels (left-aligned, never marked)."""

    columns: list[str]
    rows: list[list[Entry]]
    labels: int
    notes: list[str] = field(default_factory=list)  # lines under the table (rows split by setting, ...)

    def frame(self) -> pd.DataFrame:
        """The display strings, one column per table column."""
        return pd.DataFrame([[text(c) for c in row] for row in self.rows], columns=self.columns, dtype=object)


def text(cell: Entry | None) -> str:
    if cell is None:
        return ""
    return cell if isinstance(cell, str) else cell.text


def sort_value(value: str) -> float | None:
    """The first number of a text ("0.0001, 0.0005" -> 0.0001; "1/3" -> 1)."""
    match = NUMBER.search(value)
    return None if match is None else float(match.group().replace("−", "-"))


def _style(cell: Entry) -> str:
    return cell.style if isinstance(cell, Cell) else ""


def _styled(table: Table, cells: list[list[str]], wraps: dict[str, str]) -> list[list[str]]:
    return [
        [wraps[_style(c)].format(s) if _style(c) in wraps and s != "" else s for c, s in zip(row, texts, strict=True)]
        for row, texts in zip(table.rows, cells, strict=True)
    ]


def to_markdown(table: Table) -> str:
    """A pipe table; cells styled "best" in bold, "tied" underlined (`<u>`, which Markdown renderers keep); the
    table's notes follow it, one line each."""
    texts = [[text(c) for c in row] for row in table.rows]
    body = pd.DataFrame(_styled(table, texts, {"best": "**{}**", "tied": "<u>{}</u>"}), columns=table.columns)
    notes = "".join(f"\n{note}\n" for note in table.notes)
    return body.to_markdown(index=False, disable_numparse=True) + "\n" + notes


def escape_latex(value: object) -> str:
    value = str(value)
    for char, replacement in (
        ("_", r"\_"),
        ("%", r"\%"),
        ("±", r"$\pm$"),
        ("Δ", r"$\Delta$"),
        ("†", r"$^\dagger$"),
        ("‰", r"\textperthousand{}"),
        ("–", "--"),
        ("&", r"\&"),
    ):
        value = value.replace(char, replacement)
    return value


def to_latex(table: Table, caption: str | None = None) -> str:
    """A booktabs tabular, the label columns left-aligned; "best" bold, "tied" underlined. `caption` goes above it
    as a comment line and the notes below it (the file stays a bare tabular, for \\input in any float)."""
    texts = [[escape_latex(text(c)) for c in row] for row in table.rows]
    body = _styled(table, texts, {"best": "\\textbf{{{}}}", "tied": "\\underline{{{}}}"})
    lines = [
        *([f"% {caption}"] if caption else []),
        r"\begin{tabular}{" + "l" * table.labels + "r" * (len(table.columns) - table.labels) + "}",
        r"\toprule",
        " & ".join(escape_latex(c) for c in table.columns) + r" \\",
        r"\midrule",
        *(" & ".join(row) + r" \\" for row in body),
        r"\bottomrule",
        r"\end{tabular}",
        *(f"% {note}" for note in table.notes),
    ]
    return "\n".join(lines) + "\n"


def to_csv(table: Table, path: Path) -> None:
    """The display strings (a paper table, the LR-sensitivity table); numbers tables write their own CSV."""
    table.frame().to_csv(path, index=False)


# --- HTML ---------------------------------------------------------------------------------------------------


def _delta_class(cell: Entry) -> str | None:
    delta = cell.delta if isinstance(cell, Cell) else None
    if delta is None:
        return None
    printed = f"{delta:+.2f}"
    return "delta-zero" if float(printed) == 0 else "delta-neg" if printed.startswith("-") else "delta-pos"


def _significant(cell: Entry) -> bool:
    return isinstance(cell, Cell) and cell.significant


def _html_classes(cell: Entry, table_marked: bool) -> list[str]:
    classes = []
    delta = _delta_class(cell)
    if delta is not None:
        classes.append(delta)
    if _significant(cell):
        classes.append("sig")
    elif table_marked and delta is not None:
        classes.append("ns")
    if _style(cell) in ("best", "tied"):
        classes.append(_style(cell))
    return classes


def _html_value(cell: Entry) -> float | None:
    return cell.sort_value if isinstance(cell, Cell) else sort_value(text(cell))


def _html_body(cell: Entry) -> str:
    if isinstance(cell, str):
        return html.escape(cell)
    if not cell.published:
        return html.escape(cell.text)
    ours = f"{html.escape(cell.ours)} " if cell.ours else ""
    return f'{ours}<span class="paper">{html.escape(cell.published)}</span>'


def to_html(table: Table, table_id: str = "") -> str:
    """A sortable <table> (the hooks: this module's docstring)."""
    marked = any(_significant(c) for row in table.rows for c in row[table.labels :])
    label = ' class="label"'
    heads = "".join(
        f'<th scope="col"{label if i < table.labels else ""}>{html.escape(c)}</th>' for i, c in enumerate(table.columns)
    )
    rows = []
    for row in table.rows:
        cells = []
        for i, (column, cell) in enumerate(zip(table.columns, row, strict=True)):
            is_label = i < table.labels
            classes = ["label"] if is_label else _html_classes(cell, marked)
            number = _html_value(cell) if not is_label or column in ("rank", "r") else None
            attributes = f' class="{" ".join(classes)}"' if classes else ""
            attributes += f' data-v="{number:g}"' if number is not None else ""
            cells.append(f"<td{attributes}>{html.escape(text(cell)) if is_label else _html_body(cell)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    identifier = f' id="{html.escape(table_id)}"' if table_id else ""
    notes = "".join(f'<p class="muted note">{html.escape(note)}</p>' for note in table.notes)
    return (
        f'<div class="scroll"><table class="sortable"{identifier}><thead><tr>{heads}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>{notes}"
    )
