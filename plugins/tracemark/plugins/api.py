"""The rewriter plugin API: what a third-party rewriter implements.

A rewriter is a class deriving from :class:`Rewriter`, registered under the entry-point group
``tracemark.rewriters``. It receives a reasoning trace and a :class:`RewriteContext` and returns the
rewritten trace. The answer guard, time limits and fallbacks are applied by tracemark around it.

What the host hands a rewriter besides the trace is typed: :class:`LLMBackend` (``context.llm``),
:class:`SignatureService` (``context.signatures``), :class:`WatermarkPolicy` (``context.watermark_policy``)
and the proxy student (``context.proxy``). Any object with the right methods satisfies a Protocol; the
forensics ``SignatureIssuer`` is one such signature service (this package never imports it).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # the proxy module imports torch; the API must stay light
    from tracemark.plugins.proxy import ProxyStudent

API_VERSION = "1.0"
"""Plugin API version (major.minor). A plugin declaring the same major version is compatible."""

ENTRY_POINT_GROUP = "tracemark.rewriters"


@runtime_checkable
class LLMBackend(Protocol):
    """A chat-capable language model a rewriter may call (local teacher or OpenAI-compatible endpoint)."""

    model_id: str

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> str:
        """Return the assistant's reply to ``messages`` (OpenAI-style role/content dicts)."""
        ...


class WatermarkPair(Protocol):
    """One keyed signature pair as a rewriter sees it (e.g. forensics' ``SignaturePair``)."""

    @property
    def pair_id(self) -> str:
        """Public id of the pair (what the ledger records; reveals nothing keyed)."""
        ...

    @property
    def text(self) -> str:
        """The pair as it is written into a trace, e.g. ``"x137 = 4821"`` (secret)."""
        ...


@runtime_checkable
class SignatureService(Protocol):
    """Hands out an account's signature pairs and records the ones delivered in a trace."""

    def pairs_for(self, account: str) -> Sequence[WatermarkPair]:
        """The account's current pairs (created on first use)."""
        ...

    def record_issue(self, *, account: str, trace_id: str, pair: Any, rewriter: str) -> None:
        """Record that ``pair`` (one of the objects :meth:`pairs_for` returned) went out in ``trace_id``."""
        ...


@runtime_checkable
class IssueCounts(Protocol):
    """Optional extra of a :class:`SignatureService`: how often each pair was issued so far."""

    def issued_counts(self, account: str) -> Mapping[str, int]:
        """``{pair_id: times issued}`` for ``account``."""
        ...


@dataclass(frozen=True)
class WatermarkPolicy:
    """The host's watermark settings; they override a request's ``watermark`` options, so a caller
    cannot lower its own ``fraction``. ``mode`` is how pairs are woven: ``"template"`` (the default: keyed
    template, microseconds, no model) or ``"llm"`` (the host's LLM, for every trace signed or not)."""

    fraction: float
    mode: Literal["template", "llm"] = "template"


class RewriterError(Exception):
    """Raised by a rewriter that cannot rewrite this trace (reported, then the guard falls back)."""


class NoOptions(BaseModel):
    """Options model for rewriters that take none."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class RewriteContext:
    """Everything a rewriter may use besides the trace itself."""

    problem: str = ""
    account: str | None = None
    trace_id: str = ""
    rng: random.Random = field(default_factory=random.Random)
    llm: LLMBackend | None = None
    # Host services (None when the host has none); shared by every attempt's copy of the context.
    signatures: SignatureService | None = None  # the signature pairs and ledger `watermark` uses
    watermark_policy: WatermarkPolicy | None = None  # host overrides of the `watermark` options
    proxy: ProxyStudent | None = None  # a loaded proxy student for `hotflip` / `embedding-ascent`
    # Attempt number (0 first); a rewriter may vary its behaviour on retries.
    attempt: int = 0
    # Short public notes a rewriter leaves for the step's ``detail`` (returned to the caller: no secrets).
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        """Add a short caller-visible note to this step's result (never put secrets here)."""
        self.notes.append(text)

    def for_attempt(self, attempt: int, *, seed: int) -> RewriteContext:
        """A copy for one attempt of one step: own RNG (seeded), own notes, shared host services."""
        return replace(self, attempt=attempt, rng=random.Random(seed), notes=[])


class Rewriter(ABC):
    """Base class of every rewriter plugin.

    Subclasses set ``name`` (unique), ``api_version`` (compatible with :data:`API_VERSION`), optionally
    ``Options`` (a pydantic model; its JSON schema is published by ``ListRewriters``) and
    ``description``, and implement :meth:`rewrite`.
    """

    name: ClassVar[str] = ""
    api_version: ClassVar[str] = API_VERSION
    description: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    # True when the rewriter needs an LLM backend in the context.
    requires_llm: ClassVar[bool] = False
    # True when no other rewriter may run after this one (e.g. ``watermark``: a later rewrite could
    # remove the embedded signature). The pipeline rejects specifications that violate it.
    must_be_last: ClassVar[bool] = False
    # Options a host's policy decides (e.g. ``watermark``'s ``fraction``): a server refuses a request that
    # sets one to anything but the policy's value, and marks them read-only in the published schema.
    host_owned_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def parse_options(cls, raw: dict[str, Any] | None) -> BaseModel:
        """Validate raw options (raises ``pydantic.ValidationError`` on bad input)."""
        return cls.Options.model_validate(raw or {})

    @classmethod
    def options_schema(cls) -> dict[str, Any]:
        return cls.Options.model_json_schema()

    @abstractmethod
    def rewrite(self, trace: str, context: RewriteContext) -> str:
        """Return the rewritten trace. Must keep the final answer; raise RewriterError to give up.

        May run in a worker thread that the host abandons after its time limit; keep state on
        ``self`` (one instance per pipeline run) or in ``context``, never in globals.
        """

    def accepted(self, trace: str, context: RewriteContext) -> None:
        """Called by the host, in its own thread, once the answer guard accepted ``trace`` (this
        rewriter's output) for delivery. Side effects that must only happen for delivered traces
        (e.g. recording an issued signature) belong here; raising makes the step fall back."""
        return None

    def fallback(self, trace: str, context: RewriteContext) -> str:
        """The protected result the host delivers when this step failed (raised, timed out, was taken out
        of service or changed the answer on every attempt); by default ``trace``, the step's input.

        A protective rewriter (``watermark``) overrides it with a fast, model-free version of its work.
        Runs in the host's thread, only for built-ins and in-process registrations; the answer guard and
        :meth:`accepted` follow it. Raise :class:`RewriterError` when there is nothing to protect with."""
        return trace
