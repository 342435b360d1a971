"""Black-box suspects behind an OpenAI-compatible HTTP endpoint (``openai:URL#MODEL``).

``/v1/completions`` with ``n`` samples, falling back to ``/v1/chat/completions``; returned logprobs are kept
when offered. The API key is given by the caller (the server: the variable its ``[forensics]`` config names
for this endpoint) or, on the command line, read from ``$TRACEMARK_SUSPECT_API_KEY``; it is never logged or
stored. Redirects are never followed (a 3xx is an error), so an endpoint cannot send the key elsewhere.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

from tracemark.forensics.adapters.base import ENV_API_KEY, Sample, SuspectAdapter, SuspectError, _Retryable

log = logging.getLogger(__name__)

CHAT_EXTRA_TOKENS = 16
CHAT_CONTINUE_INSTRUCTION = (
    "Continue the user's text exactly where it stops. Reply with the continuation only, no commentary."
)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def pinned_transport(check: Callable[[str, int], str]) -> Any:
    """An httpx transport whose every TCP connection goes to the address ``check(host, port)`` returns
    (re-resolved and re-checked at connect time, so DNS rebinding after the policy check gains nothing;
    TLS still verifies the URL's host name). Environment proxies are not used."""
    import httpcore
    import httpx

    class _Checked(httpcore.SyncBackend):
        def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # noqa: ANN001
            return super().connect_tcp(check(host, port), port, timeout, local_address, socket_options)

    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(), network_backend=_Checked()
    )
    return transport


