"""Bench tests train tiny models: one thread each (the machines running the suite are small and shared)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every bench test module runs with the suite's one-thread fixture (tests/conftest.py)."""
    yield
