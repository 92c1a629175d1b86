"""The report page, index.html: self-contained, its tables and Δ classes, escaping; and (marker `browser`,
`make test-browser`) the page in headless Chromium: a screenshot, no console errors, the sort script at work."""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from peftbench.bench.cli import main as cli_main
from peftbench.bench.html_report import build_page
from peftbench.bench.render import Table, Text, sort_value, to_html
from peftbench.bench.results import Cell

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PAPER_TABLE = "goat_t4_roberta_large_glue"
INJECTED = '<script>throw new Error("injected")</script>'


class HtmlCell:
    def __init__(self, classes: list[str], value: str | None) -> None:
        self.classes, self.value, self.text = classes, value, ""


class Page(HTMLParser):
    """Tables by id (rows of cells with their classes and text), img sources, script tags, <html> attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[HtmlCell]]] = {}
        self.heads: dict[str, list[str]] = {}
        self.images: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.root: dict[str, str | None] = {}
        self._table: str | None = None
        self._cell: HtmlCell | None = None
        self._head: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "html":
            self.root = attributes
        elif tag == "table":
            self._table = attributes.get("id") or f"table-{len(self.tables)}"
            self.tables[self._table], self.heads[self._table] = [], []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag == "th" and self._table is not None:
            self.heads[self._table].append("")
            self._head = self.heads[self._table]
        elif tag == "td" and self._table is not None:
            self._cell = HtmlCell((attributes.get("class") or "").split(), attributes.get("data-v"))
            self.tables[self._table][-1].append(self._cell)
        elif tag == "img":
            self.images.append(attributes.get("src") or "")
        elif tag == "script":
            self.scripts.append(attributes)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
            self.tables = {k: [r for r in rows if r] for k, rows in self.tables.items()}
        elif tag == "td":
            self._cell = None
        elif tag == "th":
            self._head = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.text += data
        elif self._head is not None:
            self._head[-1] += data

    def cell(self, table: str, row_label: str, column: str) -> HtmlCell:
        column_index = self.heads[table].index(column)
        rows = [r for r in self.tables[table] if r[0].text == row_label]
        assert len(rows) == 1, (row_label, [r[0].text for r in self.tables[table]])
        return rows[0][column_index]


def report_store(root: Path, sweep: str = "goat_t4") -> Path:
    """The paper fixture records as the sweep `sweep`, plus a LoRA MRPC run below the paper (a negative Δ)
    and a run whose method name is a script tag (escaping)."""
    store = root / "runs"
    (store / sweep).mkdir(parents=True)
    for path in sorted((FIXTURES / "records" / "paper").glob("*.json")):
        record = json.loads(path.read_text())
        (store / sweep / path.name).write_text(json.dumps({**record, "sweep": sweep}))
    for path in (FIXTURES / "records" / "paper").glob("*.preds.jsonl.gz"):  # the sidecars: intervals
        shutil.copy(path, store / sweep / path.name)
    extra = [
        {"run_id": "x001", "method": "lora", "task": "glue_mrpc", "rank": 32, "accuracy": 0.80},
        {"run_id": "x002", "method": INJECTED, "task": "glue_rte", "rank": 4, "accuracy": 0.70},
    ]
    for record in extra:
        accuracy = record.pop("accuracy")
        full = {"sweep": sweep, "status": "ok", "model": "roberta-large", "lr": 1e-4, "seed": 0, "data": "hub",
                "primary_metric": "accuracy", "trainable_pct": 1.0, "train_seconds": 5.0, "peak_memory_bytes": 2**30,
                "metrics": {"accuracy": accuracy, "primary": accuracy}, **record}  # fmt: skip
        (store / sweep / f"{record['run_id']}.json").write_text(json.dumps(full))
    return store


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`peftbench report goat_t4` on report_store: the page's path and the console output."""
    root = tmp_path_factory.mktemp("html")
    store = report_store(root)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli_main(["report", "goat_t4", "--store", str(store), "--out", str(root / "out")]) == 0
    return root / "out" / "goat_t4" / "index.html", buffer.getvalue()


def test_the_console_links_the_page(report: tuple[Path, str]) -> None:
    page, console = report
    assert page.is_file()
    assert f"report page: {page.resolve().as_uri()}" in console.splitlines()
    assert console.splitlines()[-1].startswith("report page: file:///")


def test_the_page_is_self_contained(report: tuple[Path, str]) -> None:
    text = report[0].read_text()
    parsed = Page(text)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.IGNORECASE)
    assert not re.search(r"<(?:script|link|iframe)[^>]*\ssrc=", text, re.IGNORECASE) and "<link" not in text
    assert parsed.scripts == [{}]  # one inline script, no src
    plots = sorted((report[0].parent / "plots").glob("*.png"))
    assert len(plots) >= 4 and len(parsed.images) == len(plots)
    embedded = [base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in parsed.images]
    assert all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert sorted(embedded) == sorted(p.read_bytes() for p in plots)  # the report's own plot files, byte for byte


