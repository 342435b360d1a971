"""Verify the transparency log offline: pure functions over exported JSON and a public key (no ledger).

* :func:`verify_log` checks a whole log: positions 1..n without gaps, every ``prev_hash`` link, every
  ``entry_hash`` recomputed from the entry's fields (:mod:`~tracemark.forensics.tlog.entries`), every
  checkpoint's Ed25519 signature and that its signed head equals the recomputed chain at its size, and that
  checkpoints never shrink.
* :func:`verify_inclusion` checks an inclusion proof: the included entries' hashes recomputed from their
  fields, every link from the first included entry up to the checkpoint's size recomputed from the other
  entries' leaf hashes, and the checkpoint's signature over that head.

``public_key`` is anything :func:`tracemark.forensics.reports.dsse.trusted_keys` accepts: an
``Ed25519PublicKey``, PEM text or bytes, a mapping or list of keys, or a master secret (all its versions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tracemark.forensics.reports.dsse import (
    EnvelopeError,
    envelope_body,
    parse_envelope,
    trusted_keys,
    verify_signatures,
)
from tracemark.forensics.tlog.checkpoints import decode_checkpoint
from tracemark.forensics.tlog.entries import (
    GENESIS,
    LogEntryView,
    LogError,
    chain_hash,
    entry_hash,
    is_hash,
)

INCLUSION_FORMAT = "tracemark-log-inclusion/1"
MAX_PROBLEMS = 25


@dataclass
class LogVerification:
    """Outcome of a verification. ``size``/``head``: the log (or, for a proof, the checkpoint) checked;
    ``signed_size``: how many entries a valid signed checkpoint covers."""

    valid: bool
    problems: list[str] = field(default_factory=list)
    size: int = 0
    head: str = GENESIS
    signed_size: int = 0

    def summary(self) -> str:
        if not self.valid:
            return f"INVALID: {len(self.problems)} problem(s); first: {self.problems[0]}"
        if self.size == 0:
            return "VALID: the log is empty"
        signed = (
            "no signed checkpoint covers it"
            if self.signed_size == 0
            else f"a signed checkpoint covers entries 1..{self.signed_size}"
        )
        return f"VALID: {self.size} entries, head {self.head}; {signed}"


class _Problems(list):
    """A problem list that keeps the first :data:`MAX_PROBLEMS` and counts the rest."""

    dropped = 0

    def add(self, message: str) -> None:
        if len(self) < MAX_PROBLEMS:
            self.append(message)
        else:
            self.dropped += 1

    def final(self) -> list[str]:
        return list(self) + ([f"... and {self.dropped} more problem(s)"] if self.dropped else [])


def check_checkpoint(envelope: Any, keys: Mapping) -> tuple[dict | None, list[str]]:
    """(payload, []) when ``envelope`` is a well-formed checkpoint signed by one of ``keys`` naming that key,
    else (None or payload, problems)."""
    try:
        env = parse_envelope(envelope)
        payload = decode_checkpoint(env)
        body = envelope_body(env)
    except (LogError, EnvelopeError) as exc:
        return None, [str(exc)]
    key_id, problems = verify_signatures(env, body, keys)
    if key_id is None:
        return None, problems
    if payload["key_id"] != key_id:
        return None, [f"the checkpoint names key {payload['key_id']!r} but is signed by {key_id}"[:200]]
    return payload, []


def verify_log(entries: list[dict], checkpoints: list[dict], public_key: Any) -> LogVerification:
    """Check a whole exported log (entries in order, checkpoints oldest first) against ``public_key``."""
    keys = trusted_keys(public_key)
    problems = _Problems()
    heads = [GENESIS]  # heads[i]: the recomputed chain hash after i entries
    subjects: dict[str, int] = {}
    broken = False
    if not isinstance(entries, list) or not isinstance(checkpoints, list):
        raise LogError("entries and checkpoints must be lists")
    for position, raw in enumerate(entries, start=1):
        try:
            e = LogEntryView.from_dict(raw)
        except LogError as exc:
            problems.add(f"entry at position {position}: {exc}; later entries were not checked")
            broken = True
            break
        if e.seq != position:
            problems.add(
                f"position {position} holds entry #{e.seq}: an entry is missing, duplicated or out of order"
            )
        if e.prev_hash != heads[-1]:
            problems.add(f"entry #{e.seq}: prev_hash does not link to the entry before it")
        if e.entry_hash != entry_hash(e.prev_hash, e.seq, e.kind, e.subject, e.logged_at, e.body):
            problems.add(f"entry #{e.seq}: entry_hash does not match its contents (changed after logging)")
        if e.subject is not None:
            if e.subject in subjects:
                problems.add(
                    f"entry #{e.seq}: subject {e.subject!r} was already logged as #{subjects[e.subject]}"
                )
            subjects.setdefault(e.subject, e.seq)
        heads.append(chain_hash(heads[-1], e.leaf_hash))
    checked = len(heads) - 1
    signed_size = largest = 0
    for number, envelope in enumerate(checkpoints, start=1):
        payload, bad = check_checkpoint(envelope, keys)
        for p in bad:
            problems.add(f"checkpoint {number}: {p}")
        if payload is None:
            continue
        size = payload["size"]
        if size < largest:
            problems.add(
                f"checkpoint {number} signs {size} entries, fewer than an earlier one ({largest}): "
                "the log shrank"
            )
        largest = max(largest, size)
        if size > checked:
            problems.add(
                f"checkpoint {number} signs {size} entries but only {checked} could be checked"
                + ("" if broken else ": entries were removed")
            )
        elif heads[size] != payload["head"]:
            problems.add(
                f"checkpoint {number}: the signed head at size {size} differs from the entries' chain "
                "(the log was rewritten)"
            )
        else:
            signed_size = max(signed_size, size)
    final = problems.final()
    return LogVerification(
        valid=not final,
        problems=final,
        size=checked,
        head=heads[-1],
        signed_size=signed_size if not final else 0,
    )


def _parse_chain(chain: Any, problems: _Problems) -> list[tuple[int, str]] | None:
    if not isinstance(chain, list) or not chain:
        problems.add("the proof has no chain")
        return None
    out = []
    for link in chain:
        if not isinstance(link, Mapping) or not is_hash(link.get("leaf_hash")):
            problems.add("a chain link is not {seq, leaf_hash}")
            return None
        seq = link.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or (out and seq != out[-1][0] + 1) or seq < 1:
            problems.add("the chain's positions are not consecutive")
            return None
        out.append((seq, link["leaf_hash"]))
    return out


def verify_inclusion(proof: Any, public_key: Any) -> LogVerification:
    """Check that ``proof``'s entries are in the log whose head a signed checkpoint names (see module doc)."""
    keys = trusted_keys(public_key)
    problems = _Problems()
    failed = LogVerification(valid=False)
    if not isinstance(proof, Mapping) or proof.get("format") != INCLUSION_FORMAT:
        failed.problems = [f"not an inclusion proof (format {INCLUSION_FORMAT!r})"]
        return failed
    payload, bad = check_checkpoint(proof.get("checkpoint"), keys)
    for p in bad:
        problems.add(f"checkpoint: {p}")
    raw_entries = proof.get("entries")
    included: dict[int, LogEntryView] = {}
    if not isinstance(raw_entries, list) or not raw_entries:
        problems.add("the proof includes no entries")
        raw_entries = []
    for raw in raw_entries:
        try:
            e = LogEntryView.from_dict(raw)
        except LogError as exc:
            problems.add(str(exc))
            continue
        if e.seq in included:
            problems.add(f"entry #{e.seq} is included twice")
        included[e.seq] = e
    chain = _parse_chain(proof.get("chain"), problems)
    start = proof.get("start_prev_hash")
    if not is_hash(start):
        problems.add("start_prev_hash is not 64 lowercase hex digits")
    if payload is None or chain is None or problems:
        failed.problems = problems.final()
        return failed
    if chain[0][0] == 1 and start != GENESIS:
        problems.add("the chain starts at entry 1 but start_prev_hash is not the genesis hash")
    if chain[-1][0] != payload["size"]:
        problems.add(
            f"the chain ends at entry #{chain[-1][0]}, the checkpoint signs {payload['size']} entries"
        )
    leaves = dict(chain)
    for seq, e in sorted(included.items()):
        if seq not in leaves:
            problems.add(f"entry #{seq} is outside the proof's chain")
        elif e.leaf_hash != leaves[seq]:
            problems.add(f"entry #{seq}: its contents do not match the chain (changed after logging)")
    head = start
    for seq, leaf in chain:
        e = included.get(seq)
        if e is not None and e.prev_hash != head:
            problems.add(f"entry #{seq}: prev_hash does not link to the entry before it")
        head = chain_hash(head, leaf)
        if e is not None and e.entry_hash != head:
            problems.add(f"entry #{seq}: entry_hash does not match the chain")
    if head != payload["head"]:
        problems.add("the chain does not lead to the checkpoint's signed head")
    final = problems.final()
    return LogVerification(
        valid=not final,
        problems=final,
        size=payload["size"],
        head=payload["head"],
        signed_size=payload["size"] if not final else 0,
    )
