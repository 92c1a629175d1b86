# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Explore a peftbench sweep
#
# Loads the records of one sweep from the results store and shows the paper-style table, the
# learning-rate sensitivity and the plots — the same functions `peftbench report` uses.
# Set `PEFTBENCH_STORE` and `PEFTBENCH_SWEEP` to look at another sweep (default: the demo's).

# %%
import os
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display
from peftbench.bench.plots import plot_intervals
from peftbench.bench.render import to_markdown
from peftbench.bench.report import build_tables, write_tables
from peftbench.bench.results import Results

STORE = os.environ.get("PEFTBENCH_STORE", "../results/runs")
SWEEP = os.environ.get("PEFTBENCH_SWEEP", "demo")
OUT = Path(os.environ.get("PEFTBENCH_OUT", "../results"))

results = Results.load(STORE, SWEEP)  # the records, read once: every table and plot below comes from them
frame = results.runs  # one row per run, every experiment setting a column
print(f"{len(frame)} records in {STORE}/{SWEEP}:", frame["status"].value_counts().to_dict())

# %% [markdown]
# ## Methods × tasks at each method's best learning rate (mean ± std over seeds, ×100)
#
# Each cell also carries its 95% bootstrap interval (seeds and, paired, eval examples; 1,000 resamples; `[n/a]`
# without predictions sidecars). Per column the best is bold, rows not significantly different from it underlined;
# † marks a row significantly different from the baseline (LoRA unless `BASELINE` names another method).

# %%
BASELINE = os.environ.get("PEFTBENCH_BASELINE") or None
tables = build_tables(results, BASELINE)
display(Markdown(to_markdown(tables.main)))
if tables.vs_baseline is not None:
    display(Markdown(f"Paired difference to {tables.baseline}, ×100, with its 95% interval"))
    display(Markdown(to_markdown(tables.vs_baseline)))

# %% [markdown]
# ## Means with their 95% intervals
#
# One panel per column: each row's mean over seeds and its interval (red: significantly different from the
# baseline; hollow: no interval).

# %%
interval_plot = plot_intervals(tables.intervals, OUT / SWEEP / "plots")
if interval_plot:
    display(Image(filename=str(interval_plot[0])))
tables.intervals.drop(columns="row").round(2)

# %% [markdown]
# ## Learning-rate sensitivity

# %%
display(Markdown(to_markdown(tables.sensitivity)))
cells = results.lr_cells
pd.pivot_table(cells, index=["method", "rank"], columns=["task", "lr"], values="mean", dropna=False).round(4)

# %% [markdown]
# ## Plots (written under `results/<sweep>/plots/`)

# %%
written = write_tables(results, tables, OUT)
for name in ("lr_sensitivity.png", "pareto.png", "pareto_offline.png", "cost_by_method.png"):
    if name in written:
        display(Image(filename=str(written[name])))
