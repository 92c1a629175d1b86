"""One self-contained HTML page of a sweep's report, `<out>/<sweep>/index.html`, written by `peftbench report`.

The page needs no network: its CSS and script are inline and the plots are the report's PNG files as base64
data URIs. It holds a header (sweep, record counts by status, date, the offline label), the main table, the
paper tables (the `--paper` one and every `conf/paper` table whose `sweep:` is this sweep), the LR-sensitivity
table and the plots. Every text that comes from records or configs goes through `html.escape`.

Hooks (for the styling, the browser test and whoever adds markers to the tables):

- every table is `<table class="sortable">`; clicking a header sorts its rows by that column (a cell's
  `data-v`, the first number in its text, when it has one; blank cells last), again for the reverse order.
  Once wired, the script sets `data-sort-ready="<number of tables>"` on `<html>`.
- a cell whose text has "Δ +x" or "Δ -x" gets the class `delta-pos`, `delta-neg` (green, red) or `delta-zero`.
- significance: a value cell (not a label column: the paper's "LoRA†" is a name) whose text contains one of
  `SIGNIFICANCE_MARKERS` ("†": bench.report marks a cell that differs significantly from the baseline) gets
  the class `sig` (bold, stronger colour); in a table where any cell carries a marker, the other Δ cells get
  `ns` (muted). In the main table the cells bench.report styles best are `best` (bold) and those not
  significantly different from the best `tied` (underlined).
- `window.onerror` and unhandled rejections are listed in `<ul id="js-errors">` and counted in `data-js-errors`
  on `<html>`.
- with `#selfcheck` in the URL the script sorts each table by its first numeric column both ways, checks the
  order, and writes `data-selfcheck="pass"` (or "fail: ...") on `<html>`; the browser test reads it.
"""

from __future__ import annotations

import base64
import html
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from bench.paper import PAPER_DIR, load_paper_table, paper_report, paper_tables
from bench.report import KEYS, ROW_KEYS, build_tables, load_frame
from core.store import RunStore

SIGNIFICANCE_MARKERS = ("†",)
DELTA = re.compile(r"Δ\s*([+\-−])\s*(\d+(?:\.\d+)?)")
NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
# "ours ± std [offline] (paper, Δ ...)": ours on one line, the published number under it
PAPER_CELL = re.compile(r"^(?P<ours>[^()]*?)\s*(?P<paper>\(.*)$")

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --head: #f6f8fa; --pos: #116329; --pos-bg: #dafbe1;
  --neg: #a40e26; --neg-bg: #ffebe9; --pos-sig-bg: #aceebb; --neg-sig-bg: #ffcecb; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
  margin: 0 auto; padding: 16px 24px 48px; max-width: 1600px; }
