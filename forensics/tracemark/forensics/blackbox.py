"""Black-box ranks of signature targets, from sampled completions only.

Score: the number of times a candidate is the completion (leading digits) among ``n`` samples after the
trigger, then the log-probability the suspect returned for that completion (when it returns logprobs).
Candidates never sampled share a score. Ranks count ties against the target (``rank = 1 + better + tied``
among the trigger's eligible candidates), so a target that was never sampled gets ``p ~ 1``; no seed can
move a rank. Sampling seeds (for suspects that accept one) come from the investigation's public beacon.
Prompts and contexts are those of :mod:`tracemark.forensics.scoring`.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tracemark.forensics import stats
from tracemark.forensics.scoring import (
    DEFAULT_CONTEXTS,
    DEFAULT_PROBLEM,
    PairScore,
    PromptScorer,
    ScoringError,
    beacon_rng,
    candidates_sha256,
)
from tracemark.forensics.signatures import CandidateSpace, SignaturePair

_LEADING = re.compile(r"^\s*(\d+)")


def parse_completion(text: str, trigger: str, space: CandidateSpace) -> str | None:
    """The candidate a completion names: its leading digits (after optional spaces), or the digits right
    after an echoed trigger (chat models often repeat it). ``None`` unless exactly ``digits`` digits."""
    m = _LEADING.match(text)
    if m is None:
        m = re.search(re.escape(trigger) + r"\s*(\d+)", text)
    if m is None:
        return None
    run = m.group(1)
    return run if space.contains(run) else None


def _sample_logprob(sample: Any, candidate: str) -> float | None:
    """Returned log-probability of the tokens that spell the completion up to the candidate's last digit."""
    if not sample.tokens or not sample.token_logprobs:
        return None
    text = sample.text
    end = text.find(candidate)
    if end < 0:
        return None
    end += len(candidate)
    total, pos = 0.0, 0
    for tok, lp in zip(sample.tokens, sample.token_logprobs, strict=False):
        if pos >= end:
            break
        total += lp
        pos += len(tok)
    return total if math.isfinite(total) else None


class BlackBoxScorer(PromptScorer):
    """Ranks from sampled completions (any suspect with ``sample``)."""

    def __init__(
        self,
        suspect: Any,
        space: CandidateSpace,
        *,
        contexts: Sequence[str] = DEFAULT_CONTEXTS,
        problem: str = DEFAULT_PROBLEM,
        temperature: float = 1.0,
        max_new_tokens: int | None = None,
        salient: Any = None,
    ) -> None:
        super().__init__(suspect, space, contexts=contexts, problem=problem, salient=salient)
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens or space.digits + 3

    def score_pair(
        self, pair: SignaturePair, *, n_samples: int, beacon: str = "", decoys: int | None = None
    ) -> PairScore:
        """Sample ``n_samples`` completions after the trigger (spread over the contexts in turn); rank the
        target by its count among them (sampling seeds and decoys from the public ``beacon``)."""
        if n_samples < 1:
            raise ScoringError("n_samples must be >= 1")
        start = time.perf_counter()
        eligible = self.eligible(pair)
        prompts = self.prompts(pair.trigger)
        share = [
            n_samples // len(prompts) + (1 if k < n_samples % len(prompts) else 0)
            for k in range(len(prompts))
        ]
        if self.temperature <= 0:  # greedy: one completion per context says it all
            share = [min(1, n_k) for n_k in share]
        samples = []
        for k, (prompt, n_k) in enumerate(zip(prompts, share, strict=True)):
            if n_k == 0:
                continue
            digest = hashlib.sha256(f"{beacon}\x00{pair.pair_id}\x00sample\x00{k}".encode()).digest()
            samples.extend(
                self.suspect.sample(
                    prompt,
                    n=n_k,
                    max_new_tokens=self.max_new_tokens,
                    temperature=self.temperature,
                    seed=int.from_bytes(digest[:4], "big"),
                    meta={"pair_id": pair.pair_id, "account": pair.account, "context": k},
                )
            )
        counts: Counter[str] = Counter()
        logprobs: dict[str, list[float]] = {}
        for s in samples:
            c = parse_completion(s.text, pair.trigger, self.space)
            if c is None:
                continue
            counts[c] += 1
            lp = _sample_logprob(s, c)
            if lp is not None:
                logprobs.setdefault(c, []).append(lp)

        def key(c: str) -> tuple[int, float]:
            lps = logprobs.get(c)
            return counts.get(c, 0), (max(lps) if lps else -math.inf)

        target_key = key(pair.target)
        extra: dict[str, Any] = {"distinct_completions": len(counts), "parsed": sum(counts.values())}
        if decoys is None:
            n = eligible.n
            sampled = [c for c in counts if eligible.contains(c) and c != pair.target]
            better = sum(1 for c in sampled if key(c) > target_key)
            tied = sum(1 for c in sampled if key(c) == target_key)
            if target_key == (0, -math.inf):  # never sampled: tied with every other never-sampled candidate
                tied = n - 1 - len(sampled)
            method = "samples"
        else:
            others = eligible.sample_others(beacon_rng(beacon, pair, "decoys"), decoys, pair.target)
            keys = [key(c) for c in others]
            better = sum(1 for k in keys if k > target_key)
            tied = sum(1 for k in keys if k == target_key)
            n = decoys + 1
            method = "samples-decoys"
            extra["decoys_sha256"] = candidates_sha256(sorted(others))
        rank = stats.conservative_rank(better, tied)
        return PairScore.ranked(
            pair,
            mode="black-box",
            method=method,
            n=n,
            rank=rank,
            n_better=better,
            n_tied=tied,
            target_score=None,
            samples=n_samples,
            target_count=counts.get(pair.target, 0),
            seconds=time.perf_counter() - start,
            extra=extra,
        )
