"""The signature scheme: every parameter of the test that is fixed when pairs are issued, not when a suspect
is investigated.

An investigator who may choose the number of pairs, the candidate space or the scoring prompts after
looking at a suspect can search for a choice that convicts. tracemark therefore records the scheme in the
transparency log with each account key commitment (at the account's first issuance under a key version),
and an investigation reads it from there: none of these is a command-line flag.

* ``derivation`` (``tm-sig-v2``: targets are never drawn from the salient set), ``digits`` (the candidate
  space ``10**digits``; 6 by default) and ``pairs_per_account``;
* ``contexts``, ``problem`` and ``combine``: the public scoring prompts (``{chat}`` and ``{trigger}``
  placeholders) and how white-box scores combine over them;
* ``salient``: the public salient-set rules (:mod:`~tracemark.forensics.salient`);
* ``search_budget``: the most digit-trie prefixes the exact white-box search keeps at one level; beyond it
  the pair's p-value is reported as 1 (censored: always conservative);
* ``merged_digit_decoys``: how many decoys a target is ranked among when the suspect's tokenizer merges
  digits (when the space is larger than :data:`FULL_SCORE_MAX`; smaller spaces are scored in full);
* ``channel``: the distributional channel's public parameters
  (:class:`~tracemark.foundation.channel.ChannelSpec`) when traces are decoded with it, else ``None``.
  Written only when set, so schemes logged before the channel existed keep their form and digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tracemark.forensics.salient import SALIENT_VERSION, SalientSet, context_numbers, salient_set
from tracemark.forensics.scoring import DEFAULT_CONTEXTS, DEFAULT_PROBLEM
from tracemark.forensics.signatures import (
    DERIVATION_V2,
    DERIVATION_VERSION,
    MAX_PAIRS,
    CandidateSpace,
    SignatureError,
    SignaturePair,
    derive_pairs,
)
from tracemark.foundation.channel import ChannelError, ChannelSpec

SCHEME_FORMAT = "tracemark-scheme/1"
DEFAULT_DIGITS = 6
MAX_DIGITS = 7
"""The salient set and the exact trie search enumerate the space: 10^7 candidates is the practical limit."""
DEFAULT_SEARCH_BUDGET = 4096
DEFAULT_MERGED_DECOYS = 9999
FULL_SCORE_MAX = 10_000
"""Spaces up to this size are scored in full for tokenizers that merge digits (no decoys)."""


class SchemeError(SignatureError):
    """An invalid signature scheme (bad digits, contexts without ``{trigger}``, unknown version, ...)."""


@dataclass(frozen=True)
class SignatureScheme:
    """The issuance-time parameters of a key version's signature pairs (see the module doc)."""

    digits: int = DEFAULT_DIGITS
    pairs_per_account: int = 2
    contexts: tuple[str, ...] = DEFAULT_CONTEXTS
    problem: str = DEFAULT_PROBLEM
    combine: str = "max"
    derivation: str = DERIVATION_V2
    salient: str = SALIENT_VERSION
    search_budget: int = DEFAULT_SEARCH_BUDGET
    merged_digit_decoys: int = DEFAULT_MERGED_DECOYS
    channel: ChannelSpec | None = None
    _numbers: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.digits, int) or not 1 <= self.digits <= MAX_DIGITS:
            raise SchemeError(f"digits must be an integer in 1..{MAX_DIGITS}, got {self.digits!r}")
        if not isinstance(self.pairs_per_account, int) or not 1 <= self.pairs_per_account <= MAX_PAIRS:
            raise SchemeError(f"pairs_per_account must be in 1..{MAX_PAIRS}, got {self.pairs_per_account!r}")
        contexts = tuple(self.contexts)
        if not contexts or any(not isinstance(c, str) or "{trigger}" not in c for c in contexts):
            raise SchemeError("every scoring context must be a string containing '{trigger}'")
        if not isinstance(self.problem, str) or not self.problem.strip():
            raise SchemeError("the scoring problem must be a non-empty string")
        if self.combine not in ("max", "mean"):
            raise SchemeError(f"combine must be 'max' or 'mean', got {self.combine!r}")
        if self.derivation not in (DERIVATION_VERSION, DERIVATION_V2):
            raise SchemeError(f"unknown derivation {self.derivation!r}")
        if self.salient not in (SALIENT_VERSION, "none"):
            raise SchemeError(f"unknown salient-set rules {self.salient!r}")
        if self.derivation == DERIVATION_V2 and self.salient == "none":
            raise SchemeError(f"derivation {DERIVATION_V2} needs the salient set")
        if not isinstance(self.search_budget, int) or self.search_budget < 10:
            raise SchemeError(f"search_budget must be an integer >= 10, got {self.search_budget!r}")
        space_size = 10**self.digits
        if not isinstance(self.merged_digit_decoys, int) or not 1 <= self.merged_digit_decoys < space_size:
            raise SchemeError(f"merged_digit_decoys must be in 1..{space_size - 1}")
        if self.channel is not None and not isinstance(self.channel, ChannelSpec):
            raise SchemeError("channel must be a ChannelSpec or None")
        object.__setattr__(self, "contexts", contexts)
        object.__setattr__(self, "_numbers", context_numbers(contexts, self.problem))

    @property
    def space(self) -> CandidateSpace:
        return CandidateSpace(self.digits)

    def salient_for(self, trigger: str) -> SalientSet | None:
        """The salient set of ``trigger`` (``None`` for the legacy scheme without one)."""
        if self.salient == "none":
            return None
        return salient_set(self.digits, trigger=trigger, numbers=self._numbers)

    def derive(self, account_key: bytes, *, account: str, key_version: int) -> list[SignaturePair]:
        """``account``'s pairs under this scheme (targets outside the trigger's salient set for v2)."""
        exclude = self.salient_for if self.derivation == DERIVATION_V2 else None
        return derive_pairs(
            account_key,
            account=account,
            key_version=key_version,
            m=self.pairs_per_account,
            space=self.space,
            derivation=self.derivation,
            exclude=exclude,
        )

    def as_dict(self) -> dict[str, Any]:
        """The public, canonical form written to the transparency log."""
        out = {
            "format": SCHEME_FORMAT,
            "derivation": self.derivation,
            "digits": self.digits,
            "pairs_per_account": self.pairs_per_account,
            "contexts": list(self.contexts),
            "problem": self.problem,
            "combine": self.combine,
            "salient": self.salient,
            "search_budget": self.search_budget,
            "merged_digit_decoys": self.merged_digit_decoys,
        }
        if self.channel is not None:
            out["channel"] = self.channel.as_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignatureScheme:
        """Parse :meth:`as_dict` output (as read back from the log); :class:`SchemeError` if malformed."""
        if not isinstance(data, Mapping) or data.get("format") != SCHEME_FORMAT:
            raise SchemeError(f"not a {SCHEME_FORMAT} scheme")
        try:
            raw_channel = data.get("channel")
            if raw_channel is not None and not isinstance(raw_channel, Mapping):
                raise SchemeError("malformed scheme: channel is not an object")
            channel = ChannelSpec.from_dict(dict(raw_channel)) if raw_channel is not None else None
            return cls(
                digits=data["digits"],
                pairs_per_account=data["pairs_per_account"],
                contexts=tuple(data["contexts"]),
                problem=data["problem"],
                combine=data["combine"],
                derivation=data["derivation"],
                salient=data["salient"],
                search_budget=data["search_budget"],
                merged_digit_decoys=data["merged_digit_decoys"],
                channel=channel,
            )
        except (KeyError, TypeError, ChannelError) as exc:
            raise SchemeError(f"malformed scheme: {exc}") from None

    def digest(self) -> str:
        """SHA-256 of the canonical form (groups pairs scored under the same scheme)."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()
