"""Suspect adapters: the models an investigation queries.

Specs (:func:`parse_suspect`):

* ``hf:PATH``            a transformers model folder on disk (white-box: reads logits; can also sample)
* ``gguf:PATH``          a ``.gguf`` file, loaded by transformers (``gguf_file=``; white-box)
* ``openai:URL#MODEL``   an OpenAI-compatible HTTP endpoint (black-box; ``/v1/completions`` with ``n``
  samples, falling back to ``/v1/chat/completions``; returned logprobs are kept when offered). The API key
  comes from ``$TRACEMARK_SUSPECT_API_KEY`` and is never logged or stored.
* ``tracemark:ADDR``     a model served by a tracemark server (``TeacherService.Generate`` over gRPC,
  black-box), with the bearer token from ``$TRACEMARK_TOKEN``.

Every adapter enforces a query budget (sampled completions; white-box logit reads of a local model are not
metered), a rate limit, retries with exponential back-off and time-outs, and records every query and its
response with SHA-256 digests (:attr:`SuspectAdapter.query_log`, and the ``on_query`` hook an
investigation uses to write each one to the ledger as it happens).
"""

from tracemark.forensics.adapters.base import (
    ENV_API_KEY,
    ENV_TOKEN,
    SPEC_HELP,
    BudgetExhausted,
    QueryLogEntry,
    Sample,
    SuspectAdapter,
    SuspectError,
    SuspectSpecError,
    SuspectUnavailable,
    file_sha256,
    sha256_hex,
)
from tracemark.forensics.adapters.local import LocalModelSuspect
from tracemark.forensics.adapters.openai import OpenAISuspect
from tracemark.forensics.adapters.served import TracemarkSuspect
from tracemark.forensics.adapters.spec import parse_suspect

__all__ = [
    "ENV_API_KEY",
    "ENV_TOKEN",
    "SPEC_HELP",
    "BudgetExhausted",
    "LocalModelSuspect",
    "OpenAISuspect",
    "QueryLogEntry",
    "Sample",
    "SuspectAdapter",
    "SuspectError",
    "SuspectSpecError",
    "SuspectUnavailable",
    "TracemarkSuspect",
    "file_sha256",
    "parse_suspect",
    "sha256_hex",
]
