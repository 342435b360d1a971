"""Teacher served by any OpenAI-compatible endpoint (vLLM, TGI, llama.cpp server, ...)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import numpy as np
from tracemark.foundation.channel import NO_CONTEXT, ChannelSpec, tokenizer_fingerprint
from tracemark.server.teacher.base import (
    Generation,
    GenerationParams,
    Messages,
    RowChannel,
    TeacherBackend,
    TeacherError,
    TeacherInfo,
    TextCallback,
    describe_channel,
)

OPENAI_MAX_BIAS = 300  # OpenAI rejects a logit_bias with more entries
BIAS_POOL = 4096  # candidate ids scanned for green tokens (the ordinary-word ids of lowest rank)
_WORD = re.compile(r"^ ?[A-Za-z]+$")


def word_token_ids(tokenizer, limit: int = BIAS_POOL) -> list[int]:
    """The ``limit`` lowest ids of ``tokenizer`` that decode to an ordinary word (letters, optionally
    after one space), special tokens excluded.

    In a BPE vocabulary the id order is the merge order, and merges are learnt most-frequent first, so the
    lowest word ids are (roughly) the most frequent words: the tokens a logit bias moves most often. The
    choice depends only on the public tokenizer, so it is deterministic and the same for every key.
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = []
    for token_id in sorted(tokenizer.get_vocab().values()):
        if token_id in special:
            continue
        if _WORD.match(tokenizer.decode([token_id])):
            ids.append(token_id)
            if len(ids) == limit:
                break
    return ids


def logit_bias(
    lists: RowChannel, candidates: Sequence[int], *, max_entries: int = OPENAI_MAX_BIAS
) -> dict[str, float]:
    """The width-0 (unigram) channel as an OpenAI ``logit_bias``: walking ``candidates`` in order, each
    token green under any of the row's keys gets the sum of those keys' deltas, until ``max_entries``."""
    if not lists or not candidates:
        return {}
    ids = np.asarray(candidates, dtype=np.uint64)
    bias = np.zeros(len(ids), dtype=np.float64)
    for green_lists, delta in lists:
        if delta:
            bias[green_lists.green(NO_CONTEXT, ids)] += delta
    chosen = np.flatnonzero(bias)[:max_entries]
    return {str(int(ids[i])): round(float(bias[i]), 4) for i in chosen}


