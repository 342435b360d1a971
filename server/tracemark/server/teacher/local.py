"""Local transformers teacher (folder or .gguf), optionally quantized with bitsandbytes."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch
from tracemark.server.teacher.base import (
    Generation,
    GenerationParams,
    Messages,
    TeacherBackend,
    TeacherError,
    TeacherInfo,
    TextCallback,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from transformers.generation.streamers import BaseStreamer

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """Turn ``auto`` into ``cuda`` when a GPU is visible, else ``cpu``; validate explicit choices."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TeacherError(f"device {device!r} requested but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise TeacherError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)")
    return device


def _quantization_config(quantization: str, device: str) -> BitsAndBytesConfig | None:
    if quantization == "none":
        return None
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.float32 if device == "cpu" else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quantization, bnb_4bit_compute_dtype=compute
    )


def _quantization_in_effect(model) -> str:
    if getattr(model, "is_loaded_in_8bit", False):
        return "int8"
    if getattr(model, "is_loaded_in_4bit", False):
        qc = getattr(model.config, "quantization_config", None)
        quant_type = getattr(qc, "bnb_4bit_quant_type", None)
        if quant_type is None and isinstance(qc, dict):
            quant_type = qc.get("bnb_4bit_quant_type")
        return str(quant_type or "4bit")
    return "none"


def gguf_to_folder(gguf_file: Path) -> Path:
    """Convert a .gguf file once into a cached model folder (keyed by path, size and mtime)."""
    from tracemark.server.embedded import cache_root, convert_gguf

    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "models" / f"{gguf_file.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    return convert_gguf(gguf_file, target)


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
    ) -> None:
        path = Path(model_path)
        if not path.exists():
            raise TeacherError(f"model path not found: {path}")
        if path.suffix == ".gguf":
            path = gguf_to_folder(path)
        self.device = resolve_device(device)
        requested = quantization
        note = ""
        qconfig = _quantization_config(quantization, self.device)
        dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
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
        in_effect = _quantization_in_effect(self.model)
        if in_effect != requested and not note:
            note = f"requested {requested}, bitsandbytes reports {in_effect}"
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
            parameter_bytes=int(self.model.get_memory_footprint()),
            max_batch_size=max_batch_size,
            decoding=f"ads(lambda={ads_lambda:g}, epsilon={ads.epsilon:g})"
            if ads is not None
            else "standard",
        )

    def _encode(self, conversations: list[Messages]) -> dict[str, torch.Tensor]:
        texts = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            for c in conversations
        ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.model.device) for k, v in enc.items()}

    def generate_batch(
        self,
        conversations: list[Messages],
        params: GenerationParams,
        on_text: list[TextCallback | None] | None = None,
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
        if self.ads is not None:
            from transformers import LogitsProcessorList

            processor = self.ads.make_logits_processor(
                self.ads_lambda, teacher_tokenizer=self.tokenizer, prompt_attention_mask=enc["attention_mask"]
            )
            kwargs["logits_processor"] = LogitsProcessorList([processor])
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
        results = []
        for row, mask in enumerate(enc["attention_mask"]):
            new = out[row, prompt_len:].tolist()
            cut = next((i for i, t in enumerate(new) if t in self.eos_ids), len(new))
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
