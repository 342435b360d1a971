"""Signed checkpoints of the transparency log: a DSSE envelope (Ed25519) over the log's size and head.

Payload (canonical JSON, payload type :data:`CHECKPOINT_PAYLOAD_TYPE`)::

    {"format": "tracemark-log-checkpoint/1", "size": n, "head": "<entry_hash of entry n>",
     "time": "YYYY-MM-DDTHH:MM:SS.ffffffZ", "key_id": "tracemark:<16 hex>"}

The signature is the report-signing key of the master secret's current version (``tracemark keys
public-key``), so the same public key verifies reports and checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import select
from tracemark.forensics.ledger.db import read_session, session_scope
from tracemark.forensics.ledger.models import LogCheckpoint
from tracemark.forensics.reports.canonical import canonical_json
from tracemark.forensics.reports.dsse import EnvelopeError, envelope_body, parse_envelope, sign_envelope
from tracemark.forensics.tlog.entries import LogError, format_time, is_hash
from tracemark.forensics.tlog.store import head_row, lock_log

CHECKPOINT_FORMAT = "tracemark-log-checkpoint/1"
CHECKPOINT_PAYLOAD_TYPE = "application/vnd.tracemark.checkpoint+json"
CHECKPOINT_FIELDS = ("format", "size", "head", "time", "key_id")


class CheckpointError(LogError):
    """A checkpoint envelope is malformed (not an envelope, wrong payload type or fields)."""


def _envelope_text(envelope: Mapping) -> str:
    return json.dumps(envelope, sort_keys=True, separators=(",", ":"))


def sign_checkpoint(engine: Engine, master: Any) -> dict:
    """Sign the log's current size and head with ``master``'s current signing key, store the checkpoint and
    return its DSSE envelope. An empty log has nothing to sign: :class:`LogError`."""
    with session_scope(engine) as session:
        lock_log(session)  # the head cannot move between reading and storing it
        head = head_row(session)
        if head is None:
            raise LogError("the transparency log is empty: there is nothing to checkpoint")
        key_id = master.key_id()
        payload = {
            "format": CHECKPOINT_FORMAT,
            "size": head.seq,
            "head": head.entry_hash,
            "time": format_time(datetime.now(UTC)),
            "key_id": key_id,
        }
        envelope = sign_envelope(
            canonical_json(payload), master.signing_key(), payload_type=CHECKPOINT_PAYLOAD_TYPE
        )
        session.add(
            LogCheckpoint(
                size=head.seq,
                head_hash=head.entry_hash,
                envelope_json=_envelope_text(envelope),
                key_id=key_id,
            )
        )
        session.flush()
    return envelope


def list_checkpoints(engine: Engine) -> list[dict]:
    """Every stored checkpoint envelope, oldest first."""
    return [envelope for _size, _head, envelope in stored_checkpoint_rows(engine)]


def latest_checkpoint(engine: Engine) -> dict | None:
    """The newest stored checkpoint envelope, or ``None`` when none was signed yet."""
    with read_session(engine) as session:
        row = session.exec(select(LogCheckpoint).order_by(LogCheckpoint.id.desc()).limit(1)).first()
        return None if row is None else json.loads(row.envelope_json)


def stored_checkpoint_rows(engine: Engine) -> list[tuple[int, str, dict]]:
    """``(size, head_hash, envelope)`` of every stored checkpoint, oldest first (the ledger's columns)."""
    with read_session(engine) as session:
        rows = session.exec(select(LogCheckpoint).order_by(LogCheckpoint.id)).all()
        return [(r.size, r.head_hash, json.loads(r.envelope_json)) for r in rows]


def decode_checkpoint(envelope: Mapping | str | bytes) -> dict:
    """The checkpoint payload of ``envelope`` with its fields checked (the signature is NOT checked; see
    :func:`tracemark.forensics.tlog.verify.check_checkpoint`). Malformed: :class:`CheckpointError`."""
    try:
        env = parse_envelope(envelope)
        if env["payloadType"] != CHECKPOINT_PAYLOAD_TYPE:
            raise CheckpointError(
                f"payload type is {env['payloadType']!r}, not a log checkpoint ({CHECKPOINT_PAYLOAD_TYPE})"[
                    :200
                ]
            )
        body = envelope_body(env)
    except EnvelopeError as exc:
        raise CheckpointError(f"checkpoint: {exc}") from None
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise CheckpointError("checkpoint payload is not JSON") from None
    if not isinstance(payload, dict):
        raise CheckpointError("checkpoint payload is not a JSON object")
    missing = [f for f in CHECKPOINT_FIELDS if f not in payload]
    if missing:
        raise CheckpointError(f"checkpoint payload has no {', '.join(missing)} field(s)")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint format is {payload['format']!r}, not {CHECKPOINT_FORMAT!r}"[:200])
    size = payload["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise CheckpointError("checkpoint size must be a positive integer")
    if not is_hash(payload["head"]):
        raise CheckpointError("checkpoint head is not 64 lowercase hex digits")
    if not isinstance(payload["time"], str) or not isinstance(payload["key_id"], str):
        raise CheckpointError("checkpoint time and key_id must be strings")
    return payload
