"""Build the configured teacher backend."""

from __future__ import annotations

import logging
import tempfile

from tracemark.foundation.models.embedded import EMBEDDED_MODEL_ID, ensure_embedded_model
from tracemark.foundation.problems import generate_problems
from tracemark.server.config import TeacherSection
from tracemark.server.teacher.base import TeacherBackend, TeacherError
from tracemark.server.teacher.remote import OpenAITeacher

log = logging.getLogger(__name__)


def _ads(section: TeacherSection) -> dict:
    """Antidistillation-sampling arguments for a local teacher (empty for standard decoding)."""
    if section.decoding != "ads":
        return {}
    from tracemark.server.teacher.ads import AntidistillationSampler  # deferred: imports torch

    # Held-out clean traces come from the procedural generator, so no data set is needed.
    heldout = [(p.question, p.solution) for p in generate_problems(section.ads_heldout, seed=7919)]
    sampler = AntidistillationSampler(section.ads_proxy or None, heldout, epsilon=section.ads_epsilon)
    return {"ads": sampler, "ads_lambda": section.ads_lambda}


def build_teacher(section: TeacherSection, *, dtype: str = "auto") -> TeacherBackend:
    """Load the teacher described by ``section`` (may take seconds: conversion, quantization);
    ``dtype`` of a local model: auto (float32 on CPU, bfloat16 on CUDA), float32 or bfloat16."""
    if section.backend == "openai":
        if section.decoding == "ads":
            raise TeacherError("decoding=ads needs a local teacher (it adjusts logits during generation)")
        return OpenAITeacher(
            section.endpoint,
            section.model,
            api_key_env=section.api_key_env,
            timeout_s=section.request_timeout_s,
            max_batch_size=section.max_batch_size,
        )
    from tracemark.server.teacher.local import (
        LocalTeacher,  # deferred: imports torch (a remote teacher needs none)
    )

    if section.backend == "embedded":
        return LocalTeacher(
            ensure_embedded_model(),
            quantization=section.quantization,
            device=section.device,
            model_id=EMBEDDED_MODEL_ID,
            backend_name="embedded",
            max_batch_size=section.max_batch_size,
            dtype=dtype,
            **_ads(section),
        )
    if section.backend == "tiny":
        from tracemark.foundation.models.tiny import build_tiny_model  # deferred: imports torch

        folder = build_tiny_model(tempfile.mkdtemp(prefix="tracemark-tiny-"))
        return LocalTeacher(
            folder,
            quantization=section.quantization,
            device=section.device,
            model_id="tiny-random-llama",
            backend_name="tiny",
            max_batch_size=section.max_batch_size,
            dtype=dtype,
            **_ads(section),
        )
    if not section.model:
        raise TeacherError("teacher.backend=transformers needs teacher.model (a folder or a .gguf file)")
    return LocalTeacher(
        section.model,
        quantization=section.quantization,
        device=section.device,
        max_batch_size=section.max_batch_size,
        dtype=dtype,
        **_ads(section),
    )
