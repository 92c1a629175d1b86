"""A GGUF model shipped in a PyPI package, converted once to a plain safetensors folder and reused.

transformers dequantises a GGUF file on every `from_pretrained` (about 20-30 s for SmolLM2-135M) and
refuses to `save_pretrained` a GGUF-loaded model, so the first run rebuilds the model from its config,
copies the dequantised weights in, drops the quantization config and saves model and tokenizer under
the user's cache (never in the repo). Later loads read that folder in a fraction of a second. The folder
is written under a temporary name and renamed last, so a killed conversion leaves nothing half-done.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from peftbench.core.assets import package_path

COMPLETE = "CONVERTED"


def cache_root() -> Path:
    """`$PEFTBENCH_CACHE`, else `$XDG_CACHE_HOME/peftbench`, else `~/.cache/peftbench`."""
    if os.environ.get("PEFTBENCH_CACHE"):
        return Path(os.environ["PEFTBENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftbench"


def converted_folder(spec: DictConfig) -> Path:
    """The cached safetensors folder of the model entry's GGUF file, converting it on first use."""
    gguf = package_path(spec.package, spec.gguf_file)
    # the file's size and mtime name the version: a reinstalled package of another version converts anew
    stat = gguf.stat()
    folder = cache_root() / "models" / f"{spec.name}-{stat.st_size}-{int(stat.st_mtime)}"
    if (folder / COMPLETE).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _convert(gguf, staging)
        (staging / COMPLETE).write_text(f"{gguf}\n")
        try:
            os.rename(staging, folder)
        except OSError:  # another process finished the same conversion first: keep theirs
            if not (folder / COMPLETE).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - started
    print(f"peftbench: converted {gguf.name} to {folder} in {seconds:.1f} s (once; later runs reuse it)",
          file=sys.stderr)  # fmt: skip
    return folder


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # tied embeddings are the only weights allowed to be absent from the GGUF copy
    if unexpected or any("lm_head" not in name for name in missing):
        raise RuntimeError(f"GGUF conversion of {gguf.name}: missing {missing}, unexpected {unexpected}")
    plain.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
