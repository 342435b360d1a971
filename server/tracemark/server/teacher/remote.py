"""Teacher served by any OpenAI-compatible endpoint (vLLM, TGI, llama.cpp server, ...)."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from tracemark.server.teacher.base import (
    Generation,
    GenerationParams,
    Messages,
    TeacherBackend,
    TeacherError,
    TeacherInfo,
    TextCallback,
)


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
        self.info = TeacherInfo(
            model_id=model,
            backend="openai",
            quantization="remote",
            quantization_note="quantization is decided by the remote server",
            device=endpoint,
            dtype="remote",
            max_batch_size=max_batch_size,
        )

    def _body(self, messages: Messages, params: GenerationParams, stream: bool) -> dict:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "stream": stream,
        }
        if params.seed is not None:
            body["seed"] = params.seed
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

    def _one(self, messages: Messages, params: GenerationParams, on_text: TextCallback | None) -> Generation:
        start = time.perf_counter()
        if on_text is None:
            response = self._post(self._body(messages, params, stream=False))
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
        with self._client.stream("POST", "/chat/completions", json=self._body(messages, params, True)) as r:
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
    ) -> list[Generation]:
        callbacks = on_text or [None] * len(conversations)
        futures = [self._pool.submit(self._one, c, params, cb) for c, cb in zip(conversations, callbacks)]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
