"""Suite-wide fixtures: isolated data/cache folders and a tiny random model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory):
    """Keep ledgers and master keys of the suite out of the user's folders; share the model cache."""
    home = tmp_path_factory.mktemp("tracemark-home")
    os.environ["TRACEMARK_HOME"] = str(home)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tracemark.foundation.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module: small models on a shared 2-core machine run ~10x faster
    than with two contended threads. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
