"""tracemark's distributional watermark channel inside vLLM (V2 model runner logits-processor interface).

vLLM (>= 0.34) builds one instance of each custom logits processor per engine: classes registered under
the ``vllm.logits_processors`` entry-point group (this distribution registers
:class:`TracemarkChannelProcessor` there) and classes named by ``--logits-processors module:Class``.
Per request it calls ``validate_params(sampling_params)`` at admission (frontend process) and
``add_request(slot, sampling_params)`` when the request takes a persistent slot; each step it calls
``apply(logits, ctx)`` with ``ctx.expanded_idx_mapping`` (logits row -> slot) and ``ctx.input_ids``
(the token fed at each row's position: the previous token of the one being sampled).

The account comes per request in ``SamplingParams.extra_args["tracemark_account"]`` (OpenAI-compatible
server: ``"vllm_xargs": {"tracemark_account": "alice"}`` in the request body); without it a request gets
the provider key only. Keys come from an exported channel key file (``tracemark keys export-channel``)
named by ``$TRACEMARK_CHANNEL_KEY_FILE`` on the engine host: never the master secret, never over the wire.
The bias itself is :func:`tracemark.foundation.models.channel_processor.add_channel_bias`, the function
the tracemark server's own transformers decoder calls, so both give the same logits.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from typing import Any

from tracemark.forensics.channel_keys import (
    ENV_CHANNEL_KEY_FILE,
    ChannelKeyFile,
    ChannelKeyFileError,
    UnknownChannelAccount,
)
from tracemark.foundation.channel import ChannelSpec, Keyring, tokenizer_fingerprint
from tracemark.foundation.errors import first_line
from tracemark.foundation.models.channel_device import add_channel_bias_on_device
from tracemark.foundation.models.channel_processor import add_channel_bias

try:  # the real base class when vLLM is installed (vLLM's loader requires a subclass of it)
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as _VllmLogitsProcessor

    HAVE_VLLM = True
except ImportError:  # tests and tooling without vLLM: the same interface, without the ABC
    HAVE_VLLM = False

    class _VllmLogitsProcessor:  # type: ignore[no-redef]
        """The methods of ``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`` (vLLM 0.34)."""

        def __init__(self, vllm_config: Any, req_states: Any) -> None:
            pass

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            pass

        def add_request(self, req_idx: int, sampling_params: Any) -> bool:
            return True

        def apply_staged_writes(self) -> None:
            pass

        def apply(self, logits, ctx):
            raise NotImplementedError


log = logging.getLogger("tracemark_vllm")

ACCOUNT_ARG = "tracemark_account"
ENV_SKIP_TOKENIZER_CHECK = "TRACEMARK_VLLM_SKIP_TOKENIZER_CHECK"
_KEY_FILES: dict[str, ChannelKeyFile] = {}  # path -> loaded file, shared by the frontend and the engine
_BUILT: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id(vllm_config) -> its processor


def request_account(sampling_params: Any) -> str | None:
    """The account a request is decoded for (``extra_args["tracemark_account"]``), or ``None``."""
    extra = getattr(sampling_params, "extra_args", None) or {}
    if not isinstance(extra, dict):
        raise ValueError("extra_args must be an object")
    value = extra.get(ACCOUNT_ARG)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{ACCOUNT_ARG} must be a string (an account name)")
    return value


def channel_key_file() -> ChannelKeyFile:
    """The channel key file of ``$TRACEMARK_CHANNEL_KEY_FILE``, loaded once per path (then refreshed
    when a request names an account it lacks)."""
    path = os.environ.get(ENV_CHANNEL_KEY_FILE, "").strip()
    keys = _KEY_FILES.get(path)
    if keys is None:
        keys = ChannelKeyFile.from_env()
        _KEY_FILES[path] = keys
    return keys


def check_vocabulary(spec: ChannelSpec, tokenizer_path: str | None) -> str:
    """Refuse a model whose tokenizer is not the channel's vocabulary (the green lists are over token ids,
    so detection would re-tokenize with another vocabulary and find nothing). Returns what was checked."""
    if not spec.tokenizer:
        return "no tokenizer fingerprint in the channel key file: vocabulary not checked"
    if os.environ.get(ENV_SKIP_TOKENIZER_CHECK, "") in ("1", "true", "yes"):
        return f"vocabulary check skipped ({ENV_SKIP_TOKENIZER_CHECK})"
    if not tokenizer_path:
        raise ChannelKeyFileError("the model has no tokenizer to check against the channel's vocabulary")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    except (OSError, ValueError) as exc:
        raise ChannelKeyFileError(f"cannot load tokenizer {tokenizer_path}: {first_line(exc)}") from None
    found = tokenizer_fingerprint(tokenizer)
    if found != spec.tokenizer:
        raise ChannelKeyFileError(
            f"the model's vocabulary ({found}) is not the channel's ({spec.tokenizer}): export the channel "
            "keys with this model's tokenizer (tracemark keys export-channel --tokenizer)"
        )
    return f"vocabulary {found} checked"


class TracemarkChannelProcessor(_VllmLogitsProcessor):
    """Adds each request's keyed green-list bias (provider key, plus its account's key) to its logits.

    Built by vLLM as ``cls(vllm_config, req_states)``; reads ``req_states.max_num_reqs`` and
    ``vllm_config.model_config.tokenizer`` (for the vocabulary check). ``seconds``/``steps`` count the
    time spent in ``apply`` (the channel's overhead per engine step). ``on_device``: compute the green
    lists with torch on the logits' device (``None``, the default: on any device but the CPU, where the
    numpy core with its row cache is faster); both give the same logits.
    """

    on_device: bool | None = None

    def __init__(self, vllm_config: Any, req_states: Any) -> None:
        super().__init__(vllm_config, req_states)
        other = _BUILT.get(id(vllm_config))
        if other is not None and other._vllm_config is vllm_config:
            raise ValueError(
                "the tracemark channel processor was loaded twice for one engine (its vllm.logits_processors "
                "entry point and --logits-processors?): it would bias twice; use one of them"
            )
        self._vllm_config = vllm_config
        _BUILT[id(vllm_config)] = self
        self.keys = channel_key_file()
        self.spec = self.keys.spec
        model_config = getattr(vllm_config, "model_config", None)
        checked = check_vocabulary(self.spec, getattr(model_config, "tokenizer", None))
        self.keyring = Keyring(self.spec, self.keys.provider_key(), self.keys.account_key)
        self._rows: list[list | None] = [None] * int(req_states.max_num_reqs)
        self.seconds = 0.0
        self.steps = 0
        log.info(
            "tracemark channel on (gamma %s, deltas %s/%s, context %d, key version %d, %d accounts); %s",
            self.spec.gamma,
            self.spec.provider_delta,
            self.spec.account_delta,
            self.spec.context_width,
            self.keys.version,
            len(self.keys.accounts),
            checked,
        )

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Reject (at admission, before any token) a malformed account or one without a channel key."""
        account = request_account(sampling_params)
        if account is None:
            return
        try:
            keys = channel_key_file()
        except ChannelKeyFileError as exc:
            raise ValueError(str(exc)) from None
        if not keys.has_account(account):
            keys.refresh()
        if not keys.has_account(account):
            raise ValueError(f"tracemark has no channel key for account {account!r}")

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        """Bind slot ``req_idx`` to the request's keys (overwriting the slot's previous occupant)."""
        try:
            account = request_account(sampling_params)
        except ValueError as exc:  # validate_params refused it already; never crash the engine here
            log.error("tracemark channel: %s; provider key only for this request", exc)
            account = None
        if account is not None and not self.keys.has_account(account):
            self.keys.refresh()
        try:
            self._rows[req_idx] = self.keyring.lists_for(account)
        except UnknownChannelAccount:
            log.error("tracemark channel: no key for account %r; provider key only for this request", account)
            self._rows[req_idx] = self.keyring.lists_for(None)
        return True

    def apply(self, logits, ctx):
        """Add every row's bias in place: row ``r`` belongs to slot ``ctx.expanded_idx_mapping[r]`` and
        follows token ``ctx.input_ids[r]`` (speculative rows included)."""
        start = time.perf_counter()
        slots = ctx.expanded_idx_mapping.tolist()
        prev = ctx.input_ids.tolist()
        rows = []
        for slot in slots:
            lists = self._rows[slot]
            if lists is None:
                raise RuntimeError(f"tracemark channel: logits row for slot {slot}, which no request took")
            rows.append(lists)
        on_device = self.on_device if self.on_device is not None else logits.device.type != "cpu"
        add = add_channel_bias_on_device if on_device else add_channel_bias
        logits = add(logits, rows, prev, width=self.spec.context_width, inplace=True)
        self.seconds += time.perf_counter() - start
        self.steps += 1
        return logits
