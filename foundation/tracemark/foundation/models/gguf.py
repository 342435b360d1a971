"""GGUF files to regular model folders: dequantise once with transformers, cache, load fast later.

transformers reads GGUF directly, but dequantising takes ~20 s and the loaded model refuses
``save_pretrained``; so the weights are copied into a model built from the same config and that is saved.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

from tracemark.foundation.paths import cache_root

log = logging.getLogger(__name__)


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """Dequantise ``gguf_file`` with transformers and save a regular model folder at ``target``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # deferred: heavy

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


def gguf_to_folder(gguf_file: Path) -> Path:
    """Convert a .gguf file once into a cached model folder (keyed by path, size and mtime)."""
    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "models" / f"{gguf_file.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    return convert_gguf(gguf_file, target)
