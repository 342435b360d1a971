"""The transparency log: an append-only, hash-chained log in the ledger with Ed25519-signed checkpoints.

What is logged: a commitment to every account key before the first trace signed with it
(:mod:`~tracemark.forensics.tlog.accounts`); other kinds can be appended with :func:`append_entry`.
Anyone with the exported JSON and the public key PEM can verify the log offline (:func:`verify_log`,
:func:`verify_inclusion`, :func:`verify_receipt`); the hash construction is in
:mod:`~tracemark.forensics.tlog.entries`.

Typical use::

    entry = append_entry(engine, kind="note", subject="note:1", body={"text": "hello"})
    envelope = sign_checkpoint(engine, master)
    result = verify_log(export["entries"], export["checkpoints"], master.signing_public_key_pem())
"""

from tracemark.forensics.tlog.accounts import (
    ACCOUNT_KEY_KIND,
    RECEIPT_FORMAT,
    KeyReceiptNotFound,
    account_key_commitment,
    account_key_entries,
    ensure_key_commitment,
    key_receipt,
    key_subject,
    open_key_commitment,
    verify_receipt,
)
from tracemark.forensics.tlog.channel import (
    PROVIDER_KEY_KIND,
    channel_key_commitment,
    ensure_provider_commitment,
    open_channel_commitment,
    provider_entries,
    provider_subject,
)
from tracemark.forensics.tlog.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_PAYLOAD_TYPE,
    CheckpointError,
    decode_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    sign_checkpoint,
)
from tracemark.forensics.tlog.entries import (
    GENESIS,
    LogBusy,
    LogConflict,
    LogEntryNotFound,
    LogEntryView,
    LogError,
    chain_hash,
    entry_hash,
    leaf_hash,
)
from tracemark.forensics.tlog.proofs import (
    EXPORT_FORMAT,
    LogCorrupted,
    covering_checkpoint,
    export_log,
    inclusion_proof,
    verify_export,
    verify_stored_log,
)
from tracemark.forensics.tlog.store import append_entry, find_entries, get_entry, log_head, log_size
from tracemark.forensics.tlog.verify import (
    INCLUSION_FORMAT,
    LogVerification,
    check_checkpoint,
    verify_inclusion,
    verify_log,
)

__all__ = [
    "ACCOUNT_KEY_KIND",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_PAYLOAD_TYPE",
    "EXPORT_FORMAT",
    "GENESIS",
    "INCLUSION_FORMAT",
    "PROVIDER_KEY_KIND",
    "RECEIPT_FORMAT",
    "CheckpointError",
    "KeyReceiptNotFound",
    "LogBusy",
    "LogConflict",
    "LogCorrupted",
    "LogEntryNotFound",
    "LogEntryView",
    "LogError",
    "LogVerification",
    "account_key_commitment",
    "account_key_entries",
    "append_entry",
    "chain_hash",
    "channel_key_commitment",
    "check_checkpoint",
    "covering_checkpoint",
    "decode_checkpoint",
    "ensure_key_commitment",
    "ensure_provider_commitment",
    "entry_hash",
    "export_log",
    "find_entries",
    "get_entry",
    "inclusion_proof",
    "key_receipt",
    "key_subject",
    "latest_checkpoint",
    "leaf_hash",
    "list_checkpoints",
    "log_head",
    "log_size",
    "open_channel_commitment",
    "open_key_commitment",
    "provider_entries",
    "provider_subject",
    "sign_checkpoint",
    "verify_export",
    "verify_inclusion",
    "verify_log",
    "verify_receipt",
    "verify_stored_log",
]
