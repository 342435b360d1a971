"""Which torch device a model runs on."""

from __future__ import annotations

from tracemark.foundation.errors import InvalidInput


class DeviceError(InvalidInput):
    """An unknown device, or CUDA asked for where none is visible."""


def resolve_device(device: str, *, what: str = "model") -> str:
    """Turn ``auto`` into ``cuda`` when a GPU is visible, else ``cpu``; validate explicit choices."""
    import torch  # deferred: torch is heavy and not every caller of this module needs it

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"{what} device {device!r} requested but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise DeviceError(f"unknown {what} device {device!r} (use auto, cpu, cuda or cuda:N)")
    return device
