"""Keyed commitments: what reports and the ledger hold instead of texts or plain hashes of them.

Triggers are short (a letter, 2-3 digits and `` =``: 21,780 strings) and targets shorter still, so a plain
SHA-256 of a prompt, a completion, a pair or a decoy set is no secret at all: hashing every candidate
recovers it. Every digest a report or a query row shows is therefore an HMAC-SHA256 under a per-investigation
**commitment key** ``K = HMAC-SHA256(master_v, "tracemark/v1/commitment-key" NUL investigation_id)``
(:meth:`~tracemark.forensics.keys.MasterSecret.commitment_key`). Without ``K`` a commitment reveals nothing;
disclosing ``K`` for one report (``tracemark report commitment-key ID``) lets a court check that report's
commitments against the texts and pairs the operator discloses, and reveals neither the master secret nor
any other report's key (HMAC is one-way and keyed by the investigation id).

``commit(K, label, *parts) = HMAC-SHA256(K, "tracemark-commit/1" NUL label NUL part_1 NUL ... part_n)`` (hex).
"""

from __future__ import annotations

import hmac
from typing import Any

SCHEME = "tracemark-commit/1"
DESCRIPTION = (
    "HMAC-SHA256(K, 'tracemark-commit/1' NUL label NUL part...) hex; K = HMAC-SHA256(master secret v, "
    "'tracemark/v1/commitment-key' NUL investigation_id), disclosed per report to a court on request"
)


def commit(key: bytes, label: str, *parts: str) -> str:
    """The keyed commitment to ``parts`` under ``label`` (hex HMAC-SHA256)."""
    if not isinstance(key, bytes | bytearray) or len(key) < 16:
        raise ValueError("a commitment key must be at least 16 bytes")
    msg = "\x00".join((SCHEME, label, *parts)).encode("utf-8")
    return hmac.new(bytes(key), msg, "sha256").hexdigest()


def prompt_commitment(key: bytes, prompt: str) -> str:
    return commit(key, "query-prompt", prompt)


def response_commitment(key: bytes, response: str) -> str:
    return commit(key, "query-response", response)


def pair_commitment(key: bytes, pair: Any) -> str:
    """Commitment to a signature pair's trigger and target (bound to its public ``pair_id``)."""
    return commit(key, "pair", pair.pair_id, pair.trigger, pair.target)


def decoys_commitment(key: bytes, pair_id: str, decoys_sha256: str) -> str:
    """Commitment to a pair's decoy set (whose plain hash would tell which candidates the target is not)."""
    return commit(key, "decoys", pair_id, decoys_sha256)
