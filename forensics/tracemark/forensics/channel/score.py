"""Exact binomial tests of the distributional channel on a suspect's text.

Under H0 (the suspect never learnt from text decoded under the key) every distinct (context, token)
tuple of its text is green with probability ``gamma`` independently, over the randomness of the key, so
the number of green tuples among ``n`` distinct ones is Binomial(n, gamma) and
``p = P(Binomial(n, gamma) >= green)`` is exact, whatever the suspect, the prompts or the sample size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom
from tracemark.foundation.channel import (
    ChannelKey,
    ChannelSpec,
    GreenLists,
    count_green,
    distinct_tuples,
)


@dataclass(frozen=True)
class ChannelTest:
    """One key's test: ``green`` of ``n`` distinct tuples, and its exact one-sided p-value."""

    key_label: str
    n: int
    green: int
    gamma: float
    p_value: float

    @property
    def fraction(self) -> float:
        return self.green / self.n if self.n else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "fraction": self.fraction}


def binomial_p(green: int, n: int, gamma: float) -> float:
    """``P(X >= green)`` for ``X ~ Binomial(n, gamma)`` (1.0 when ``n == 0``)."""
    if n <= 0 or green <= 0:
        return 1.0
    return float(binom.sf(green - 1, n, gamma))


def score_tuples(tuples: Iterable[tuple[int, int]], *, key: ChannelKey, spec: ChannelSpec) -> ChannelTest:
    """Test distinct ``(context, token)`` tuples against ``key``."""
    count = count_green(GreenLists(key, spec.gamma), tuples)
    return ChannelTest(
        key_label=key.label,
        n=count.n,
        green=count.green,
        gamma=spec.gamma,
        p_value=binomial_p(count.green, count.n, spec.gamma),
    )


def score_token_rows(rows: Iterable[Sequence[int]], *, key: ChannelKey, spec: ChannelSpec) -> ChannelTest:
    """Test token-id sequences (already in the channel's vocabulary) against ``key``."""
    return score_tuples(distinct_tuples(rows, width=spec.context_width), key=key, spec=spec)


def tokenize_texts(texts: Iterable[str], tokenizer) -> list[list[int]]:
    """Re-tokenize a suspect's texts with the channel's tokenizer (no special tokens)."""
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts if t]


def score_texts(texts: Iterable[str], *, key: ChannelKey, spec: ChannelSpec, tokenizer) -> ChannelTest:
    """Test a suspect's texts (any model, any tokenizer: re-tokenized here) against ``key``."""
    return score_token_rows(tokenize_texts(texts, tokenizer), key=key, spec=spec)


def binomial_log10_p(green: int, n: int, gamma: float) -> float:
    """``log10 P(X >= green)`` for ``X ~ Binomial(n, gamma)``, exact below the float range too (a
    log-sum of the tail's log-pmf terms when ``sf`` underflows)."""
    p = binomial_p(green, n, gamma)
    if p > 1e-290:
        return math.log10(p)
    from scipy.special import logsumexp  # deferred: only for extreme tails

    k = np.arange(green, n + 1)
    return float(logsumexp(binom.logpmf(k, n, gamma)) / math.log(10.0))
