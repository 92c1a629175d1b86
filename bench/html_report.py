"""One self-contained HTML page of a sweep's report, `<out>/<sweep>/index.html`, written by `peftbench report`.

The page needs no network: its CSS and script are inline and the plots are the report's PNG files as base64
data URIs. It holds a header (sweep, record counts by status, date, the offline label), the sweep's provenance
(code commits, dirty trees, library versions, devices, data and model revisions, flagged when its records mix
them), the main table, the paper tables (the `--paper` one and every `conf/paper` table whose `sweep:` is this
sweep), the cross-paper view (with `--cross-paper`), the LR-sensitivity table and the plots. It renders the
tables the report built (`peftbench.bench.render.to_html`: the cell classes come from the cells' data, never from their
text) and the captions the Markdown files carry. Every text that comes from records or configs is escaped.

Hooks (for the styling, the browser test and whoever adds markers to the tables):

- every table is `<table class="sortable">`; clicking a header sorts its rows by that column (a cell's
  `data-v`, when it has one; blank cells last), again for the reverse order. Once wired, the script sets
  `data-sort-ready="<number of tables>"` on `<html>`.
- the cell classes `delta-pos`, `delta-neg`, `delta-zero`, `sig`, `ns`, `best`, `tied` and `label`
  (`peftbench.bench.render`'s docstring says when each is set).
- `<ul id="provenance">` lists the provenance; `<p id="provenance-flag">` is there when the records mix it.
- `window.onerror` and unhandled rejections are listed in `<ul id="js-errors">` and counted in `data-js-errors`
  on `<html>`.
- with `#selfcheck` in the URL the script sorts each table by its first numeric column both ways, checks the
  order, and writes `data-selfcheck="pass"` (or "fail: ...") on `<html>`; the browser test reads it.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from peftbench.bench.cross_paper import CAPTION as CROSS_CAPTION
from peftbench.bench.paper import PaperTable, paper_table
from peftbench.bench.paper_tables import source_label, tables_for_sweep
from peftbench.bench.render import Table, to_html
from peftbench.bench.report import Tables, build_tables, caption
from peftbench.bench.results import Provenance, Results

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
#provenance-flag { color: var(--neg); font-weight: 600; }
#provenance li.mixed { color: var(--neg); }
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


def _provenance_flag(provenance: Provenance) -> str:
    """A line under the header when the records do not come from one setup ('' when they do)."""
    if not provenance.flags:
        return ""
    flags = html.escape("; ".join(provenance.flags))
    return (
        f'<p id="provenance-flag">⚠ These records do not come from one setup: {flags} '
        '(<a href="#provenance-section">provenance</a>).</p>'
    )


def _provenance(provenance: Provenance) -> str:
    """What produced the completed records, value by value with its count."""
    items = []
    for name, counts in provenance.fields.items():
        values = ", ".join(
            f"{html.escape('not recorded' if value is None else str(value))} ({count})"
            for value, count in sorted(counts.items(), key=lambda item: (item[0] is None, str(item[0])))
        )
        mixed = ' class="mixed"' if name in provenance.mixed else ""
        items.append(f"<li{mixed}><b>{html.escape(name)}</b>: {values}</li>")
    dirty = ' class="mixed"' if provenance.dirty else ""
    items.append(f"<li{dirty}><b>uncommitted changes</b>: {provenance.dirty} of {provenance.records} records</li>")
    listed = "".join(items)
    return (
        '<h2 id="provenance-section">Provenance</h2><p class="muted">per field, each value the completed records '
        f'carry and how many carry it.</p><ul id="provenance">{listed}</ul>'
    )


def _paper_section(paper: PaperTable) -> str:
    name_text = html.escape(paper.name)
    return (
        f'<h3 id="paper-{name_text}">{html.escape(source_label(paper.conf))} '
        f'<span class="muted">({name_text})</span></h3><p class="muted">{html.escape(paper.header)}</p>'
        + to_html(paper.table, table_id=f"table-paper-{paper.name}")
    )


def _cross_section(table: Table) -> str:
    return f'<h2 id="cross">Across papers</h2><p class="muted">{html.escape(CROSS_CAPTION)}</p>' + to_html(
        table, table_id="table-cross"
    )


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    return f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name}</figcaption></figure>'


def _page(title: str, sections: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>peftbench: {html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(sections)}<script>{SCRIPT}</script></body></html>\n"
    )


def page(
    results: Results,
    tables: Tables,
    papers: Sequence[PaperTable] = (),
    plots: Iterable[Path] = (),
    now: datetime | None = None,
    cross: Table | None = None,
) -> str:
    """The page's HTML from the report's results and tables (built once, shared with the Markdown files)."""
    images = [p for p in plots if p.suffix == ".png"]
    nav = [("main", "Main table"), ("papers", "Paper tables"), ("cross", "Across papers"), ("lr", "LR sensitivity"),
           ("plots", "Plots"), ("provenance-section", "Provenance")]  # fmt: skip
    shown = {"papers": bool(papers), "cross": cross is not None, "plots": bool(images)}
    nav = [(anchor, title) for anchor, title in nav if shown.get(anchor, True)]
    sections = [
        _header(results.sweep, results.records, now or datetime.now().astimezone()),
        _provenance_flag(results.provenance),
        "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in nav) + "</nav>",
        '<ul id="js-errors" hidden></ul>',
        f'<h2 id="main">Main table</h2><p class="muted">'
        f"{html.escape(caption(tables.baseline, markdown=False, strategies=tables.strategies))} "
        "Click a header to sort.</p>",
        to_html(tables.main, table_id="table-main"),
    ]
    if papers:
        sections.append('<h2 id="papers">Paper tables</h2>')
        sections += [_paper_section(paper) for paper in papers]
    if cross is not None:
        sections.append(_cross_section(cross))
    sections += [
        '<h2 id="lr">LR sensitivity</h2><p class="muted">per (method, model, task, rank): the lr grid, the best lr, '
        "best and worst seed-mean, their spread, the grid points within 1 point of the best, diverged lrs.</p>",
        to_html(tables.sensitivity, table_id="table-lr"),
    ]
    if images:
        sections.append('<h2 id="plots">Plots</h2>' + "".join(_figure(p) for p in images))
    sections.append(_provenance(results.provenance))
    return _page(results.sweep, sections)


def cross_page(table: Table, now: datetime | None = None) -> str:
    """The cross-paper view on a page of its own (`peftbench report --cross-paper` without a sweep)."""
    stamp = (now or datetime.now().astimezone()).strftime("%Y-%m-%d %H:%M %Z").strip()
    sections = [
        f'<h1>peftbench: across papers</h1><p class="muted">generated {html.escape(stamp)}</p>',
        '<ul id="js-errors" hidden></ul>',
        _cross_section(table),
    ]
    return _page("across papers", sections)


def paper_tables_of(results: Results, names: Sequence[str], baseline: str | None) -> list[PaperTable]:
    """The page's paper tables: the ones asked for, then every table whose `sweep:` is this sweep, each once."""
    return [paper_table(results, name, baseline) for name in dict.fromkeys([*names, *tables_for_sweep(results.sweep)])]


def build_page(
    store_root: str | Path,
    sweep: str,
    plots: Iterable[Path] = (),
    papers: Sequence[str] = (),
    now: datetime | None = None,
    baseline: str | None = None,
) -> str:
    """The page of a sweep read from the store (raises FileNotFoundError when it has no records, as the report
    does)."""
    results = Results.load(store_root, sweep)
    if results.empty:
        raise FileNotFoundError(f"no records for sweep {sweep!r} under {store_root}")
    tables = build_tables(results, baseline)
    return page(results, tables, paper_tables_of(results, papers, baseline), plots, now)


def write_page(text: str, out_root: str | Path, folder: str) -> Path:
    """Write `<out_root>/<folder>/index.html`; returns its path."""
    path = Path(out_root) / folder / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
