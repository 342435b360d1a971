"""bitsandbytes settings: the config to ask for, and the quantization a loaded model actually has."""

from __future__ import annotations

from typing import Any

QUANTIZATIONS = ("none", "int8", "nf4", "fp4")


def bnb_config(quantization: str, device: str) -> Any:
    """A ``BitsAndBytesConfig`` for ``quantization`` (None for ``none``); 4-bit computes in fp32 on CPU."""
    if quantization == "none":
        return None
    import torch  # deferred: heavy
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.float32 if device == "cpu" else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quantization, bnb_4bit_compute_dtype=compute
    )


def quantization_in_effect(model: Any) -> str:
    """``int8``, the 4-bit type (``nf4``/``fp4``) or ``none``, read from the loaded model itself."""
    if getattr(model, "is_loaded_in_8bit", False):
        return "int8"
    if getattr(model, "is_loaded_in_4bit", False):
        qc = getattr(model.config, "quantization_config", None)
        quant_type = getattr(qc, "bnb_4bit_quant_type", None)
        if quant_type is None and isinstance(qc, dict):
            quant_type = qc.get("bnb_4bit_quant_type")
        return str(quant_type or "4bit")
    return "none"
