"""The teacher interface shared by local, embedded and remote backends."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from tracemark.foundation.errors import Failed

Messages = list[dict[str, str]]
TextCallback = Callable[[str], None]


class TeacherError(Failed):
    """Generation failed in the backend (message is safe to show to callers)."""


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def batch_key(self) -> tuple:
        """Requests with equal keys may share one batched ``generate`` call."""
        if self.greedy:
            return ("greedy", self.max_new_tokens)
        # A seeded sampled request runs alone so its output is reproducible.
        return ("sample", self.temperature, self.seed if self.seed is not None else object())


@dataclass
class Generation:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass
class TeacherInfo:
    model_id: str
    backend: str
    quantization: str
    quantization_note: str = ""
    device: str = "cpu"
    dtype: str = ""
    parameter_bytes: int = 0
    max_batch_size: int = 1
    decoding: str = "standard"
    extra: dict[str, str] = field(default_factory=dict)


class TeacherBackend(ABC):
    """Generates chat completions; ``generate_batch`` may run several conversations at once."""

    info: TeacherInfo

    @abstractmethod
    def generate_batch(
        self,
        conversations: list[Messages],
        params: GenerationParams,
        on_text: list[TextCallback | None] | None = None,
    ) -> list[Generation]:
        """Generate one reply per conversation; ``on_text[i]`` receives row i's text as it appears."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
