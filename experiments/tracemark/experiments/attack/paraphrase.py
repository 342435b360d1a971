"""Attack (8): paraphrase every trace with an LLM the distiller controls.

Locally: any transformers causal LM folder (the embedded SmolLM2 by default), batched greedy decoding
without any watermark processor. At full scale: an OpenAI-compatible ``/chat/completions`` endpoint.
A paraphrase that loses the final line's answer keeps the original trace (a distiller would too: a
student trained on wrong answers is worthless).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from tracemark.experiments.attack.harvest import HarvestError, HarvestRecord

INSTRUCTION = (
    "Rewrite the following worked solution in your own words. Keep every calculation and the final "
    "answer line exactly. Reply with the rewritten solution only."
)
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _final_number(text: str) -> str:
    nums = _NUMBER.findall(text.replace(",", ""))
    return nums[-1] if nums else ""


def _accept(original: str, paraphrase: str) -> str:
    paraphrase = paraphrase.strip()
    if not paraphrase or _final_number(paraphrase) != _final_number(original):
        return original
    return paraphrase


def _messages(trace: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": trace}]


def local_paraphraser(
    model_dir: str | Path | None = None, *, batch_size: int = 8, max_new_tokens: int = 256
) -> Callable[[Sequence[str]], list[str]]:
    """A batched paraphraser on a local transformers model (``None``: the embedded SmolLM2)."""
    import torch  # deferred: heavy
    from tracemark.foundation.models.embedded import ensure_embedded_model  # deferred: model download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(model_dir) if model_dir else ensure_embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()

    def run(traces: Sequence[str]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(traces), batch_size):
            chunk = traces[start : start + batch_size]
            prompts = [
                tokenizer.apply_chat_template(_messages(t), tokenize=False, add_generation_prompt=True)
                for t in chunk
            ]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            width = enc["input_ids"].shape[1]
            out.extend(tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True))
        return out

    return run


def endpoint_paraphraser(
    endpoint: str, model: str, *, api_key: str = "", timeout_s: float = 120.0, max_tokens: int = 512
) -> Callable[[Sequence[str]], list[str]]:
    """A paraphraser on an OpenAI-compatible endpoint (``endpoint`` is the base URL, e.g. ``.../v1``)."""
    import httpx  # deferred: only for endpoints

    if not endpoint:
        raise HarvestError("--paraphrase-endpoint needs a base URL")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = endpoint.rstrip("/") + "/chat/completions"

    def run(traces: Sequence[str]) -> list[str]:
        out = []
        with httpx.Client(timeout=timeout_s, headers=headers) as client:
            for t in traces:
                body = {"model": model, "messages": _messages(t), "max_tokens": max_tokens, "temperature": 0}
                reply = client.post(url, json=body)
                if reply.status_code != 200:
                    raise HarvestError(f"paraphrase endpoint answered HTTP {reply.status_code}")
                out.append(reply.json()["choices"][0]["message"]["content"] or "")
        return out

    return run


def paraphrase(
    records: Sequence[HarvestRecord], paraphraser: Callable[[Sequence[str]], list[str]]
) -> list[HarvestRecord]:
    """(8) Paraphrase every trace; a paraphrase that changes the final answer keeps the original."""
    texts = paraphraser([r.trace for r in records])
    if len(texts) != len(records):
        raise HarvestError("the paraphraser returned a different number of texts")
    return [r.with_trace(_accept(r.trace, t)) for r, t in zip(records, texts)]
