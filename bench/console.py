"""The console of a run: one progress bar and one result line; the libraries' chatter goes to the run's log.

transformers' load reports and warnings, `datasets`' map bars, PEFT's and torch's warnings and the Trainer's
printed loss dicts are written to `<store>/<sweep>/logs/<run_id>.log` instead of the terminal. `-v` on the
command line (or `hydra.verbose=true`) keeps them on the console too. Errors still print their one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

LIBRARIES = ("transformers", "datasets", "peft", "accelerate", "huggingface_hub", "torch", "py.warnings")
VERBOSE_ENV = "PEFTBENCH_VERBOSE"
log = logging.getLogger("peftbench.train")


def verbose() -> bool:
    """`-v` (peftbench.bench.run sets the variable) or hydra.verbose: the libraries keep the console."""
    if os.environ.get(VERBOSE_ENV) == "1":
        return True
    with contextlib.suppress(Exception):
        from hydra.core.hydra_config import HydraConfig

        return bool(HydraConfig.get().verbose)
    return False


class QuietProgress(ProgressCallback):
    """The Trainer's training bar alone: no evaluation bars, and the logged loss dicts go to the run's log."""

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):  # noqa: ANN001
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        log.info("step %s: %s", state.global_step, logs)
        return control


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[Path]:
    """Route the libraries' logging and warnings to `path` for the duration of one run."""
    if verbose():
        yield path
        return
    import datasets
    import transformers

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    saved: list[tuple[logging.Logger, bool, int]] = []
    for name in (*LIBRARIES, "peftbench.train"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate, logger.level))
        logger.addHandler(handler)
        logger.propagate = False
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars; the Trainer's bar is tqdm's own
    datasets.disable_progress_bars()
    datasets.utils.logging.disable_propagation()
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each warning once, into the log
            yield path
    finally:
        logging.captureWarnings(False)
        transformers.utils.logging.enable_default_handler()
        transformers.utils.logging.enable_progress_bar()
        datasets.enable_progress_bars()
        for logger, propagate, level in saved:
            logger.removeHandler(handler)
            logger.propagate, _ = propagate, logger.setLevel(level)
        handler.close()


class LogToFile(TrainerCallback):
    """No bar: the logged loss dicts go to the run's log (the Trainer's PrinterCallback would print them)."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        log.info("step %s: %s", state.global_step, logs)
        return control


def quiet_progress(trainer: Any) -> None:
    """Swap the Trainer's printers for quiet ones: the training bar alone, or nothing when the bar is off."""
    if verbose():
        return
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LogToFile if trainer.args.disable_tqdm else QuietProgress)
