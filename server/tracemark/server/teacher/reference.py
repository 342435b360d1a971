"""A teacher that answers known problems with their reference solutions.

Used where generating hundreds of correct traces with an LLM on CPU would take too long (the demo, CPU
benchmarks): the protection under test — rewriting and watermarking — is the same for any teacher.
"""

from __future__ import annotations

import time

from tracemark.server.teacher.base import (
    Generation,
    GenerationParams,
    Messages,
    TeacherBackend,
    TeacherError,
    TeacherInfo,
)

CHANNEL_NOTE = (
    "unavailable: reference solutions are not decoded by a model, so they carry no distributional "
    "channel (only the rewriters' signature pairs and LLM-woven text protect them)"
)


class ReferenceTeacher(TeacherBackend):
    def __init__(self, solutions: dict[str, str], *, model_id: str = "reference-solutions") -> None:
        self.solutions = {q.strip(): s for q, s in solutions.items()}
        self.info = TeacherInfo(
            model_id=model_id,
            backend="reference",
            quantization="none",
            quantization_note="reference solutions, no model",
            device="cpu",
            dtype="n/a",
            max_batch_size=64,
            extra={"channel": CHANNEL_NOTE},
        )

    def configure_channel(self, spec) -> None:
        """Reference solutions are not decoded by a model: they cannot carry the distributional channel."""
        self.info.extra["channel"] = CHANNEL_NOTE
        return None

    def generate_batch(
        self, conversations: list[Messages], params: GenerationParams, on_text=None, channels=None
    ) -> list[Generation]:
        # ``channels`` is ignored: no decoding happens here (see CHANNEL_NOTE).
        out = []
        for index, messages in enumerate(conversations):
            start = time.perf_counter()
            problem = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "").strip()
            if problem not in self.solutions:
                if problem == "1+1?":  # the server's warm-up request
                    out.append(Generation(text="1 + 1 = 2\n#### 2"))
                    continue
                raise TeacherError("the reference teacher only knows the problems it was given")
            text = self.solutions[problem]
            if on_text and on_text[index]:
                on_text[index](text)
            out.append(
                Generation(
                    text=text, completion_tokens=len(text.split()), seconds=time.perf_counter() - start
                )
            )
        return out