class OpenAITeacher(TeacherBackend):
    """Sends each conversation to ``{endpoint}/chat/completions``; the endpoint batches server-side."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        api_key_env: str = "TRACEMARK_TEACHER_API_KEY",
        timeout_s: float = 120.0,
        max_batch_size: int = 8,
        retries: int = 2,
    ) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise TeacherError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        if not model:
            raise TeacherError("an OpenAI-compatible teacher needs a model name (teacher.model)")
        headers = {}
        api_key = os.environ.get(api_key_env, "")
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.model = model
        self.retries = retries
        self._client = httpx.Client(base_url=endpoint.rstrip("/"), headers=headers, timeout=timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=max_batch_size, thread_name_prefix="openai-teacher")
        self._bias_candidates: list[int] = []  # set by configure_channel when logit_bias is on
        self._vllm_plugin = False  # set by configure_channel: the endpoint applies the channel itself
        self.channel_tokenizer = None  # the endpoint's vocabulary, when the channel is on
        self.max_bias_tokens = OPENAI_MAX_BIAS
        self.info = TeacherInfo(
            model_id=model,
            backend="openai",
            quantization="remote",
            quantization_note="quantization is decided by the remote server",
            device=endpoint,
            dtype="remote",
            max_batch_size=max_batch_size,
        )

    def configure_channel(
        self,
        spec: ChannelSpec,
        *,
        tokenizer=None,
        max_bias_tokens: int = OPENAI_MAX_BIAS,
        vllm_plugin: bool = False,
    ) -> ChannelSpec | None:
        """Carry a width-0 channel through ``logit_bias`` (the endpoint must accept it). ``tokenizer`` has
        the endpoint's vocabulary (token ids are the endpoint's); without one the channel is off.
        ``vllm_plugin``: the endpoint is vLLM with the tracemark-vllm processor, which applies ``spec`` in
        full from its exported channel keys; requests only name their account (``vllm_xargs``)."""
        if vllm_plugin and tokenizer is not None:
            self._vllm_plugin = True
            self.channel_tokenizer = tokenizer
            effective = replace(spec, tokenizer=tokenizer_fingerprint(tokenizer))
            self.info.extra["channel"] = describe_channel(effective) + " inside vLLM (tracemark-vllm)"
            return effective
        if tokenizer is None:
            self.info.extra["channel"] = (
                "unavailable: logit_bias not configured for this endpoint (channel.openai_logit_bias and a "
                "local tokenizer with its vocabulary)"
            )
            return None
        if not 1 <= max_bias_tokens <= OPENAI_MAX_BIAS:
            raise TeacherError(f"max_bias_tokens must be in [1, {OPENAI_MAX_BIAS}], got {max_bias_tokens}")
        self._bias_candidates = word_token_ids(tokenizer)
        if not self._bias_candidates:
            raise TeacherError("the channel tokenizer has no ordinary-word tokens to bias")
        self.max_bias_tokens = max_bias_tokens
        self.channel_tokenizer = tokenizer
        effective = replace(spec, context_width=0, tokenizer=tokenizer_fingerprint(tokenizer))
        self.info.extra["channel"] = (
            describe_channel(effective) + f" via logit_bias (<= {max_bias_tokens} ids)"
        )
        return effective

    def _body(
        self, messages: Messages, params: GenerationParams, stream: bool, channel: RowChannel = None
    ) -> dict:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "stream": stream,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if self._vllm_plugin:
            account = next((g.key.name for g, _ in channel or () if g.key.scope == "account"), "")
            if account:
                body["vllm_xargs"] = {"tracemark_account": account}
            return body
        bias = logit_bias(channel, self._bias_candidates, max_entries=self.max_bias_tokens)
        if bias:
            body["logit_bias"] = bias
        return body

    def _post(self, body: dict) -> httpx.Response:
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                response = self._client.post("/chat/completions", json=body)
            except httpx.HTTPError as exc:
                if attempt == self.retries:
                    raise TeacherError(f"teacher endpoint unreachable: {type(exc).__name__}") from exc
            else:
                if response.status_code < 500 and response.status_code != 429:
                    return response
                if attempt == self.retries:
                    return response
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _one(
        self,
        messages: Messages,
        params: GenerationParams,
        on_text: TextCallback | None,
        channel: RowChannel = None,
    ) -> Generation:
        start = time.perf_counter()
        if on_text is None:
            response = self._post(self._body(messages, params, stream=False, channel=channel))
            if response.status_code != 200:
                raise TeacherError(f"teacher endpoint answered HTTP {response.status_code}")
            data = response.json()
            usage = data.get("usage") or {}
            return Generation(
                text=(data["choices"][0]["message"].get("content") or "").strip(),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                seconds=time.perf_counter() - start,
            )
        pieces: list[str] = []
        body = self._body(messages, params, True, channel=channel)
        with self._client.stream("POST", "/chat/completions", json=body) as r:
            if r.status_code != 200:
                raise TeacherError(f"teacher endpoint answered HTTP {r.status_code}")
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                delta = json.loads(payload)["choices"][0].get("delta", {}).get("content") or ""
                if delta:
                    pieces.append(delta)
                    on_text(delta)
        return Generation(
            text="".join(pieces).strip(), completion_tokens=len(pieces), seconds=time.perf_counter() - start
        )

    def generate_batch(
        self,
        conversations: list[Messages],
        params: GenerationParams,
        on_text: list[TextCallback | None] | None = None,
        channels: Sequence[RowChannel] | None = None,
    ) -> list[Generation]:
        callbacks = on_text or [None] * len(conversations)
        rows = channels or [None] * len(conversations)
        futures = [
            self._pool.submit(self._one, c, params, cb, ch)
            for c, cb, ch in zip(conversations, callbacks, rows)
        ]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
