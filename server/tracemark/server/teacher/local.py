"""Local transformers teacher (folder or .gguf), optionally quantized with bitsandbytes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tracemark.foundation.channel import ChannelSpec, tokenizer_fingerprint
from tracemark.foundation.models.channel_processor import ChannelLogitsProcessor
from tracemark.foundation.models.device import DeviceError, resolve_device
from tracemark.foundation.models.gguf import gguf_to_folder
from tracemark.foundation.models.quantization import bnb_config, quantization_in_effect
from tracemark.server.teacher.base import (
    Generation,
    GenerationParams,
    Messages,
    RowChannel,
    TeacherBackend,
    TeacherError,
    TeacherInfo,
    TextCallback,
    describe_channel,
)
from tracemark.server.teacher.quantization import (
    DYNAMIC_INT8,
    dynamic_int8_layers,
    packed_bytes,
    quantize_dynamic_int8,
    resolve_quantization,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

log = logging.getLogger(__name__)


class _BatchStreamer(BaseStreamer):
    """Feeds each row's newly decoded text to its callback while ``generate`` runs."""

    def __init__(self, tokenizer, callbacks: list[TextCallback | None], eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.callbacks = callbacks
        self.eos_ids = eos_ids
        self.tokens: list[list[int]] = [[] for _ in callbacks]
        self.sent: list[str] = ["" for _ in callbacks]
        self.finished = [False] * len(callbacks)
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the first call carries the prompt
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.finished[row]:
                continue
            if token in self.eos_ids:
                self.finished[row] = True
                continue
            self.tokens[row].append(token)
            callback = self.callbacks[row]
            if callback is None:
                continue
            text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            # Hold back a trailing replacement char: a multi-byte character is still incomplete.
            if text.endswith("\ufffd"):
                continue
            delta = text[len(self.sent[row]) :]
            if delta:
                self.sent[row] = text
                callback(delta)

    def end(self) -> None:
        pass


class LocalTeacher(TeacherBackend):
    """A transformers causal LM on this host."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        quantization: str = "none",
        device: str = "auto",
        model_id: str | None = None,
        backend_name: str = "transformers",
        max_batch_size: int = 8,
        ads: Any | None = None,
        ads_lambda: float = 0.0,
        dtype: str = "auto",
    ) -> None:
        """``dtype``: ``auto`` (float32 on CPU, bfloat16 on CUDA), ``float32`` or ``bfloat16``."""
        path = Path(model_path)
        if not path.exists():
            raise TeacherError(f"model path not found: {path}")
        if path.suffix == ".gguf":
            path = gguf_to_folder(path)
        try:
            self.device = resolve_device(device, what="teacher")
        except DeviceError as exc:
            raise TeacherError(str(exc)) from None
        requested, reason = resolve_quantization(quantization, self.device)
        note = ""
        dynamic = requested == DYNAMIC_INT8
        if dynamic and self.device != "cpu":
            note = f"{DYNAMIC_INT8} runs on CPU only; loaded unquantized on {self.device}"
            dynamic = False
        qconfig = None if requested in ("none", DYNAMIC_INT8) else bnb_config(requested, self.device)
        if dtype not in ("auto", "float32", "bfloat16"):
            raise TeacherError(f"unknown teacher dtype {dtype!r} (auto, float32 or bfloat16)")
        if dtype == "auto":
            dtype = "float32" if self.device == "cpu" else "bfloat16"
        dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, quantization_config=qconfig, device_map=self.device
            )
        except Exception as exc:  # bitsandbytes missing a kernel for this device, etc.
            if qconfig is None:
                raise TeacherError(f"could not load model from {path}: {exc}") from exc
            note = (
                f"{requested} unavailable on {self.device} ({type(exc).__name__}: {exc}); loaded unquantized"
            )
            log.warning("quantization fallback: %s", note)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=self.device)
        self.model.eval()
        if dynamic:
            quantize_dynamic_int8(self.model)
        in_effect = quantization_in_effect(self.model)
        if dynamic and dynamic_int8_layers(self.model):
            in_effect = DYNAMIC_INT8
        if in_effect != requested and not note:
            note = f"requested {requested}, the loaded model reports {in_effect}"
        note = "; ".join(n for n in (reason, note) if n)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)
        self.ads, self.ads_lambda = ads, ads_lambda
        if ads is not None:
            ads.check_tokenizer(self.tokenizer)
        self._lock = threading.Lock()  # one generate at a time; batching happens in front of it
        self.info = TeacherInfo(
            model_id=model_id or str(model_path),
            backend=backend_name,
            quantization=in_effect,
            quantization_note=note,
            device=self.device,
            dtype=str(dtype).removeprefix("torch."),
            parameter_bytes=int(self.model.get_memory_footprint()) + packed_bytes(self.model),
            max_batch_size=max_batch_size,
            decoding=f"ads(lambda={ads_lambda:g}, epsilon={ads.epsilon:g})"
            if ads is not None
            else "standard",
        )

    channel_width = 1  # context width of the channel's green lists (set by configure_channel)
    channel_seconds = 0.0  # time spent in the channel's logits processor, all batches together

    def configure_channel(self, spec: ChannelSpec) -> ChannelSpec:
        """Carry the channel over this model's vocabulary (a logits processor: quantized models too)."""
        effective = replace(spec, tokenizer=tokenizer_fingerprint(self.tokenizer))
        self.channel_width = effective.context_width
        self.info.extra["channel"] = describe_channel(effective)
        return effective

    def _encode(self, conversations: list[Messages]) -> dict[str, torch.Tensor]:
        texts = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            for c in conversations
        ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.model.device) for k, v in enc.items()}

    def generate_plain(self, conversations: list[Messages], params: GenerationParams) -> list[int]:
        """``model.generate`` alone on the batch (no queue, channel, streamer or rewriting): the baseline
        the serving bench compares served throughput with. Returns each row's completion tokens."""
        enc = self._encode(conversations)
        kwargs = dict(max_new_tokens=params.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        kwargs["do_sample"] = not params.greedy
        if not params.greedy:
            kwargs.update(temperature=params.temperature, top_p=1.0, top_k=0)
        with self._lock, torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        prompt_len = enc["input_ids"].shape[1]
        return [self._completion_length(out[row, prompt_len:].tolist()) for row in range(out.shape[0])]

    def _completion_length(self, new: list[int]) -> int:
        return next((i for i, t in enumerate(new) if t in self.eos_ids), len(new))

    def generate_batch(
        self,
        conversations: list[Messages],
        params: GenerationParams,
        on_text: list[TextCallback | None] | None = None,
        channels: Sequence[RowChannel] | None = None,
    ) -> list[Generation]:
        enc = self._encode(conversations)
        prompt_len = enc["input_ids"].shape[1]
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            do_sample=not params.greedy,
        )
        if not params.greedy:
            kwargs.update(temperature=params.temperature, top_p=1.0, top_k=0)
        processors = []
        channel = None
        if self.ads is not None:
            processors.append(
                self.ads.make_logits_processor(
                    self.ads_lambda,
                    teacher_tokenizer=self.tokenizer,
                    prompt_attention_mask=enc["attention_mask"],
                )
            )
        if channels is not None and any(channels):
            if len(channels) != len(conversations):
                raise TeacherError(f"{len(channels)} channel rows for {len(conversations)} conversations")
            channel = ChannelLogitsProcessor(channels, width=self.channel_width)
            processors.append(channel)
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        if on_text and any(on_text):
            kwargs["streamer"] = _BatchStreamer(self.tokenizer, on_text, self.eos_ids)
        start = time.perf_counter()
        with self._lock, torch.inference_mode():
            if not params.greedy and params.seed is not None:
                torch.manual_seed(params.seed)
            try:
                out = self.model.generate(**enc, **kwargs)
            except Exception as exc:
                raise TeacherError(f"generation failed: {type(exc).__name__}") from exc
        seconds = time.perf_counter() - start
        if channel is not None:
            self.channel_seconds += channel.seconds
        results = []
        for row, mask in enumerate(enc["attention_mask"]):
            new = out[row, prompt_len:].tolist()
            cut = self._completion_length(new)
            text = self.tokenizer.decode(new[:cut], skip_special_tokens=True)
            results.append(
                Generation(
                    text=text.strip(),
                    prompt_tokens=int(mask.sum()),
                    completion_tokens=cut,
                    seconds=seconds,
                )
            )
        return results
