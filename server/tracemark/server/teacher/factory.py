"""Build the configured teacher backend."""

from __future__ import annotations

import logging
import tempfile

from tracemark.server.config import TeacherSection
from tracemark.server.teacher.base import TeacherBackend, TeacherError

log = logging.getLogger(__name__)


def build_teacher(section: TeacherSection) -> TeacherBackend:
    """Load the teacher described by ``section`` (may take seconds: conversion, quantization)."""
    if section.backend == "openai":
        from tracemark.server.teacher.remote import OpenAITeacher

        return OpenAITeacher(
            section.endpoint,
            section.model,
            api_key_env=section.api_key_env,
            timeout_s=section.request_timeout_s,
            max_batch_size=section.max_batch_size,
        )
    from tracemark.server.teacher.local import LocalTeacher

    if section.backend == "embedded":
        from tracemark.server.embedded import EMBEDDED_MODEL_ID, ensure_embedded_model

        return LocalTeacher(
            ensure_embedded_model(),
            quantization=section.quantization,
            device=section.device,
            model_id=EMBEDDED_MODEL_ID,
            backend_name="embedded",
            max_batch_size=section.max_batch_size,
        )
    if section.backend == "tiny":
        from tracemark.server.tiny import build_tiny_model

        folder = build_tiny_model(tempfile.mkdtemp(prefix="tracemark-tiny-"))
        return LocalTeacher(
            folder,
            quantization=section.quantization,
            device=section.device,
            model_id="tiny-random-llama",
            backend_name="tiny",
            max_batch_size=section.max_batch_size,
        )
    if not section.model:
        raise TeacherError("teacher.backend=transformers needs teacher.model (a folder or a .gguf file)")
    return LocalTeacher(
        section.model,
        quantization=section.quantization,
        device=section.device,
        max_batch_size=section.max_batch_size,
    )
