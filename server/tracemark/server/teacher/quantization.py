"""Which quantization a local teacher runs under: ``auto`` picks per device from measured speed.

Measured with ``tracemark bench serve`` (raw ``model.generate`` tokens/s of the embedded SmolLM2-135M,
greedy, 32-64 new tokens; see README "Serving speed"): on CPU, torch's dynamic int8 (``int8-dynamic``:
int8 weights, fp32 activations, fbgemm/onednn kernels) is the fastest of fp32 / bf16 / int8-dynamic /
bitsandbytes NF4 at batch 1 and 8 (and a quarter of fp32's linear-layer memory); bitsandbytes 4-bit
has no fast CPU kernel without the hub-fetched ``kernels`` package, so NF4 on CPU is slower than fp32.
On CUDA, bitsandbytes NF4 runs its native kernels (not measured on this project's CPU-only machines).
"""

from __future__ import annotations

from typing import Any

AUTO = "auto"
DYNAMIC_INT8 = "int8-dynamic"
BITSANDBYTES = ("int8", "nf4", "fp4")

# The measurement behind the CPU choice (embedded SmolLM2-135M, 2 shared cores; README "Serving speed").
CPU_REASON = (
    "auto on cpu: int8-dynamic (torch dynamic int8), the fastest mode measured on CPU "
    "(embedded SmolLM2-135M, raw generate tokens/s at batch 1 / 8: int8-dynamic 27 / 135, bf16 20 / 109, "
    "nf4 20 / 83, fp32 13 / 66; bitsandbytes has no fast 4-bit CPU kernel)"
)
CUDA_REASON = "auto on cuda: nf4 (bitsandbytes 4-bit with its native CUDA kernels; a quarter of fp16 memory)"


def resolve_quantization(requested: str, device: str) -> tuple[str, str]:
    """``(mode, reason)``: ``auto`` becomes this device's default with the reason; other modes as asked
    (reason empty)."""
    if requested != AUTO:
        return requested, ""
    if device == "cpu":
        return DYNAMIC_INT8, CPU_REASON
    return "nf4", CUDA_REASON


def quantize_dynamic_int8(model: Any) -> Any:
    """Replace ``model``'s ``nn.Linear`` layers by dynamically quantized int8 ones (CPU only, in place)."""
    import warnings

    import torch  # deferred: heavy

    with warnings.catch_warnings():  # torch.ao's eager-mode API warns that torchao is its successor
        warnings.simplefilter("ignore")
        linear = {torch.nn.Linear}
        return torch.ao.quantization.quantize_dynamic(model, linear, dtype=torch.qint8, inplace=True)


def dynamic_int8_layers(model: Any) -> int:
    """How many dynamically quantized linear layers ``model`` holds."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear  # deferred: heavy

    return sum(isinstance(m, DynamicLinear) for m in model.modules())


def packed_bytes(model: Any) -> int:
    """Bytes of the packed int8 weights (and fp32 biases) of dynamically quantized layers, which
    ``get_memory_footprint`` does not see (they are not parameters)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear  # deferred: heavy

    total = 0
    for module in model.modules():
        if isinstance(module, DynamicLinear):
            weight, bias = module._weight_bias()
            total += weight.numel() * weight.element_size()
            if bias is not None:
                total += bias.numel() * bias.element_size()
    return total
