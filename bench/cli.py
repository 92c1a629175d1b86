"""`peftbench` command line: report, status, grid and prefetch of a sweep (training runs go through `bench.run`)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from bench.errors import ConfigError

DEFAULT_STORE = "results/runs"


def _report(args: argparse.Namespace) -> int:
    from bench.html_report import write_html
    from bench.report import write_report

    if args.paper:
        from bench.paper import write_paper_report
        from bench.store import RunStore

        paths = write_paper_report(args.store, args.sweep, args.paper, args.out, args.baseline)
        print(paths["md"].read_text())
        print(f"written: {', '.join(str(p) for p in paths.values())}")
        if next(RunStore(args.store).iter_records(args.sweep), None) is None:
            return 0  # the paper's numbers alone: no report of ours to write
    written = write_report(args.store, args.sweep, args.out, args.baseline)
    if not args.paper:
        print(written["main.md"].read_text())
        if "vs_baseline.md" in written:
            print(written["vs_baseline.md"].read_text())
        print(f"tables and plots for sweep {args.sweep!r} under {written['main.md'].parents[1]}")
    papers = [args.paper] if args.paper else []
    page = write_html(args.store, args.sweep, args.out, written.values(), papers, args.baseline)
    print(f"report page: {page.resolve().as_uri()}")
    return 0


def _grid(args: argparse.Namespace) -> int:
    from bench.grid import describe, estimate_gpu_hours, resolve_grid, sweep_config

    cfg = sweep_config(args.sweep)
    store = args.store or cfg.store.root
    grid = resolve_grid(args.sweep)
    extra = {
        "model": cfg.model.name,
        "data": cfg.data,
        "store": f"{store}/{cfg.sweep}",
        "estimate": estimate_gpu_hours(store, cfg.sweep, len(grid.runs)),
    }
    print(describe(grid, extra, points=args.points))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from bench.plan import check_store, describe_check, describe_plan, plan_data, plan_sweep, write_csv

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
    from bench.prefetch import prefetch

    prefetch(args.sweep, args.overrides)
    return 0


def _status(args: argparse.Namespace) -> int:
    from bench.store import RunStore

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
        from bench.grid import resolve_grid

        grid = resolve_grid(args.sweep)
        missing = _missing_points(grid.first_points(), by_id)
        print(f"missing: {len(missing)} of {len(grid.runs)} runs without a complete record "
              f"({len(grid.points)} grid points)")  # fmt: skip
        for point in missing:
            print("  python -m bench.run sweep=" + args.sweep + " " + " ".join(f"{k}={v}" for k, v in point.items()))
    return 0


def _missing_points(first_points: dict[str, dict[str, str]], by_id: dict[str, dict]) -> list[dict[str, str]]:
    """The first grid point of each run whose run_id has no ok/diverged record (a run's other points not listed)."""
    from bench.store import COMPLETED

    return [point for run_id, point in first_points.items() if by_id.get(run_id, {}).get("status") not in COMPLETED]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    report = commands.add_parser("report", help="write a sweep's tables (md/tex/csv), plots and index.html")
    report.add_argument("sweep")
    report.add_argument("--store", default=DEFAULT_STORE, help="results store root (default: %(default)s)")
    report.add_argument("--out", default="results", help="output root: <out>/<sweep>/tables, plots, index.html")
    report.add_argument("--paper", help="a conf/paper table: its layout, our cells beside the published ones")
    report.add_argument(
        "--baseline", help="the method every other one is tested against (paired bootstrap; default: lora, if run)"
    )
    report.set_defaults(handler=_report)

    status = commands.add_parser("status", help="count done / diverged / failed runs of a sweep")
    status.add_argument("sweep")
    status.add_argument("--store", default=DEFAULT_STORE, help="results store root (default: %(default)s)")
    status.add_argument("--grid", action="store_true", help="also list the runs of the grid with no record yet")
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

    fetch = commands.add_parser("prefetch", help="download every hub model and dataset a sweep needs (login node)")
    fetch.add_argument("sweep")
    fetch.add_argument(
        "overrides", nargs="*", help="Hydra overrides narrowing or changing the grid, e.g. task=glue_rte"
    )
    fetch.set_defaults(handler=_prefetch)

    # listed for --help only: main() hands `perf` and its options to bench.perf's own parser
    commands.add_parser("perf", help="time each method's training step (see `peftbench perf --help`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["perf"]:  # its options belong to bench.perf's own parser
        from bench.perf import main as perf_main

        return perf_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"peftbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