h1 { font-size: 22px; margin: 4px 0 6px; }
h2 { font-size: 17px; margin: 28px 0 6px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 4px; }
p, li { margin: 4px 0; } .muted { color: var(--muted); } code { font-size: 12.5px; }
nav a { margin-right: 14px; }
.counts span { display: inline-block; margin-right: 12px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.badge.offline { background: #fff1c2; color: #6d4c00; border: 1px solid #e8c95c; }
.status-ok { color: var(--pos); } .status-diverged { color: #8a5a00; } .status-failed { color: var(--neg); }
/* hugs its table; a table wider than the page scrolls inside it */
.scroll { display: inline-block; vertical-align: top; overflow-x: auto; max-width: 100%;
  border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; text-align: right;
  vertical-align: top; }
th { background: var(--head); cursor: pointer; user-select: none; }
th:hover { background: #eaeef2; }
th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 10px; }
th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 10px; }
td.label, th.label { text-align: left; }
tbody tr:nth-child(even) td { background: #fafbfc; }
tbody tr:last-child td { border-bottom: none; }
tbody tr:hover td { background: #f0f6ff; }
td.best { font-weight: 700; }
td.tied { text-decoration: underline; }
td .paper { display: block; font-size: 12px; color: var(--muted); }
td.delta-pos { background: var(--pos-bg) !important; } td.delta-pos .paper { color: var(--pos); }
td.delta-neg { background: var(--neg-bg) !important; } td.delta-neg .paper { color: var(--neg); }
td.delta-pos.sig { background: var(--pos-sig-bg) !important; font-weight: 700; }
td.delta-neg.sig { background: var(--neg-sig-bg) !important; font-weight: 700; }
td.sig .paper { font-weight: 700; }
td.ns { background: none !important; } td.ns .paper { color: var(--muted); }
figure { margin: 12px 0 20px; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { font-size: 12px; color: var(--muted); }
#js-errors { color: var(--neg); font-weight: 600; }
"""

SCRIPT = """
(function () {
  "use strict";
  var root = document.documentElement;
  var errors = 0;
  function report(message) {
    errors += 1;
    root.setAttribute("data-js-errors", String(errors));
    var list = document.getElementById("js-errors");
    if (list) {
      var item = document.createElement("li");
      item.textContent = message;
      list.appendChild(item);
      list.hidden = false;
    }
  }
  window.addEventListener("error", function (e) { report("error: " + e.message); });
  window.addEventListener("unhandledrejection", function (e) { report("unhandled rejection: " + e.reason); });

  function key(cell) {
    var v = cell.getAttribute("data-v");
    return v === null ? null : parseFloat(v);
  }
  // blanks last in either direction; numbers before text; ties keep the previous order
  function compare(a, b, column, direction) {
    var ca = a.cells[column], cb = b.cells[column];
    var ta = ca.textContent.trim(), tb = cb.textContent.trim();
    if (!ta || !tb) return (ta ? 0 : 1) - (tb ? 0 : 1);
    var ka = key(ca), kb = key(cb);
    if (ka !== null && kb !== null) return direction * (ka - kb);
    if (ka !== null || kb !== null) return ka !== null ? -1 : 1;
    return direction * ta.localeCompare(tb);
  }
  function sortBy(table, column) {
    var heads = table.tHead.rows[0].cells;
    var direction = heads[column].getAttribute("aria-sort") === "ascending" ? -1 : 1;
    for (var i = 0; i < heads.length; i++) heads[i].removeAttribute("aria-sort");
    heads[column].setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var order = new Map(rows.map(function (row, index) { return [row, index]; }));
    rows.sort(function (a, b) { return compare(a, b, column, direction) || order.get(a) - order.get(b); });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  var tables = document.querySelectorAll("table.sortable");
  tables.forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (head, column) {
      head.tabIndex = 0;
      head.title = "sort by this column";
      head.addEventListener("click", function () { sortBy(table, column); });
      head.addEventListener("keydown", function (e) { if (e.key === "Enter") sortBy(table, column); });
    });
  });
  root.setAttribute("data-sort-ready", String(tables.length));

  function keys(table, column) {
    return Array.prototype.map.call(table.tBodies[0].rows, function (row) { return key(row.cells[column]); })
      .filter(function (k) { return k !== null; });
  }
  function selfcheck() {
    var problems = [], checked = 0;
    tables.forEach(function (table, index) {
      var heads = table.tHead.rows[0].cells, column = -1;
      for (var c = 0; c < heads.length && column < 0; c++) if (keys(table, c).length > 1) column = c;
      if (column < 0) return;
      var rowCount = table.tBodies[0].rows.length;
      heads[column].click();
      var up = keys(table, column);
      heads[column].click();
      var down = keys(table, column);
      var sortedUp = up.every(function (k, i) { return i === 0 || up[i - 1] <= k; });
      var sortedDown = down.every(function (k, i) { return i === 0 || down[i - 1] >= k; });
      if (!sortedUp || !sortedDown || table.tBodies[0].rows.length !== rowCount) {
        problems.push("table " + index + " column " + column + ": " + up.join(",") + " / " + down.join(","));
      }
      checked += 1;
    });
    if (!checked) problems.push("no table with a numeric column");
    root.setAttribute("data-selfcheck", problems.length ? "fail: " + problems.join("; ") : "pass");
    root.setAttribute("data-selfcheck-tables", String(checked));
  }
  if (location.hash === "#selfcheck") selfcheck();
})();
"""


def _text(value: object) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def sort_value(text: str) -> float | None:
    """The number a cell sorts by: the first one in its text ("85.50 ± 0.71 (84.47, Δ +1.03)" → 85.5)."""
    match = NUMBER.search(text)
    return None if match is None else float(match.group().replace("−", "-"))


def cell_classes(text: str, table_marked: bool) -> list[str]:
    """Δ sign and significance classes of a value cell (see the module docstring)."""
    classes = []
    delta = DELTA.search(text)
    if delta is not None:
        value = float(delta.group(2))
        classes.append("delta-zero" if value == 0 else "delta-neg" if delta.group(1) in "-−" else "delta-pos")
    if any(marker in text for marker in SIGNIFICANCE_MARKERS):
        classes.append("sig")
    elif table_marked and delta is not None:
        classes.append("ns")
    return classes


def _cell_body(text: str, split_paper: bool) -> str:
    match = PAPER_CELL.match(text) if split_paper else None
    if match is None:
        return html.escape(text)
    ours = f"{html.escape(match['ours'])} " if match["ours"] else ""
    return f'{ours}<span class="paper">{html.escape(match["paper"])}</span>'


def table_html(
    table: pd.DataFrame,
    label_columns: int,
    best: AbstractSet[tuple[int, str]] = frozenset(),
    split_paper: bool = False,
    table_id: str = "",
    tied: AbstractSet[tuple[int, str]] = frozenset(),
) -> str:
    """A sortable <table>: the first `label_columns` are names (left-aligned, never read for markers);
    `best` holds (row position, column) cells shown bold, `tied` those not significantly different from the
    best (underlined); `split_paper` puts "(paper, Δ)" under our value."""
    columns = [str(c) for c in table.columns]
    values = [[_text(v) for v in row] for row in table.itertuples(index=False)]
    marked = any(m in text for row in values for text in row[label_columns:] for m in SIGNIFICANCE_MARKERS)
    label = ' class="label"'
    heads = "".join(
        f'<th scope="col"{label if i < label_columns else ""}>{html.escape(c)}</th>' for i, c in enumerate(columns)
    )
    rows = []
    for position, row in enumerate(values):
        cells = []
        for i, (column, text) in enumerate(zip(columns, row, strict=True)):
            classes = ["label"] if i < label_columns else cell_classes(text, marked)
            if (position, column) in best:
                classes.append("best")
            elif (position, column) in tied:
                classes.append("tied")
            number = sort_value(text) if i >= label_columns or column in ("rank", "r") else None
            attributes = f' class="{" ".join(classes)}"' if classes else ""
            attributes += f' data-v="{number:g}"' if number is not None else ""
            cells.append(f"<td{attributes}>{_cell_body(text, split_paper and i >= label_columns)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    identifier = f' id="{html.escape(table_id)}"' if table_id else ""
    return (
        f'<div class="scroll"><table class="sortable"{identifier}><thead><tr>{heads}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def matching_paper_tables(sweep: str) -> list[str]:
    """The conf/paper tables whose `sweep:` is this sweep."""
    return [
        name
        for name in paper_tables()
        if yaml.safe_load((PAPER_DIR / f"{name}.yaml").read_text()).get("sweep") == sweep
    ]


def _styled_cells(styles: pd.DataFrame, style: str) -> set[tuple[int, str]]:
    """(row position, column) of the cells bench.report styled `style` ("best" or "tied")."""
    return {
        (position, str(column))
        for column in styles.columns
        for position, value in enumerate(styles[column])
        if value == style
    }


def _header(sweep: str, records: list[dict], now: datetime) -> str:
    statuses = Counter(str(r.get("status")) for r in records)
    data = Counter(str(r.get("data", "hub")) for r in records)
    counts = "".join(
        f'<span class="status-{html.escape(s)}"><b>{statuses[s]}</b> {html.escape(s)}</span>'
        for s in ["ok", "diverged", "failed", *sorted(set(statuses) - {"ok", "diverged", "failed"})]
    )
    finished = sorted(str(r["finished_at"]) for r in records if r.get("finished_at"))
    span = f" · records finished {html.escape(finished[0])} – {html.escape(finished[-1])}" if finished else ""
    offline = ""
    if data.get("offline"):
        offline = (
            f'<p><span class="badge offline">offline data</span> {data["offline"]} of {len(records)} records ran with '
            "<code>data: offline</code>: our offline protocol (labelled “(offline)” in the tables), "
            "not the papers' numbers.</p>"
        )
    return (
        f"<h1>peftbench report: {html.escape(sweep)}</h1>"
        f'<p class="counts">{len(records)} records: {counts}</p>'
        f'<p class="muted">generated {now.strftime("%Y-%m-%d %H:%M %Z").strip()}{span}</p>{offline}'
    )


def _paper_section(store_root: str | Path, sweep: str, name: str, baseline: str | None) -> str:
    table = load_paper_table(name)
    shown = paper_report(store_root, sweep, name, baseline)
    caption = (
        f"{table['paper']} (arXiv {table['arxiv']}) Table {table['table']}"
        f"{', ' + str(table['model']) if table.get('model') else ''}"
    )
    name_text = html.escape(name)
    return (
        f'<h3 id="paper-{name_text}">{html.escape(caption)} <span class="muted">({name_text})</span></h3>'
        '<p class="muted">ours ± std over seeds at the best lr, under it (paper, Δ = ours − paper); a cell with only '
        "(paper) was not run here; [offline] = our offline protocol, not the paper's.</p>"
        + table_html(shown, 2 if "r" in shown.columns else 1, split_paper=True, table_id=f"table-paper-{name}")
    )


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    return f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>'


def build_page(
    store_root: str | Path,
    sweep: str,
    plots: Iterable[Path] = (),
    papers: Sequence[str] = (),
    now: datetime | None = None,
    baseline: str | None = None,
) -> str:
    """The page's HTML (raises FileNotFoundError when the sweep has no records, as the report does)."""
    frame = load_frame(store_root, sweep)
    if frame.empty:
        raise FileNotFoundError(f"no records for sweep {sweep!r} under {store_root}")
    records = list(RunStore(store_root).iter_records(sweep))
    tables = build_tables(frame, baseline)
    names = list(dict.fromkeys([*papers, *matching_paper_tables(sweep)]))
    images = [p for p in plots if p.suffix == ".png"]
    nav = [("main", "Main table"), ("papers", "Paper tables"), ("lr", "LR sensitivity"), ("plots", "Plots")]
    nav = [(anchor, title) for anchor, title in nav if (anchor != "papers" or names) and (anchor != "plots" or images)]
    sections = [
        _header(sweep, records, now or datetime.now().astimezone()),
        "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in nav) + "</nav>",
        '<ul id="js-errors" hidden></ul>',
        '<h2 id="main">Main table</h2><p class="muted">methods × tasks at the best lr: mean ± std over seeds '
        "[95% interval: paired bootstrap over seeds and eval examples, 1,000 resamples], ×100; the best of each "
        "column in bold, underlined where not significantly different from it; † differs significantly from "
        f"the baseline ({html.escape(str(tables.baseline))}); click a header to sort.</p>",
        table_html(
            tables.main,
            len(ROW_KEYS),
            _styled_cells(tables.styles, "best"),
            table_id="table-main",
            tied=_styled_cells(tables.styles, "tied"),
        ),  # fmt: skip
    ]
    if names:
        sections.append('<h2 id="papers">Paper tables</h2>')
        sections += [_paper_section(store_root, sweep, name, baseline) for name in names]
    sections += [
        '<h2 id="lr">LR sensitivity</h2><p class="muted">per (method, model, task, rank): the lr grid, the best lr, '
        "best and worst seed-mean, their spread, the grid points within 1 point of the best, diverged lrs.</p>",
        table_html(tables.sensitivity, len(KEYS), table_id="table-lr"),
    ]
    if images:
        sections.append('<h2 id="plots">Plots</h2>' + "".join(_figure(p) for p in images))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>peftbench: {html.escape(sweep)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(sections)}<script>{SCRIPT}</script></body></html>\n"
    )


def write_html(
    store_root: str | Path,
    sweep: str,
    out_root: str | Path,
    plots: Iterable[Path] = (),
    papers: Sequence[str] = (),
    baseline: str | None = None,
) -> Path:
    """Write `<out_root>/<sweep>/index.html`; returns its path."""
    path = Path(out_root) / sweep / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_page(store_root, sweep, plots, papers, baseline=baseline), encoding="utf-8")
    return path
