"""DSSE (Dead Simple Signing Envelope) with Ed25519, as used by in-toto and Sigstore.

Envelope: ``{"payload": base64(body), "payloadType": TYPE, "signatures": [{"keyid": ID, "sig": base64}]}``.
Each signature is Ed25519 over ``PAE(TYPE, body)``, where
``PAE = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` and LEN is the byte length as ASCII decimal.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from tracemark.forensics.keys import MasterKeyError, load_public_key, public_key_id
from tracemark.foundation.errors import InvalidInput

PAYLOAD_TYPE = "application/vnd.tracemark.report+json"


class EnvelopeError(InvalidInput):
    """The envelope is malformed (not JSON, missing fields, bad base64)."""


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def sign_envelope(body: bytes, key: Ed25519PrivateKey, *, payload_type: str = PAYLOAD_TYPE) -> dict:
    """A DSSE envelope holding ``body``, signed by ``key``."""
    sig = key.sign(pae(payload_type, body))
    return {
        "payload": base64.b64encode(body).decode("ascii"),
        "payloadType": payload_type,
        "signatures": [
            {"keyid": public_key_id(key.public_key()), "sig": base64.b64encode(sig).decode("ascii")}
        ],
    }


def _b64decode(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise EnvelopeError(f"{what} is not a base64 string")
    s = text.strip()
    try:
        if "-" in s or "_" in s:  # DSSE allows URL-safe base64 too
            return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"{what} is not valid base64") from None


def parse_envelope(envelope: Mapping | str | bytes) -> dict:
    """Accept an envelope as a dict or JSON text; check its shape (not its signatures)."""
    if isinstance(envelope, str | bytes):
        try:
            envelope = json.loads(envelope)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EnvelopeError("the envelope is not valid JSON") from None
    if not isinstance(envelope, Mapping):
        raise EnvelopeError("the envelope is not a JSON object")
    for name in ("payload", "payloadType", "signatures"):
        if name not in envelope:
            raise EnvelopeError(f"the envelope has no {name!r} field")
    if not isinstance(envelope["payloadType"], str):
        raise EnvelopeError("payloadType is not a string")
    sigs = envelope["signatures"]
    if not isinstance(sigs, list) or not sigs:
        raise EnvelopeError("the envelope has no signatures")
    for s in sigs:
        if not isinstance(s, Mapping) or not isinstance(s.get("sig"), str):
            raise EnvelopeError("a signature entry has no 'sig' string")
    return dict(envelope)


def envelope_body(envelope: Mapping | str | bytes) -> bytes:
    """The decoded payload bytes (no signature check)."""
    return _b64decode(parse_envelope(envelope)["payload"], "payload")


def trusted_keys(public_key: Any) -> dict[str, Ed25519PublicKey]:
    """Normalise ``public_key`` to ``{key_id: key}``: one key, a PEM string/bytes, a mapping, an iterable of
    keys, or an object with ``public_keys()`` (a :class:`~tracemark.forensics.keys.MasterSecret`)."""
    if isinstance(public_key, Ed25519PublicKey):
        return {public_key_id(public_key): public_key}
    if isinstance(public_key, Ed25519PrivateKey):
        return trusted_keys(public_key.public_key())
    if isinstance(public_key, str | bytes):
        try:
            return trusted_keys(load_public_key(public_key))
        except MasterKeyError as exc:
            raise EnvelopeError(f"public key: {exc}") from None
    if hasattr(public_key, "public_keys") and callable(public_key.public_keys):
        return trusted_keys(public_key.public_keys())
    if isinstance(public_key, Mapping):
        out: dict[str, Ed25519PublicKey] = {}
        for key in public_key.values():
            out.update(trusted_keys(key))
        return out
    if isinstance(public_key, Iterable):
        out = {}
        for key in public_key:
            out.update(trusted_keys(key))
        return out
    raise EnvelopeError(f"unsupported public key type {type(public_key).__name__}")


def verify_signatures(
    envelope: Mapping, body: bytes, keys: Mapping[str, Ed25519PublicKey]
) -> tuple[str | None, list[str]]:
    """Check the envelope's signatures against ``keys``; return (key id that verified or None, problems)."""
    message = pae(envelope["payloadType"], body)
    named = [str(s.get("keyid") or "") for s in envelope["signatures"]]
    for entry in envelope["signatures"]:
        try:
            sig = _b64decode(entry["sig"], "signature")
        except EnvelopeError:
            continue
        keyid = str(entry.get("keyid") or "")
        candidates = [keys[keyid]] if keyid in keys else list(keys.values())  # keyid is only a hint
        for key in candidates:
            try:
                key.verify(sig, message)
            except InvalidSignature:
                continue
            return public_key_id(key), []
    trusted = ", ".join(sorted(keys)) or "none"
    signed_by = ", ".join(n or "(no keyid)" for n in named)
    if not any(n in keys for n in named):
        return None, [
            f"no signature verifies: the envelope is signed by {signed_by}, the trusted key(s) are {trusted} "
            "(wrong public key?)"
        ]
    return None, [
        f"signature by {signed_by} does not verify: the payload or signature was changed after signing"
    ]
