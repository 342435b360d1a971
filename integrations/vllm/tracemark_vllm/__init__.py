"""tracemark's distributional watermark channel as a vLLM logits processor (see ``processor``)."""

from tracemark_vllm.processor import ACCOUNT_ARG, TracemarkChannelProcessor, request_account

__all__ = ["ACCOUNT_ARG", "TracemarkChannelProcessor", "request_account"]
