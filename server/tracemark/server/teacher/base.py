"""The teacher interface shared by local, embedded and remote backends."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tracemark.foundation.channel import ChannelSpec, GreenLists
from tracemark.foundation.errors import Failed

Messages = list[dict[str, str]]
TextCallback = Callable[[str], None]
# One batch row's distributional-channel keys: ``[(green_lists, delta), ...]`` (``None``: no bias).
RowChannel = Sequence[tuple[GreenLists, float]] | None


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
        # A seeded sampled request runs alone so its output is reproducible; unseeded ones at the same
        # temperature share a batch (each row still samples independently).
        return ("sample", self.temperature) if self.seed is None else ("seeded", object())


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


def describe_channel(spec: ChannelSpec) -> str:
    """The public description of a channel in effect (never a key)."""
    return (
        f"channel(gamma={spec.gamma:g}, provider_delta={spec.provider_delta:g}, "
        f"account_delta={spec.account_delta:g}, width={spec.context_width}, tokenizer={spec.tokenizer})"
    )


class TeacherBackend(ABC):
    """Generates chat completions; ``generate_batch`` may run several conversations at once."""

    info: TeacherInfo

    @abstractmethod
    def generate_batch(
        self,
        conversations: list[Messages],
        params: GenerationParams,
        on_text: list[TextCallback | None] | None = None,
        channels: Sequence[RowChannel] | None = None,
    ) -> list[Generation]:
        """Generate one reply per conversation; ``on_text[i]`` receives row i's text as it appears and
        ``channels[i]`` (if given) is row i's distributional-channel keys (backends that cannot bias
        decoding ignore it; see :meth:`configure_channel`)."""

    def configure_channel(self, spec: ChannelSpec) -> ChannelSpec | None:
        """Prepare to carry the distributional channel described by ``spec``; return the spec in effect
        (tokenizer fingerprint and context width filled in by the backend), or ``None`` when this backend
        cannot bias its decoding (its ``info.extra["channel"]`` says why)."""
        self.info.extra["channel"] = "unavailable: this backend cannot bias its decoding"
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
