"""Evidence for the channel test: the distinct (context, token) tuples of a suspect's own text.

Two ways to collect them, both key-independent under H0 (the suspect never learnt from text decoded under
the tested key), which is what makes :func:`~tracemark.forensics.channel.score.binomial_p` exact:

* **black-box** (:func:`blackbox_evidence`): sample completions of public held-out prompts from the
  suspect, re-tokenize them with the channel's tokenizer and keep the distinct tuples. Any suspect that
  samples (local model, OpenAI-compatible endpoint, tracemark server).
* **white-box** (:func:`whitebox_evidence`): feed key-independent text to a local suspect and take its
  argmax next token at every position, giving tuples ``(input token, argmax)`` (radioactivity-style
  detection, Sander et al. 2024): every position yields a tuple, so far fewer queries are needed.

The channel's tokenizer is named in the channel spec by fingerprint; re-tokenizing with any other
vocabulary would score ids the green lists were never defined over, so a mismatch is refused
(:class:`ChannelDetectionError`). Sampling seeds come from the investigation's public beacon.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracemark.forensics.channel.score import ChannelTest, score_tuples, tokenize_texts
from tracemark.foundation.channel import (
    ChannelKey,
    ChannelSpec,
    context_of,
    distinct_tuples,
    tokenizer_fingerprint,
)
from tracemark.foundation.errors import InvalidInput

MODES = ("black-box", "white-box")


class ChannelDetectionError(InvalidInput):
    """The channel test cannot be run as asked (tokenizer mismatch, no prompts, black-box suspect in
    white-box mode, ...)."""


def check_tokenizer(spec: ChannelSpec, tokenizer: Any) -> str:
    """The fingerprint of ``tokenizer`` when it is the channel's (``spec.tokenizer``), else
    :class:`ChannelDetectionError`."""
    if not spec.tokenizer:
        raise ChannelDetectionError("the channel spec names no tokenizer: its green lists cannot be scored")
    try:
        mine = tokenizer_fingerprint(tokenizer)
    except AttributeError:
        raise ChannelDetectionError("the channel tokenizer must expose get_vocab()") from None
    if mine != spec.tokenizer:
        raise ChannelDetectionError(
            f"tokenizer fingerprint {mine} is not the channel's {spec.tokenizer}: re-tokenize with the "
            "tokenizer the traces were decoded with"
        )
    return mine


@dataclass
class ChannelEvidence:
    """The distinct tuples collected from one suspect, and how (public figures only)."""

    mode: str
    tuples: set[tuple[int, int]] = field(repr=False)
    texts: int = 0
    tokens: int = 0
    completions: int = 0
    prompts_sha256: str = ""
    tokenizer: str = ""

    @property
    def n(self) -> int:
        return len(self.tuples)

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "distinct_tuples": self.n,
            "texts": self.texts,
            "tokens": self.tokens,
            "completions_sampled": self.completions,
            "prompts_sha256": self.prompts_sha256,
            "tokenizer": self.tokenizer,
        }


def prompts_digest(prompts: Sequence[str]) -> str:
    """SHA-256 over the prompts (each UTF-8, NUL-separated): the registration commits to them."""
    return hashlib.sha256("\x00".join(prompts).encode("utf-8")).hexdigest()


def _seed(beacon: str, index: int) -> int:
    digest = hashlib.sha256(f"{beacon}\x00channel\x00{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _as_prompt(suspect: Any, prompt: str) -> str:
    """The prompt as the suspect is queried: through its chat template when it has one."""
    prefix = getattr(suspect, "chat_prefix", None)
    wrapped = prefix(prompt) if callable(prefix) else None
    return wrapped if wrapped else prompt


def sample_completions(
    suspect: Any,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    beacon: str = "",
) -> list[str]:
    """``samples_per_prompt`` completions of every prompt (seeded from ``beacon``), in prompt order."""
    if not prompts:
        raise ChannelDetectionError("the channel test needs at least one public prompt")
    if samples_per_prompt < 1 or max_new_tokens < 1:
        raise ChannelDetectionError("samples_per_prompt and max_new_tokens must be >= 1")
    texts: list[str] = []
    for i, prompt in enumerate(prompts):
        got = suspect.sample(
            _as_prompt(suspect, prompt),
            n=samples_per_prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=_seed(beacon, i),
            meta={"channel_prompt": i},
        )
        texts.extend(s.text for s in got)
    return texts


def blackbox_evidence(
    texts: Iterable[str], *, spec: ChannelSpec, tokenizer: Any, prompts: Sequence[str] = ()
) -> ChannelEvidence:
    """Distinct tuples of a suspect's sampled ``texts`` re-tokenized with the channel ``tokenizer``
    (checked against ``spec.tokenizer``)."""
    fingerprint = check_tokenizer(spec, tokenizer)
    texts = list(texts)
    rows = tokenize_texts(texts, tokenizer)
    return ChannelEvidence(
        mode="black-box",
        tuples=distinct_tuples(rows, width=spec.context_width),
        texts=len(texts),
        tokens=sum(len(r) for r in rows),
        completions=len(texts),
        prompts_sha256=prompts_digest(list(prompts)),
        tokenizer=fingerprint,
    )


def argmax_tuples(model: Any, rows: Sequence[Sequence[int]], *, width: int = 1, device: str = "cpu") -> set:
    """``{(context_of(input token), argmax next token)}`` at every position of every row (one forward
    pass per row; rows longer than the model's window are cut into windows)."""
    import torch  # deferred: torch only for white-box suspects

    limit = int(getattr(getattr(model, "config", None), "max_position_embeddings", 0) or 2048)
    tuples: set[tuple[int, int]] = set()
    with torch.inference_mode():
        for row in rows:
            ids = [int(t) for t in row]
            for start in range(0, len(ids), limit):
                window = ids[start : start + limit]
                if not window:
                    continue
                x = torch.tensor([window], dtype=torch.long, device=device)
                best = model(input_ids=x).logits[0].argmax(dim=-1).tolist()
                tuples.update((context_of(t, width), int(b)) for t, b in zip(window, best, strict=True))
    return tuples


def whitebox_evidence(
    suspect: Any, texts: Sequence[str], *, spec: ChannelSpec, prompts: Sequence[str] = ()
) -> ChannelEvidence:
    """Tuples ``(input token, the suspect's argmax next token)`` over ``texts``, deduplicated.

    ``texts`` must be independent of every channel key: public prompts and the suspect's *own* sampled
    outputs, never our watermarked traces. Fed a watermarked trace, a model that merely continues its input
    well (any good LM, trained on our outputs or not) predicts the trace's next token, which is green
    because *we* biased it: the argmax tuples would inherit the trace's green excess, the tuple set would
    depend on the key, and the binomial null would no longer hold. With key-independent input, under H0
    the suspect, the text and so the tuple set are all independent of the key.

    The suspect (a local model) must use the channel's vocabulary (``spec.tokenizer``): its argmax is an id
    of its own tokenizer. A student with another tokenizer is tested black-box.
    """
    if not getattr(suspect, "white_box", False):
        raise ChannelDetectionError(f"suspect {getattr(suspect, 'spec', '?')!r} is black-box: no argmax")
    fingerprint = check_tokenizer(spec, suspect.tokenizer)
    texts = [t for t in texts if t]
    if not texts:
        raise ChannelDetectionError("white-box channel test needs at least one non-empty text")
    rows = tokenize_texts(texts, suspect.tokenizer)
    tuples = argmax_tuples(
        suspect.model, rows, width=spec.context_width, device=str(getattr(suspect, "device", "cpu"))
    )
    return ChannelEvidence(
        mode="white-box",
        tuples=tuples,
        texts=len(texts),
        tokens=sum(len(r) for r in rows),
        prompts_sha256=prompts_digest(list(prompts)),
        tokenizer=fingerprint,
    )


def collect_evidence(
    suspect: Any,
    prompts: Sequence[str],
    *,
    spec: ChannelSpec,
    mode: str,
    tokenizer: Any = None,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    beacon: str = "",
) -> ChannelEvidence:
    """Query ``suspect`` on the public ``prompts`` and collect the channel evidence.

    black-box: the sampled completions re-tokenized with ``tokenizer`` (the channel's; default the
    suspect's own when it is a local model). white-box: the suspect's argmax over the prompts followed by
    its own sampled completions (one per prompt and sample).
    """
    if mode not in MODES:
        raise ChannelDetectionError(f"channel mode must be one of {', '.join(MODES)}, got {mode!r}")
    texts = sample_completions(
        suspect,
        prompts,
        samples_per_prompt=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        beacon=beacon,
    )
    if mode == "white-box":
        joined = [p + t for p, t in zip(_repeat(prompts, samples_per_prompt), texts, strict=True)]
        evidence = whitebox_evidence(suspect, joined, spec=spec, prompts=prompts)
        evidence.completions = len(texts)
        return evidence
    if tokenizer is None:
        tokenizer = getattr(suspect, "tokenizer", None) if getattr(suspect, "white_box", False) else None
    if tokenizer is None:
        raise ChannelDetectionError("black-box channel test needs the channel's tokenizer to re-tokenize")
    return blackbox_evidence(texts, spec=spec, tokenizer=tokenizer, prompts=prompts)


def _repeat(prompts: Sequence[str], k: int) -> list[str]:
    return [p for p in prompts for _ in range(k)]


def score_keys(
    evidence: ChannelEvidence, keys: Sequence[ChannelKey], *, spec: ChannelSpec
) -> list[ChannelTest]:
    """One exact binomial test per key on the same distinct tuples (each valid on its own; several keys
    are corrected for by the caller)."""
    return [score_tuples(evidence.tuples, key=key, spec=spec) for key in keys]
