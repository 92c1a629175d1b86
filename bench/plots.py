"""Plots people read instead of tables (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def _series_label(method: str, model: str, rank: object) -> str:
    return f"{method} ({model})" if pd.isna(rank) else f"{method} r={int(rank)} ({model})"


def _file_stem(task: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in task).strip("_")


def plot_metric_vs_lr(cells: pd.DataFrame, out_dir: Path, metric_names: dict[str, str]) -> list[Path]:
    """One PNG per task: the primary metric's seed-mean (±std) against the learning rate (log x).

    Each line is a (method, model, rank); a learning rate where a seed diverged is marked with an x
    at the bottom of the panel.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task, by_task in cells.groupby("task", sort=True):
        fig, ax = plt.subplots(figsize=(8.4, 4.4))
        valid_means = 100 * by_task["mean"].dropna()
        floor = valid_means.min() - 2 if len(valid_means) else 0.0
        series = list(by_task.groupby(["method", "model", "rank"], dropna=False, sort=True))
        colors = plt.get_cmap("tab20" if len(series) > 10 else "tab10").colors
        for index, ((method, model, rank), line) in enumerate(series):
            line = line.sort_values("lr")
            ok = line.dropna(subset=["mean"])
            drawn = ax.errorbar(
                ok["lr"], 100 * ok["mean"], yerr=100 * ok["std"].fillna(0), marker=MARKERS[index % len(MARKERS)],
                capsize=3, color=colors[index % len(colors)], label=_series_label(method, model, rank),
            )  # fmt: skip
            diverged = line[line["diverged"] > 0]
            if len(diverged):
                ax.scatter(diverged["lr"], [floor] * len(diverged), marker="x", s=60, color=drawn[0].get_color())
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"{metric_names.get(task, 'primary metric')} ×100 (seed mean ± std)")
        ax.set_title(f"{task}: metric vs learning rate  (x = diverged)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # beside, not over
        fig.tight_layout()
        path = out_dir / f"metric_vs_lr_{_file_stem(task)}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def _save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """PNG (for reading) and PDF (for papers) of a figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


def plot_lr_panels(cells: pd.DataFrame, out_dir: Path) -> list[Path]:
    """LR sensitivity as the SingLoRA paper shows it: metric vs log10(lr) per method, seed-std band, best
    point starred; one panel per (task, rank); methods without a rank appear in every rank's panel."""
    ranks = sorted({int(r) for r in cells["rank"].dropna()}) or [None]
    panels = [(task, rank) for task in sorted(cells["task"].unique()) for rank in ranks]
    if not panels:  # no completed run (only failed ones): nothing to plot
        return []
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    methods = sorted(cells["method"].unique())
    colors = plt.get_cmap("tab20" if len(methods) > 10 else "tab10").colors
    for ax, (task, rank) in zip(axes.flat, panels, strict=False):
        here = cells[(cells["task"] == task) & (cells["rank"].isna() | (cells["rank"] == rank))]
        for index, method in enumerate(methods):
            line = here[here["method"] == method].dropna(subset=["mean"]).sort_values("lr")
            if line.empty:
                continue
            x, y, band = line["lr"], 100 * line["mean"], 100 * line["std"].fillna(0)
            color = colors[index % len(colors)]
            ax.plot(x, y, marker=MARKERS[index % len(MARKERS)], color=color, label=method)
            ax.fill_between(x, y - band, y + band, color=color, alpha=0.15)
            best = line.loc[line["mean"].idxmax()]
            ax.plot([best["lr"]], [100 * best["mean"]], marker="*", markersize=14, color=color, markeredgecolor="k")
        ax.set_xscale("log")
        ax.set_title(f"{task}" + ("" if rank is None else f", rank {rank}"), fontsize=10)
        ax.set_xlabel("learning rate (log)")
        ax.set_ylabel("primary metric ×100")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    legend: dict[str, object] = {}
    for ax in axes.flat:  # every method, whichever panels it appears in
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), fontsize=8, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle("LR sensitivity (band: seed std; star: best lr)", y=1.04, fontsize=11)
    return _save(fig, out_dir, "lr_sensitivity")


def pareto_front(params: list[float], scores: list[float]) -> list[int]:
    """Indices of the points no other point beats with fewer (or equal) params and a higher score."""
    order = sorted(range(len(params)), key=lambda i: (params[i], -scores[i]))
    front, best = [], float("-inf")
    for i in order:
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return front


