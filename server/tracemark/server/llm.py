"""LLM backends handed to rewriters (the plugin API's ``LLMBackend`` protocol).

Text an LLM rewriter weaves reaches the customer, so it is decoded with the caller's distributional
channel: :meth:`for_account` gives the per-request view a rewrite context holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from tracemark.server.batching import ChannelKeys, GenerationQueue
from tracemark.server.teacher.base import GenerationParams, Messages, TeacherBackend


class _ChatLLM(ABC):
    """``chat`` as the plugin API defines it; subclasses say where the generation runs."""

    model_id: str
    account: str | None = None

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

    @abstractmethod
    def for_account(self, account: str | None) -> _ChatLLM:
        """The same backend, decoding for ``account`` (``None``: anonymous, the provider key only)."""


class QueuedLLM(_ChatLLM):
    """Chat through the server's generation queue, so rewriter calls batch with teacher calls (and get
    the queue's channel for ``account``)."""

    def __init__(
        self, queue: GenerationQueue, model_id: str, *, timeout_s: float = 300.0, account: str | None = None
    ) -> None:
        self.queue = queue
        self.model_id = model_id
        self.timeout_s = timeout_s
        self.account = account

    def for_account(self, account: str | None) -> QueuedLLM:
        return QueuedLLM(self.queue, self.model_id, timeout_s=self.timeout_s, account=account)

    def _generate(self, messages: Messages, params: GenerationParams) -> str:
        job = self.queue.submit(messages, params, account=self.account, internal=True)
        return job.result(timeout=self.timeout_s).text


class DirectLLM(_ChatLLM):
    """Chat straight through a backend (e.g. a remote OpenAI-compatible rewriter model); with ``channel``
    its decoding carries the distributional channel where the backend can bias it."""

    def __init__(
        self, backend: TeacherBackend, *, channel: ChannelKeys | None = None, account: str | None = None
    ) -> None:
        self.backend = backend
        self.model_id = backend.info.model_id
        self.channel = channel
        self.account = account

    def for_account(self, account: str | None) -> DirectLLM:
        return DirectLLM(self.backend, channel=self.channel, account=account)

    def _generate(self, messages: Messages, params: GenerationParams) -> str:
        if self.channel is None:
            return self.backend.generate_batch([messages], params)[0].text
        rows = [self.channel.lists_for(self.account)]
        return self.backend.generate_batch([messages], params, channels=rows)[0].text
