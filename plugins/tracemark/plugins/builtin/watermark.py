"""``watermark``: weave one of the caller account's keyed signature pairs (e.g. ``x137 = 4821``) into a
fraction of that account's traces (docs/detection.md).

Needs ``context.signatures``: a :class:`~tracemark.plugins.api.SignatureService` (``pairs_for(account)``
and ``record_issue(*, account, trace_id, pair, rewriter)``; the server passes its forensics
``SignatureIssuer``); ``issued_counts(account) -> {pair_id: n}`` (:class:`~tracemark.plugins.api.IssueCounts`)
is used when present.

* **Which traces** carry a pair: those whose keyed hash ``HMAC(k, trace_id)`` falls below ``fraction``.
  ``k`` is derived from the account's secret pairs, so the decision is reproducible from the trace id by
  whoever holds the master secret, yet a caller cannot predict it or steer it (``context.rng`` is seeded
  from the request, which a caller could vary until the watermark disappears).
* **Which pair**: ``selection="balanced"`` gives the pair issued least often so far (exact equal exposure,
  from the ledger's counts; ties by keyed hash), ``"keyed"`` a keyed pick (uniform, stateless).
* **Where and how**: ``mode="template"`` (the default; ``"auto"`` is the same unless the host's policy
  says ``llm``) writes the pair at a keyed place and in a keyed phrasing built from the trace's own words
  (:mod:`~tracemark.plugins.builtin.weave`): no fixed label, no fixed line, never on or after the final
  answer line, never changing a number. ``mode="llm"`` asks ``context.llm`` to integrate the exact pair
  text naturally and accepts the result only if the text is present verbatim, every number of the input
  survives, the final line is unchanged and the answer matches; otherwise the template is used.
* **Same work for every trace**: the pair is chosen and woven for every trace of an account, signed or
  not (an LLM weave costs one LLM call per trace in ``llm`` mode); unselected traces discard the weave, so
  response time does not tell which traces carry a pair (only the ledger write of a delivered pair is
  extra: ``accepted`` keeps an unselected trace busy for a recent write's duration instead).
* **Never silently off**: an LLM that raises or whose weave fails the checks makes the step use the
  template itself; when the step fails anyway (e.g. the LLM hangs past the step's time limit), the
  pipeline delivers :meth:`WatermarkRewriter.fallback`, the template weave of the same pair.
* **Recording**: the pair is recorded with ``record_issue`` only once the pipeline's answer guard has
  accepted the woven trace (``Rewriter.accepted``), so the ledger lists exactly the delivered pairs.
* **Secrecy**: the step's public detail never says whether this trace was signed; only an anonymous
  caller is told that no watermark applies.
* **Host policy**: ``context.watermark_policy`` (a :class:`~tracemark.plugins.api.WatermarkPolicy` set by
  the server) overrides the request's options, so callers cannot lower ``fraction`` for themselves nor
  make the server call its LLM (``mode``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import re
import statistics
import threading
import time
from collections import Counter, deque
from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from tracemark.plugins.answers import answers_match, extract_final_answer
from tracemark.plugins.api import (
    IssueCounts,
    RewriteContext,
    Rewriter,
    RewriterError,
    SignatureService,
    WatermarkPair,
)
from tracemark.plugins.builtin.llm_base import strip_preamble
from tracemark.plugins.builtin.weave import weave_keyed

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"\d+(?:\.\d+)?")

LLM_WEAVE_INSTRUCTION = (
    "You edit worked math solutions. Insert the given definition into the solution at a natural place near "
    "the beginning, as an auxiliary quantity. Write the definition exactly as given, character for "
    "character. Do not change, remove or reorder anything else: every number, equation and the final line "
    "stay exactly as they are. Reply with the edited solution only."
)


class WatermarkOptions(BaseModel):
    """Options of ``watermark``."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="share of an account's traces that carry a pair; a server sets it by policy "
        "(a request may not change it there)",
    )
    mode: Literal["template", "llm", "auto"] = Field(
        "auto",
        description="template | llm | auto (= template; a server's policy decides, setting watermark_weave)",
    )
    selection: Literal["balanced", "keyed"] = Field(
        "balanced", description="balanced: least-issued pair first; keyed: keyed hash of the trace id"
    )
    max_new_tokens: int = Field(768, ge=16, le=8192, description="length limit of an LLM-woven trace")