class OpenAISuspect(SuspectAdapter):
    """An OpenAI-compatible endpoint: ``/v1/completions`` (raw continuation, ``n`` samples, ``logprobs``),
    falling back to ``/v1/chat/completions`` when completions are not served."""

    kind = "openai"
    RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

    def __init__(
        self,
        spec: str,
        base_url: str,
        model: str,
        *,
        api: str = "auto",
        logprobs: int | None = 5,
        transport: Any = None,
        api_key: str | None = None,
        connect_check: Callable[[str, int], str] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(spec, **kw)
        if api not in ("auto", "completions", "chat"):
            raise ValueError("api must be auto, completions or chat")
        self.base_url = base_url
        self.model = model
        self.api = api
        self.logprobs = logprobs
        self._logprobs_refused = False
        import httpx

        headers = {"User-Agent": "tracemark-forensics"}
        # api_key None: the command line's variable; "" : no key (the server passes what its config names)
        key = (os.environ.get(ENV_API_KEY, "") if api_key is None else api_key).strip()
        self._has_key = bool(key)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if transport is None and connect_check is not None:
            transport = pinned_transport(connect_check)
        self._client = httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=self.timeout,
            transport=transport,
            follow_redirects=False,
        )

    def identity(self) -> dict:
        return {
            "kind": self.kind,
            "endpoint": self.base_url,
            "model": self.model,
            "api": self.api,
            "authenticated": self._has_key,
        }

    def _post(self, path: str, body: dict) -> dict:
        import httpx

        try:
            resp = self._client.post(path, json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"time-out after {self.timeout:g}s on {path}") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error on {path}: {type(exc).__name__}") from None
        if 300 <= resp.status_code < 400:
            raise SuspectError(f"{path}: HTTP {resp.status_code} redirect; redirects are not followed")
        if resp.status_code in self.RETRY_STATUS:
            raise _Retryable(f"HTTP {resp.status_code} on {path}", _retry_after(resp.headers))
        if resp.status_code in (404, 405, 501):
            raise _NotServed(f"HTTP {resp.status_code} on {path}")
        if resp.status_code == 400 and "logprobs" in body and not self._logprobs_refused:
            raise _LogprobsRefused(resp.text[:200])
        if resp.status_code >= 400:
            raise SuspectError(f"{path}: HTTP {resp.status_code}: {_error_text(resp)}")
        try:
            data = resp.json()
        except ValueError:
            raise SuspectError(f"{path}: the response is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise SuspectError(f"{path}: the response has no 'choices' list")
        return data

    def _sample(
        self, prompt: str, n: int, max_new_tokens: int, temperature: float, seed: int | None
    ) -> tuple[list[Sample], dict]:
        if self.api in ("auto", "completions"):
            try:
                return self._completions(prompt, n, max_new_tokens, temperature, seed), {"api": "completions"}
            except _NotServed:
                if self.api == "completions":
                    raise SuspectError("the endpoint does not serve /v1/completions") from None
                log.info("suspect %s: /completions not served; using /chat/completions", self.base_url)
                self.api = "chat"
        try:
            return self._chat(prompt, n, max_new_tokens, temperature, seed), {"api": "chat"}
        except _NotServed:
            raise SuspectError(
                "the endpoint serves neither /v1/completions nor /v1/chat/completions"
            ) from None

    def _body(self, n: int, max_new_tokens: int, temperature: float, seed: int | None) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "max_tokens": max_new_tokens,
            "temperature": max(0.0, temperature),
        }
        if seed is not None:
            body["seed"] = int(seed)
        return body

    def _completions(self, prompt, n, max_new_tokens, temperature, seed) -> list[Sample]:  # noqa: ANN001
        body = {**self._body(n, max_new_tokens, temperature, seed), "prompt": prompt}
        if self.logprobs and not self._logprobs_refused:
            body["logprobs"] = int(self.logprobs)
        try:
            data = self._post("/completions", body)
        except _LogprobsRefused:
            self._logprobs_refused = True
            body.pop("logprobs", None)
            data = self._post("/completions", body)
        out = []
        for choice in data["choices"][:n]:
            text = choice.get("text")
            if not isinstance(text, str):
                raise SuspectError("/completions: a choice has no text")
            lp = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None
            tokens = token_lps = tops = None
            if lp and isinstance(lp.get("tokens"), list) and isinstance(lp.get("token_logprobs"), list):
                tokens = tuple(str(t) for t in lp["tokens"])
                token_lps = tuple(float(x) if x is not None else -math.inf for x in lp["token_logprobs"])
                if isinstance(lp.get("top_logprobs"), list):
                    tops = tuple({str(k): float(v) for k, v in (t or {}).items()} for t in lp["top_logprobs"])
            out.append(Sample(text=text, tokens=tokens, token_logprobs=token_lps, top_logprobs=tops))
        return out

    def _chat(self, prompt, n, max_new_tokens, temperature, seed) -> list[Sample]:  # noqa: ANN001
        # chat models often echo the end of the prompt ("x137 = 4821"): leave room for that
        body = {
            **self._body(n, max_new_tokens + CHAT_EXTRA_TOKENS, temperature, seed),
            "messages": [
                {"role": "system", "content": CHAT_CONTINUE_INSTRUCTION},
                {"role": "user", "content": prompt},
            ],
        }
        if self.logprobs and not self._logprobs_refused:
            body["logprobs"] = True
            body["top_logprobs"] = int(self.logprobs)
        try:
            data = self._post("/chat/completions", body)
        except _LogprobsRefused:
            self._logprobs_refused = True
            body.pop("logprobs", None)
            body.pop("top_logprobs", None)
            data = self._post("/chat/completions", body)
        out = []
        for choice in data["choices"][:n]:
            msg = choice.get("message") if isinstance(choice.get("message"), dict) else {}
            text = msg.get("content")
            if not isinstance(text, str):
                raise SuspectError("/chat/completions: a choice has no message content")
            content = (
                (choice.get("logprobs") or {}).get("content")
                if isinstance(choice.get("logprobs"), dict)
                else None
            )
            tokens = token_lps = tops = None
            if isinstance(content, list) and content:
                tokens = tuple(str(c.get("token", "")) for c in content)
                token_lps = tuple(float(c.get("logprob", -math.inf)) for c in content)
                tops = tuple(
                    {
                        str(t.get("token", "")): float(t.get("logprob", -math.inf))
                        for t in c.get("top_logprobs") or []
                    }
                    for c in content
                )
            out.append(Sample(text=text, tokens=tokens, token_logprobs=token_lps, top_logprobs=tops))
        return out

    def close(self) -> None:
        self._client.close()


class _NotServed(Exception):
    pass


class _LogprobsRefused(Exception):
    pass


def _error_text(resp: Any) -> str:
    try:
        data = resp.json()
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"]).splitlines()[0][:200]
        if isinstance(err, str):
            return err.splitlines()[0][:200]
    except ValueError:
        pass
    return (resp.text or "").strip().splitlines()[0][:200] if (resp.text or "").strip() else "no detail"