def test_header_counts_and_offline_label(report: tuple[Path, str]) -> None:
    text = report[0].read_text()
    assert "<h1>peftbench report: goat_t4</h1>" in text
    # 9 fixture records (7 ok, 1 diverged, 1 failed) and 2 more ok ones
    assert re.search(r"11 records: .*<b>9</b> ok.*<b>1</b> diverged.*<b>1</b> failed", text)
    assert re.search(r"offline data</span> 1 of 11 records ran with <code>data: offline</code>", text)


def test_tables_present_with_delta_classes_by_sign(report: tuple[Path, str]) -> None:
    page = Page(report[0].read_text())
    paper = f"table-paper-{PAPER_TABLE}"  # the sweep is goat_t4: the table whose `sweep:` matches is shown
    assert list(page.tables) == ["table-main", paper, "table-lr"]
    assert page.heads["table-main"][:3] == ["method", "model", "rank"]
    assert len(page.tables[paper]) == 11  # every row of GOAT Table 4
    rte = page.cell(paper, "LoRA", "RTE")
    assert rte.text == "85.50 ± 0.71 [79.0, 91.0] (84.47, Δ +1.03)" and "delta-pos" in rte.classes
    assert rte.value == "85.5"
    mrpc = page.cell(paper, "LoRA", "MRPC")
    assert mrpc.text == "80.00 [n/a] (83.33, Δ -3.33)" and "delta-neg" in mrpc.classes  # x001 has no sidecar
    for label, column in (("DoRA", "RTE"), ("GOAT", "SST-2"), ("LoRA", "Avg")):  # not run, offline, no Avg of ours
        classes = page.cell(paper, label, column).classes
        assert not {"delta-pos", "delta-neg", "sig", "ns"} & set(classes), (label, column, classes)
    # the main table: the best of a column in bold, rank and metrics numeric for sorting
    rows = {(r[0].text, r[2].text): r for r in page.tables["table-main"]}
    rte_column = page.heads["table-main"].index("glue_rte")
    assert "best" in rows[("lora", "8")][rte_column].classes and rows[("lora", "8")][rte_column].text == "99.00 [n/a]"
    assert "best" not in rows[("lora", "32")][rte_column].classes
    assert rows[("lora", "32")][2].value == "32"
    assert len(page.tables["table-lr"]) == 7  # (method, task, rank) groups with an ok or diverged run


def test_record_text_is_escaped(report: tuple[Path, str]) -> None:
    text = report[0].read_text()
    assert INJECTED not in text and "injected" in text
    assert html.escape(INJECTED) in text
    assert text.count("<script") == 1  # ours
    method_cells = [r[0].text for r in Page(text).tables["table-main"]]
    assert INJECTED in method_cells  # shown as text


def test_explicit_paper_table_and_none_when_no_sweep_matches(tmp_path: Path) -> None:
    store = FIXTURES / "records"
    out = tmp_path / "out"
    assert cli_main(["report", "paper", "--store", str(store), "--out", str(out), "--paper", PAPER_TABLE]) == 0
    assert list(Page((out / "paper" / "index.html").read_text()).tables) == [
        "table-main",
        f"table-paper-{PAPER_TABLE}",
        "table-lr",
    ]
    page = build_page(store, "golden")  # no --paper, no conf/paper table of the sweep "golden"
    assert list(Page(page).tables) == ["table-main", "table-lr"] and 'id="papers"' not in page