class _WriteTimes:
    """Recent durations of ledger writes (``record_issue``), shared by the process's watermark steps, so an
    unselected trace can stay busy as long as a signed one's write took (a random recent duration).

    The busy wait is measured too: a wait that started while the machine is busy ends late (the thread
    is rescheduled after its deadline), on top of the delays already in the sampled write time, so the
    mean of recent overruns is taken off each wait."""

    def __init__(self, size: int = 64) -> None:
        self._times: deque[float] = deque(maxlen=size)
        self._overruns: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._times.append(seconds)

    def wait(self, rng: random.Random) -> None:
        """Stay busy for a random recent write duration (nothing before the first write)."""
        with self._lock:
            if not self._times:
                return
            target = rng.choice(self._times)
            overrun = statistics.fmean(self._overruns) if self._overruns else 0.0
        deadline = time.perf_counter() + max(0.0, target - overrun)
        while time.perf_counter() < deadline:
            pass  # busy like a write (mostly interpreter work; the GIL is handed on as during a write)
        with self._lock:
            self._overruns.append(time.perf_counter() - deadline)


WRITE_TIMES = _WriteTimes()


def _selection_key(pairs: list[Any]) -> bytes:
    """A per-account secret: hash of the account's (secret) pair texts; nothing of it is ever revealed."""
    h = hashlib.sha256(b"tracemark-watermark-selection-v1")
    for pair in sorted(pairs, key=lambda p: p.pair_id):
        h.update(f"\x00{pair.pair_id}\x00{pair.text}".encode())
    return h.digest()


