"""LLM backends handed to rewriters (the plugin API's ``LLMBackend`` protocol)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from tracemark.server.batching import GenerationQueue
from tracemark.server.teacher.base import GenerationParams, Messages, TeacherBackend


class _ChatLLM(ABC):
    """``chat`` as the plugin API defines it; subclasses say where the generation runs."""

    model_id: str

    def chat(
        self,
        messages: Messages,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> str:
        params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        return self._generate(messages, params)

    @abstractmethod
    def _generate(self, messages: Messages, params: GenerationParams) -> str: ...


class QueuedLLM(_ChatLLM):
    """Chat through the server's generation queue, so rewriter calls batch with teacher calls."""

    def __init__(self, queue: GenerationQueue, model_id: str, *, timeout_s: float = 300.0) -> None:
        self.queue = queue
        self.model_id = model_id
        self.timeout_s = timeout_s

    def _generate(self, messages: Messages, params: GenerationParams) -> str:
        return self.queue.generate(messages, params, timeout=self.timeout_s).text


class DirectLLM(_ChatLLM):
    """Chat straight through a backend (e.g. a remote OpenAI-compatible rewriter model)."""

    def __init__(self, backend: TeacherBackend) -> None:
        self.backend = backend
        self.model_id = backend.info.model_id

    def _generate(self, messages: Messages, params: GenerationParams) -> str:
        return self.backend.generate_batch([messages], params)[0].text
