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
