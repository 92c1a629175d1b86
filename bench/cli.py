"""`peftbench` command line: report, status, grid and prefetch of a sweep (training runs go through `bench.run`)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from peftbench.core.errors import ConfigError

DEFAULT_STORE = "results/runs"


def _report(args: argparse.Namespace) -> int:
    """Read the sweep's records once, build every table once, and write them all: Markdown, LaTeX, CSV, the page."""
    from peftbench.bench.html_report import cross_page, page, write_page
    from peftbench.bench.paper import paper_table, write_paper_table
    from peftbench.bench.paper_tables import tables_for_sweep
    from peftbench.bench.report import build_tables, write_tables
    from peftbench.bench.results import Results

    if args.sweep is None and not args.cross_paper:
        raise ConfigError("give a sweep (peftbench report <sweep>), or --cross-paper for the view across papers")
    cross = None
    if args.cross_paper:
        from peftbench.bench.cross_paper import cross_paper_table, write_cross_paper

        cross = cross_paper_table(args.store)
        paths = write_cross_paper(cross, args.out)
        print(paths["md"].read_text())
        print(f"written: {', '.join(str(p) for p in paths.values())}")
        if args.sweep is None:
            print(f"report page: {write_page(cross_page(cross), args.out, 'cross_paper').resolve().as_uri()}")
            return 0
    results = Results.load(args.store, args.sweep)
    asked = []
    if args.paper:
        asked = [paper_table(results, args.paper, args.baseline)]
        paths = write_paper_table(asked[0], args.sweep, args.out)
        print(paths["md"].read_text())
        print(f"written: {', '.join(str(p) for p in paths.values())}")
        if results.empty:
            return 0  # the paper's numbers alone: no report of ours to write
    if results.empty:
        raise FileNotFoundError(f"no records for sweep {args.sweep!r} under {args.store}")
    tables = build_tables(results, args.baseline)
    written = write_tables(results, tables, args.out)
    if not args.paper:
        print(written["main.md"].read_text())
        if "vs_baseline.md" in written:
            print(written["vs_baseline.md"].read_text())
        print(f"tables and plots for sweep {args.sweep!r} under {written['main.md'].parents[1]}")
    for flag in results.provenance.flags:
        print(f"provenance: {flag}")
    others = [name for name in tables_for_sweep(args.sweep) if name != args.paper]
    papers = [*asked, *(paper_table(results, name, args.baseline) for name in others)]
    text = page(results, tables, papers, written.values(), cross=cross)
    print(f"report page: {write_page(text, args.out, args.sweep).resolve().as_uri()}")
    return 0


def _grid(args: argparse.Namespace) -> int:
    from peftbench.bench.grid import describe, resolve_grid, sweep_config

    cfg = sweep_config(args.sweep)
    store = args.store or cfg.store.root
    grid = resolve_grid(args.sweep)
    extra = {
        "model": cfg.model.name,
        "data": cfg.data,
        "store": f"{store}/{cfg.sweep}",
        "time": f"`peftbench plan {cfg.sweep}` (each run's GPU-hours; `--check` against the store's recorded runs)",
    }
    print(describe(grid, extra, points=args.points))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from peftbench.bench.plan import check_store, describe_check, describe_plan, plan_data, plan_sweep, write_csv

    if args.gpu is not None and args.gpu != "cpu" and args.gpu not in plan_data()["gpus"]:
        raise ConfigError(f"--gpu {args.gpu!r} is not known; valid choices: cpu, {', '.join(plan_data()['gpus'])}")
    if args.check:
        print(describe_check(args.sweep, check_store(args.sweep, args.store)))
        return 0
    plan = plan_sweep(args.sweep, args.overrides, args.gpu, args.gpus, args.store)
    print(describe_plan(plan, detail=args.runs))
    if args.csv:
        print(f"written: {write_csv(plan, args.csv)}")
    return 0


def _prefetch(args: argparse.Namespace) -> int:
    from peftbench.bench.prefetch import prefetch

    return prefetch(args.sweep, args.overrides, update=args.update, check=args.check)


def _status(args: argparse.Namespace) -> int:
    from peftbench.core.store import RunStore

    store = RunStore(args.store)
    scan = store.scan(args.sweep)
    by_id = {r["run_id"]: r for r in scan.records}
    counts = Counter(r["status"] for r in by_id.values())
    print(
        f"sweep {args.sweep!r} in {args.store}: " + ", ".join(f"{counts[s]} {s}" for s in ("ok", "diverged", "failed"))
    )
    for path, why in scan.corrupted:
        print(f"  unreadable (not counted): {path}: {why}")
    for path in store.orphans(args.sweep):  # a run killed between its predictions and its record
        print(f"  predictions without a record (replaced when the point runs again): {path}")
    for record in by_id.values():
        if record["status"] == "failed":
            print(f"  failed {record['run_id']} {record['method']} {record['task']} rank={record['rank']} "
                  f"lr={record['lr']:g} seed={record['seed']}: {record['error']}")  # fmt: skip
    if args.grid:
        from peftbench.bench.grid import resolve_grid
        from peftbench.bench.strategy import sweep_status

        lines = sweep_status(args.sweep, args.store, args.overrides)  # None under the default strategy, grid
        if lines is not None:  # two stages: the second as far as the store decides it
            print("\n".join(lines))
            return 0
        grid = resolve_grid(args.sweep, args.overrides)
        missing = _missing_points(grid.first_points(), by_id)
        print(f"missing: {len(missing)} of {len(grid.runs)} runs without a complete record "
              f"({len(grid.points)} grid points)")  # fmt: skip
        for point in missing:
            print("  python -m bench.run sweep=" + args.sweep + " " + " ".join(f"{k}={v}" for k, v in point.items()))
    return 0


