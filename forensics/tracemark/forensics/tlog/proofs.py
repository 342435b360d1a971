"""Build what verifiers need from the ledger: inclusion proofs, full exports, a check of the stored log.

An inclusion proof for entries ``seqs`` against a checkpoint of size ``n``::

    {"format": "tracemark-log-inclusion/1",
     "entries": [<full entry> for each requested seq],
     "start_prev_hash": <prev_hash of entry min(seqs)>,
     "chain": [{"seq": s, "leaf_hash": <leaf hash of entry s>} for s = min(seqs) .. n],
     "checkpoint": <DSSE envelope of the checkpoint>}

From ``start_prev_hash`` the verifier folds ``chain_hash`` over the chain's leaf hashes and must reach the
checkpoint's signed head; the included entries' leaf hashes are recomputed from their fields. Only the
requested entries are disclosed, the others by their leaf hashes alone.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from tracemark.forensics.tlog.checkpoints import (
    decode_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    sign_checkpoint,
    stored_checkpoint_rows,
)
from tracemark.forensics.tlog.entries import LogEntryNotFound, LogError, chain_hash
from tracemark.forensics.tlog.store import find_entries, log_size
from tracemark.forensics.tlog.verify import INCLUSION_FORMAT, LogVerification, verify_log
from tracemark.foundation.errors import Failed

EXPORT_FORMAT = "tracemark-log-export/1"


class LogCorrupted(Failed):
    """The ledger's log does not match its own signed checkpoint (run ``tracemark log verify``)."""


def _check_seqs(seqs: Any) -> list[int]:
    if not isinstance(seqs, list | tuple) or not seqs:
        raise LogError("seqs must be a non-empty list of entry positions")
    for s in seqs:
        if not isinstance(s, int) or isinstance(s, bool) or s < 1:
            raise LogError(f"entry positions are positive integers, got {s!r}"[:120])
    return sorted(set(seqs))


def covering_checkpoint(engine: Engine, *, size: int, master: Any = None) -> dict:
    """The newest checkpoint if it covers ``size`` entries, else a fresh one signed with ``master`` (when
    given; else :class:`LogError`)."""
    newest = latest_checkpoint(engine)
    if newest is not None and decode_checkpoint(newest)["size"] >= size:
        return newest
    if master is None:
        raise LogError(
            f"no signed checkpoint covers entry #{size} yet; sign one with `tracemark log checkpoint`"
        )
    return sign_checkpoint(engine, master)


def inclusion_proof(
    engine: Engine, *, seqs: list[int], checkpoint: dict | None = None, master: Any = None
) -> dict:
    """An inclusion proof of entries ``seqs`` (module doc). Without ``checkpoint``, the newest stored one is
    used when it covers every requested entry, else a fresh one is signed with ``master`` (see
    :func:`covering_checkpoint`)."""
    wanted = _check_seqs(seqs)
    if wanted[-1] > log_size(engine):
        raise LogEntryNotFound(f"no log entry #{wanted[-1]} (the log holds {log_size(engine)})")
    if checkpoint is None:
        checkpoint = covering_checkpoint(engine, size=wanted[-1], master=master)
    size = decode_checkpoint(checkpoint)["size"]
    if wanted[-1] > size:
        raise LogError(f"the checkpoint covers {size} entries; entry #{wanted[-1]} is newer")
    rows = find_entries(engine, start=wanted[0], stop=size)
    if [r.seq for r in rows] != list(range(wanted[0], size + 1)):
        raise LogCorrupted(f"the ledger's log has gaps between entries #{wanted[0]} and #{size}")
    chain = [{"seq": r.seq, "leaf_hash": r.leaf_hash} for r in rows]
    head = rows[0].prev_hash
    for link in chain:
        head = chain_hash(head, link["leaf_hash"])
    if head != decode_checkpoint(checkpoint)["head"]:
        raise LogCorrupted(f"the ledger's log does not lead to the head its checkpoint signs at size {size}")
    by_seq = {r.seq: r for r in rows}
    return {
        "format": INCLUSION_FORMAT,
        "entries": [by_seq[s].as_dict() for s in wanted],
        "start_prev_hash": rows[0].prev_hash,
        "chain": chain,
        "checkpoint": checkpoint,
    }


def export_log(engine: Engine, *, master: Any = None) -> dict:
    """The whole log: every entry, every checkpoint (oldest first) and, with ``master``, the PEM public key
    of each of its versions by key id. A verifier should check it against a public key obtained elsewhere:
    the keys in the export are a convenience, not a trust anchor."""
    keys = {}
    if master is not None:
        keys = {master.key_id(v): master.signing_public_key_pem(v) for v in master.versions}
    return {
        "format": EXPORT_FORMAT,
        "entries": [e.as_dict() for e in find_entries(engine)],
        "checkpoints": list_checkpoints(engine),
        "public_keys": keys,
    }


def verify_export(export: Any, public_key: Any) -> LogVerification:
    """:func:`verify_log` of an :func:`export_log` document."""
    if not isinstance(export, dict) or export.get("format") != EXPORT_FORMAT:
        raise LogError(f"not a log export (format {EXPORT_FORMAT!r})")
    entries, checkpoints = export.get("entries"), export.get("checkpoints")
    if not isinstance(entries, list) or not isinstance(checkpoints, list):
        raise LogError("a log export needs 'entries' and 'checkpoints' lists")
    return verify_log(entries, checkpoints, public_key)


def verify_stored_log(engine: Engine, public_key: Any) -> LogVerification:
    """Verify the ledger's log (:func:`verify_log`), and that each checkpoint row's size and head columns
    are those its envelope signs."""
    result = verify_log([e.as_dict() for e in find_entries(engine)], list_checkpoints(engine), public_key)
    for number, (size, head, envelope) in enumerate(stored_checkpoint_rows(engine), start=1):
        try:
            payload = decode_checkpoint(envelope)
        except LogError:
            continue  # verify_log reported it
        if (payload["size"], payload["head"]) != (size, head):
            result.problems.append(
                f"checkpoint {number}: the ledger's size/head columns differ from the signed ones"
            )
    if result.problems:
        result.valid, result.signed_size = False, 0
    return result