def plot_pareto(numbers: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Average score vs trainable parameters (log x), one point per (method, rank), Pareto front drawn.
    One figure per protocol (the hub's `Avg`, and `Avg (offline)`)."""
    written = []
    for column in [c for c in numbers.columns if c.startswith("Avg")]:
        points = numbers.dropna(subset=[column, "Params %"])
        if points.empty:
            continue
        fig, ax = plt.subplots(figsize=(8.8, 4.6))
        params, scores = list(points["Params %"]), list(points[column])
        labels = [
            _series_label(m, "", r).replace(" ()", "") for m, r in zip(points["method"], points["rank"], strict=True)
        ]
        colors = plt.get_cmap("tab20" if len(labels) > 10 else "tab10").colors
        for index, (x, y, label) in enumerate(zip(params, scores, labels, strict=True)):  # a legend: no overlaps
            ax.scatter(
                [x], [y], marker=MARKERS[index % len(MARKERS)], color=colors[index % len(colors)], s=50, label=label
            )
        front = pareto_front(params, scores)
        ax.plot(
            [params[i] for i in front],
            [scores[i] for i in front],
            color="tab:red",
            linestyle="--",
            label="Pareto front",
        )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (% of the model, log)")
        ax.set_ylabel(f"{column} of the primary metric ×100")
        ax.set_title(f"Score vs trainable parameters ({column})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        stem = "pareto" if column == "Avg" else "pareto_" + _file_stem(column.removeprefix("Avg "))
        written += _save(fig, out_dir, stem)
    return written


def plot_cost(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Peak memory and train time per method (median over its runs), side by side."""
    done = frame[frame["status"] == "ok"].copy()
    if done.empty or done["train_seconds"].isna().all():
        return []
    done["label"] = [
        _series_label(m, "", r).replace(" ()", "") for m, r in zip(done["method"], done["rank"], strict=True)
    ]
    summary = done.groupby("label").agg(memory=("peak_memory_bytes", "median"), seconds=("train_seconds", "median"))
    summary = summary.sort_values("seconds")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.35 * len(summary) + 1.6), sharey=True)
    left.barh(summary.index, summary["memory"] / 2**30, color="tab:purple")
    left.set_xlabel("peak memory (GiB, median over runs)")
    right.barh(summary.index, summary["seconds"], color="tab:green")
    right.set_xlabel("train time (s, median over runs)")
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("Cost by method (CPU peak RSS or GPU allocated peak, as each record says)", fontsize=10)
    return _save(fig, out_dir, "cost_by_method")


def plot_intervals(intervals: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One panel per column of the main table: each row's mean with its 95% bootstrap interval (a row without one
    is a hollow point, no bar); rows significantly different from the baseline are filled red."""
    if intervals.empty:
        return []
    columns = list(dict.fromkeys(intervals["column"]))
    count = min(3, len(columns))
    rows = -(-len(columns) // count)
    keys = zip(intervals["method"], intervals["model"], intervals["rank"], strict=True)
    labels = list(dict.fromkeys(_series_label(m, mo, None if r == "–" else r) for m, mo, r in keys))
    fig, axes = plt.subplots(rows, count, figsize=(4.6 * count, 0.42 * len(labels) * rows + 1.4), squeeze=False)
    for ax, column in zip(axes.flat, columns, strict=False):
        part = intervals[intervals["column"] == column]
        for entry in part.itertuples(index=False):
            y = labels.index(_series_label(entry.method, entry.model, None if entry.rank == "–" else entry.rank))
            color = "tab:red" if entry.significant is True else "tab:blue"
            if pd.isna(entry.ci_low):
                ax.plot([entry.mean], [y], marker="o", markerfacecolor="none", color=color)
                continue
            # the interval as a segment, the mean as a point: a percentile interval need not contain the mean of
            # the seeds (Matthews corr., Pearson and F1 are not means of the examples), so no ± error bar
            ax.plot([entry.ci_low, entry.ci_high], [y, y], color=color, marker="|", markersize=8)
            ax.plot([entry.mean], [y], marker="o", color=color)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.invert_yaxis()
        ax.set_title(column, fontsize=10)
        ax.set_xlabel("×100, mean and 95% interval")
        ax.grid(True, axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(columns) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Mean over seeds with its 95% bootstrap interval (red: differs from the baseline; hollow: no interval)",
        fontsize=10,
    )
    return _save(fig, out_dir, "intervals")
