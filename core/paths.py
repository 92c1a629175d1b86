"""Where the repository's own files are: the Hydra configs (conf/) that runs compose and tasks list."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