def _unit(key: bytes, label: str, trace_id: str) -> float:
    digest = hmac.new(key, f"{label}\x00{trace_id}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_selected(pairs: list[Any], trace_id: str, fraction: float) -> bool:
    """Whether the trace ``trace_id`` of the account owning ``pairs`` carries a pair at ``fraction``."""
    if fraction <= 0.0 or not pairs:
        return False
    return fraction >= 1.0 or _unit(_selection_key(pairs), "select", trace_id) < fraction


def _final_line(trace: str) -> str:
    lines = [line for line in trace.rstrip().split("\n") if line.strip()]
    return lines[-1].strip() if lines else ""


def weave_template(trace: str, text: str, *, variant: int | bytes | str = 0, problem: str = "") -> str:
    """``trace`` with the pair ``text`` at a place and in a phrasing chosen by ``variant`` (a seed; the
    watermark passes a keyed one), never on or after the final answer line (:func:`weave.weave_keyed`)."""
    return weave_keyed(trace, text, variant, problem=problem)


def _numbers(text: str) -> Counter[str]:
    return Counter(_NUMBER.findall(text.replace(",", "")))


def llm_weave_ok(original: str, woven: str, text: str) -> str:
    """Why an LLM-woven trace is unacceptable ('' when it is acceptable)."""
    if text not in woven:
        return "pair text missing"
    if not answers_match(extract_final_answer(original), extract_final_answer(woven)) and (
        extract_final_answer(original) is not None
    ):
        return "answer changed"
    if _final_line(original) != _final_line(woven):
        return "final line changed"
    missing = _numbers(original) - _numbers(woven)
    if missing:
        return "numbers changed"
    if len(woven) > 2 * len(original) + 4 * len(text) + 200:
        return "rewrite too long"
    return ""


class WatermarkRewriter(Rewriter):
    name = "watermark"
    description = (
        "Weaves one of the caller account's keyed signature pairs into a configurable fraction of its "
        "traces (LLM-woven or by a deterministic template); every issued pair is recorded in the ledger."
    )
    Options = WatermarkOptions
    must_be_last = True
    host_owned_options = frozenset({"fraction", "mode"})

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__(options)
        self._pending: dict[str, tuple[WatermarkPair, str]] = {}
        self._unsigned: set[str] = set()  # outputs of an account's unselected traces (same work, no pair)

    def _effective(self, context: RewriteContext) -> WatermarkOptions:
        opts: WatermarkOptions = self.options  # type: ignore[assignment]
        policy = context.watermark_policy
        if policy is not None:
            owned = {k: v for k, v in asdict(policy).items() if k in WatermarkOptions.model_fields}
            opts = WatermarkOptions.model_validate({**opts.model_dump(), **owned})
        return opts

    def _choose(
        self,
        pairs: list[WatermarkPair],
        issuer: SignatureService,
        context: RewriteContext,
        opts: WatermarkOptions,
    ) -> WatermarkPair:
        key = _selection_key(pairs)

        def tie(pair: Any) -> float:
            return _unit(key, f"pair\x00{pair.pair_id}", context.trace_id)

        if opts.selection == "balanced" and isinstance(issuer, IssueCounts):
            try:
                counts = issuer.issued_counts(context.account)
                return min(pairs, key=lambda p: (counts.get(p.pair_id, 0), tie(p)))
            except Exception as exc:  # ledger unavailable for counting: a keyed pick still works
                log.warning("watermark: issued_counts failed (%s); using a keyed pick", type(exc).__name__)
        index = int(_unit(key, "pick", context.trace_id) * len(pairs)) % len(pairs)
        return pairs[index]

    def _weave_llm(
        self, trace: str, text: str, context: RewriteContext, opts: WatermarkOptions
    ) -> str | None:
        messages = [
            {"role": "system", "content": LLM_WEAVE_INSTRUCTION},
            {"role": "user", "content": f"Definition to insert: {text}\n\nSolution:\n{trace.strip()}"},
        ]
        try:
            reply = context.llm.chat(  # type: ignore[union-attr]
                messages,
                max_new_tokens=opts.max_new_tokens,
                temperature=0.0 if context.attempt == 0 else 0.7,
                seed=context.rng.randrange(2**31),
            )
        except Exception as exc:
            log.info("watermark: LLM weave failed (%s); using the template", type(exc).__name__)
            return None
        woven = strip_preamble(reply or "")
        why = llm_weave_ok(trace, woven, text)
        if why:
            log.debug("watermark: LLM weave rejected (%s); using the template", why)
            return None
        return woven

    def _sign(self, trace: str, context: RewriteContext, *, template_only: bool) -> str:
        """Choose and weave a pair for every trace (same work signed or not); keep it only when selected."""
        opts = self._effective(context)
        if not context.account:
            context.note("anonymous caller: no watermark")
            return trace
        issuer = context.signatures
        if issuer is None:
            raise RewriterError("watermark needs a signature issuer (context.signatures); none is configured")
        pairs = list(issuer.pairs_for(context.account))
        if not pairs:
            raise RewriterError("the signature issuer returned no pairs for this account")
        if not context.trace_id:
            raise RewriterError("watermark needs a trace id in the context")
        selected = is_selected(pairs, context.trace_id, opts.fraction)
        original = extract_final_answer(trace)
        pair = self._choose(pairs, issuer, context, opts)
        use_llm = opts.mode == "llm" and not template_only
        if use_llm and context.llm is None:
            raise RewriterError("watermark mode 'llm' needs an LLM backend and none is configured")
        woven = self._weave_llm(trace, pair.text, context, opts) if use_llm else None
        how = "llm" if woven is not None else "template"
        if woven is None:
            seed = hmac.new(_selection_key(pairs), f"weave\x00{context.trace_id}".encode(), "sha256").digest()
            woven = weave_template(trace, pair.text, variant=seed, problem=context.problem)
            if original is not None and not answers_match(original, extract_final_answer(woven)):
                woven = pair.text + "\n" + trace  # cannot happen for well-formed traces; stay safe
        if not selected or original is None:  # an answerless trace: the pair's target would be its answer
            self._unsigned.add(trace)
            return trace
        self._pending[woven] = (pair, how)
        log.debug("watermark: trace %s woven (%s)", context.trace_id, how)
        return woven

    def rewrite(self, trace: str, context: RewriteContext) -> str:
        return self._sign(trace, context, template_only=False)

    def fallback(self, trace: str, context: RewriteContext) -> str:
        """The template weave of the same pair (the step failed: e.g. its LLM raised or hung)."""
        return self._sign(trace, context, template_only=True)

    def accepted(self, trace: str, context: RewriteContext) -> None:
        """Record a delivered pair; an unsigned trace of an account waits as long as a recent record took."""
        issued = self._pending.pop(trace, None)
        if issued is None:
            if trace in self._unsigned:
                self._unsigned.discard(trace)
                WRITE_TIMES.wait(context.rng)
            return
        pair, how = issued
        assert context.signatures is not None  # rewrite() refused to run without one
        started = time.perf_counter()
        context.signatures.record_issue(
            account=context.account, trace_id=context.trace_id, pair=pair, rewriter=f"watermark/{how}"
        )
        WRITE_TIMES.add(time.perf_counter() - started)