def test_the_paper_numbers_alone_need_no_records(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert cli_main(["report", "empty", "--store", str(tmp_path), "--out", str(out), "--paper", PAPER_TABLE]) == 0
    assert "| LoRA" in capsys.readouterr().out and not (out / "empty" / "index.html").exists()


def test_significance_hook() -> None:
    """The classes come from the cells' data: Δ sign as printed, † as `sig`, the other Δ cells `ns` in a marked
    table; a label column is never marked, whatever its text."""
    rows = [
        ["LoRA†", Cell(85.5, interval=(0.801, 0.902), paper=84.47, with_paper=True, significant=True),
         Cell(70.0, interval=(0.66, 0.74), paper=83.33, with_paper=True, significant=True)],
        ["DoRA", Cell(80.0, paper=84.48, with_paper=True), Cell(83.33, paper=83.33, with_paper=True)],
        ["PiSSA", Cell(paper=73.29, with_paper=True), ""],
    ]  # fmt: skip
    table = Table(["Method", "RTE", "MRPC"], rows, 1)
    page = Page(to_html(table, table_id="t"))
    assert page.cell("t", "LoRA†", "RTE").text == "85.50 [80.1, 90.2]† (84.47, Δ +1.03)"
    assert page.cell("t", "LoRA†", "RTE").classes == ["delta-pos", "sig"]
    assert page.cell("t", "LoRA†", "MRPC").classes == ["delta-neg", "sig"]
    assert page.cell("t", "DoRA", "RTE").classes == ["delta-neg", "ns"]
    assert page.cell("t", "DoRA", "MRPC").classes == ["delta-zero", "ns"]
    assert page.cell("t", "PiSSA", "RTE").classes == [] and page.cell("t", "PiSSA", "MRPC").value is None
    assert page.cell("t", "PiSSA", "RTE").value == "73.29"  # the paper's number when we have none
    assert page.cell("t", "LoRA†", "MRPC").value == "70"
    assert page.cell("t", "LoRA†", "Method").classes == ["label"]
    # a table without any significant cell: sign classes only
    unmarked = Page(to_html(Table(table.columns, rows[1:], 1), table_id="u"))
    assert unmarked.cell("u", "DoRA", "RTE").classes == ["delta-neg"]
    # ours and the published part apart: the paper's under ours
    body = to_html(Table(["Method", "Params %"], [["LoRA", Text("4.00", "(4.0)")]], 1))
    assert '<td data-v="4">4.00 <span class="paper">(4.0)</span></td>' in body


def test_sort_value() -> None:
    assert Cell(85.499, 0.71, paper=84.47, with_paper=True).sort_value == 85.5  # ours as shown
    assert Cell(paper=84.27, with_paper=True).sort_value == 84.27 and Cell().sort_value is None
    assert sort_value("85.50 ± 0.71 (84.47, Δ +1.03)") == 85.5
    assert sort_value("(84.27)") == 84.27
    assert sort_value("1e-05") == 1e-05 and sort_value("0.0001, 0.0005") == 1e-4
    assert sort_value("1/3") == 1 and sort_value("none") is None and sort_value("") is None


# --- in a browser (make test-browser) ------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: `make test-browser` installs Debian's chromium (as root)")
    return found


def headless(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180)


@pytest.mark.browser
def test_screenshot_of_the_page(report: tuple[Path, str], tmp_path: Path) -> None:
    from matplotlib.image import imread

    shot = tmp_path / "index.png"
    done = headless(f"--screenshot={shot}", "--window-size=1280,2000", report[0].resolve().as_uri(), cwd=tmp_path)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = imread(shot)
    assert pixels.shape[:2] == (2000, 1280)
    assert shot.stat().st_size > 50_000
    assert pixels.std() > 0.05  # not a blank page
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200  # text, tables, plots
    shutil.copy(shot, report[0].parent / "index_screenshot.png")  # beside the page, to look at


@pytest.mark.browser
def test_page_in_the_browser_has_its_tables_and_no_console_errors(report: tuple[Path, str], tmp_path: Path) -> None:
    uri = report[0].resolve().as_uri() + "#selfcheck"
    done = headless("--enable-logging=stderr", "--v=0", "--dump-dom", uri, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []  # the page logs nothing; an uncaught error or console.error would be here
    dom = Page(done.stdout)
    assert dom.root.get("data-sort-ready") == "3"  # the script wired the three tables
    assert dom.root.get("data-selfcheck") == "pass" and dom.root.get("data-selfcheck-tables") == "3"
    assert "data-js-errors" not in dom.root
    assert list(dom.tables) == ["table-main", f"table-paper-{PAPER_TABLE}", "table-lr"]
    assert len(dom.tables[f"table-paper-{PAPER_TABLE}"]) == 11
    assert any(r[0].text == INJECTED for r in dom.tables["table-main"])  # text, not a script that ran
    # the self-check clicked each table's first numeric column twice: the last order is descending
    ranks = [int(r[2].value) for r in dom.tables["table-main"] if r[2].value is not None]
    assert ranks == sorted(ranks, reverse=True) and len(ranks) == 4


def test_best_tied_and_significant_cells_of_the_main_table(tmp_path: Path) -> None:
    from peftbench.core.store import RunStore

    from tests.bench.records import write_run

    store = RunStore(tmp_path / "runs")
    for seed in (0, 1):  # lora 90% right, pissa the same answers but two, dora 60% (tests/bench/test_report.py)
        write_run(store, "m", "lora", seed, [i % 10 != 0 for i in range(200)])
        write_run(store, "m", "pissa", seed, [i % 10 != 0 and i not in (1, 2) for i in range(200)])
        write_run(store, "m", "dora", seed, [1 <= i % 10 <= 6 for i in range(200)])
    page = Page(build_page(tmp_path / "runs", "m", baseline="lora"))
    rows = {r[0].text: r for r in page.tables["table-main"]}
    rte = page.heads["table-main"].index("glue_rte")
    assert rows["lora"][rte].classes == ["best"] and rows["lora"][rte].text == "90.00 ± 0.00 [86.0, 94.0]"
    assert rows["pissa"][rte].classes == ["tied"]  # not significantly below the best: underlined
    assert rows["dora"][rte].classes == ["sig"] and rows["dora"][rte].text.endswith("†")  # differs from lora