def _missing_points(first_points: dict[str, dict[str, str]], by_id: dict[str, dict]) -> list[dict[str, str]]:
    """The first grid point of each run whose run_id has no ok/diverged record (a run's other points not listed)."""
    from peftbench.core.store import COMPLETED

    return [point for run_id, point in first_points.items() if by_id.get(run_id, {}).get("status") not in COMPLETED]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    report = commands.add_parser("report", help="write a sweep's tables (md/tex/csv), plots and index.html")
    report.add_argument("sweep", nargs="?", help="the sweep (optional with --cross-paper)")
    report.add_argument("--store", default=DEFAULT_STORE, help="results store root (default: %(default)s)")
    report.add_argument("--out", default="results", help="output root: <out>/<sweep>/tables, plots, index.html")
    report.add_argument("--paper", help="a conf/paper table: its layout, our cells beside the published ones")
    report.add_argument(
        "--baseline", help="the method every other one is tested against (paired bootstrap; default: lora, if run)"
    )
    report.add_argument(
        "--cross-paper", action="store_true",
        help="also list every cell several conf/paper tables print, side by side, with ours where the store has it",
    )  # fmt: skip
    report.set_defaults(handler=_report)

    status = commands.add_parser("status", help="count done / diverged / failed runs of a sweep")
    status.add_argument("sweep")
    status.add_argument("--store", default=DEFAULT_STORE, help="results store root (default: %(default)s)")
    status.add_argument("--grid", action="store_true", help="also list the runs of the grid with no record yet")
    status.add_argument(
        "overrides", nargs="*", help="with --grid: the launch's overrides, e.g. strategy=lr_then_seeds task=glue_rte"
    )
    status.set_defaults(handler=_status)

    grid = commands.add_parser(
        "grid", help="print a sweep's grid, what its protocol rules change, its distinct runs; run nothing"
    )
    grid.add_argument("sweep")
    grid.add_argument("--store", default=None, help="results store root (default: the sweep's store.root)")
    grid.add_argument("--points", action="store_true", help="also list every run with the values it trains with")
    grid.set_defaults(handler=_grid)

    plan = commands.add_parser(
        "plan", help="what each distinct run of a sweep costs: tokens, FLOPs, peak memory, GPU-hours; runs nothing"
    )
    plan.add_argument("sweep")
    plan.add_argument("overrides", nargs="*", help="Hydra overrides narrowing or changing the grid, e.g. task=glue_rte")
    plan.add_argument("--gpu", help="the device to plan for: cpu (this machine) or a GPU of bench/plan_data.yaml "
                      "(default: cpu for a sweep of local models, else h100)")  # fmt: skip
    plan.add_argument("--gpus", type=int, default=1, help="GPUs the runs are spread over, one run each (wall time)")
    plan.add_argument("--store", default=DEFAULT_STORE, help="records that calibrate the rate (default: %(default)s)")
    plan.add_argument("--check", action="store_true", help="predicted vs recorded seconds of the sweep's records")
    plan.add_argument("--runs", action="store_true", help="also one line per run's cost")
    plan.add_argument("--csv", help="write every run's plan to this CSV file")
    plan.set_defaults(handler=_plan)

    fetch = commands.add_parser(
        "prefetch", help="download every hub model and dataset a sweep needs at its locked commit (login node)"
    )
    fetch.add_argument("sweep")
    fetch.add_argument(
        "overrides", nargs="*", help="Hydra overrides narrowing or changing the grid, e.g. task=glue_rte"
    )
    fetch.add_argument("--update", action="store_true", help="move locked assets to what the hub serves now")
    fetch.add_argument(
        "--check", action="store_true",
        help="download nothing: check access, loading scripts and each dataset's schema against docs/hub_assets.md",
    )  # fmt: skip
    fetch.set_defaults(handler=_prefetch)

    # listed for --help only: main() hands `perf` and its options to peftbench.bench.perf's own parser
    commands.add_parser("perf", help="time each method's training step (see `peftbench perf --help`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["perf"]:  # its options belong to peftbench.bench.perf's own parser
        from peftbench.bench.perf import main as perf_main

        return perf_main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (getattr(args, "overrides", None) is None or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = [*(getattr(args, "overrides", None) or []), *extra]  # `status demo --grid k=v`: after its options
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"peftbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
