"""White-box suspects: a transformers model folder (``hf:PATH``) or a ``.gguf`` file (``gguf:PATH``) on disk.

torch and transformers are imported inside the methods that need them, so listing or parsing suspects stays
light.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tracemark.forensics.adapters.base import Sample, SuspectAdapter, SuspectError, file_sha256, sha256_hex
from tracemark.foundation.errors import first_line

_MODEL_LOAD_LOCK = threading.Lock()  # one suspect model loads at a time (see LocalModelSuspect._load)

PACKED_TOKENS = 384  # tokens per packed batch of trie nodes (attention mask is PACKED_TOKENS x (prompt + it))
TREE_TOKENS = 600  # tokens per packed call of the trie (whole first-digit subtrees)
FOREST_TOKENS = 512  # new tokens per packed call of :meth:`LocalModelSuspect.forest_logprobs`
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)


def _chat_template_text(folder: Path) -> str:
    """The chat template a folder defines (``chat_template.jinja``, else ``tokenizer_config.json``), or ''."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("chat_template") or ""
        except (ValueError, AttributeError):
            return ""
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return ""


class LocalModelSuspect(SuspectAdapter):
    """A transformers model folder (``hf:``) or a ``.gguf`` file (``gguf:``) on disk: white-box.

    Exposes token-level log-probabilities (:meth:`next_token_logprobs`, :meth:`continuation_logprobs`)
    for exact scoring, and :meth:`sample` for black-box use of the same model.
    """

    white_box = True

    def __init__(
        self,
        spec: str,
        path: Path,
        *,
        gguf: bool = False,
        batch_size: int = 256,
        device: str = "auto",
        **kw: Any,
    ):
        super().__init__(spec, **kw)
        self.device = device  # "auto": CUDA when available, else CPU
        self.kind = "gguf" if gguf else "hf"
        self.path = Path(path)
        self.gguf = gguf
        self.batch_size = batch_size
        self._model = None
        self._tokenizer = None
        self._identity: dict | None = None
        self._load_lock = threading.Lock()
        self._prefix_cache: dict[tuple[int, ...], tuple[Any, Any]] = {}
        self._cache_name: str | None = None
        self._packed_ok: bool | None = None

    def identity(self) -> dict:
        if self._identity is None:
            files = (
                [self.path]
                if self.gguf
                else sorted(p for p in self.path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
            )
            digests = {
                (p.name if self.gguf else str(p.relative_to(self.path))): file_sha256(p) for p in files
            }
            combined = sha256_hex(json.dumps(digests, sort_keys=True))
            self._identity = {
                "kind": self.kind,
                "path": str(self.path.resolve()),
                "weight_files": digests,
                "weights_sha256": next(iter(digests.values())) if len(digests) == 1 else combined,
            }
            if self.gguf:  # tokenizer and chat template are GGUF metadata: the weights hash covers them
                self._identity["tokenizer_sha256"] = self._identity["weights_sha256"]
                self._identity["chat_template_sha256"] = self._identity["weights_sha256"]
            else:
                tok = {n: file_sha256(self.path / n) for n in TOKENIZER_FILES if (self.path / n).is_file()}
                self._identity["tokenizer_files"] = tok
                self._identity["tokenizer_sha256"] = sha256_hex(json.dumps(tok, sort_keys=True))
                self._identity["chat_template_sha256"] = sha256_hex(_chat_template_text(self.path))
        return dict(self._identity)

    # loading
    def _load(self) -> tuple[Any, Any]:
        with self._load_lock:
            if self._model is None:
                import torch

                # One load at a time in the process: transformers' lazy import fails in concurrent first
                # uses, and from_pretrained's meta-device initialisation is process-global (two concurrent
                # investigations on a server loaded "meta" tensors).
                with _MODEL_LOAD_LOCK:
                    self._model, self._tokenizer = self._load_locked(torch)
        return self._model, self._tokenizer

    def _load_locked(self, torch: Any) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            if self.gguf:
                folder, name = str(self.path.parent), self.path.name
                tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(
                    folder, gguf_file=name, dtype=torch.float32, local_files_only=True
                )
            else:
                tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(
                    self.path, dtype=torch.float32, local_files_only=True
                )
        except (OSError, ValueError) as exc:
            raise SuspectError(f"cannot load suspect model {self.path}: {first_line(exc)}") from None
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(self.device)
        model.eval()
        return model, tok

    @property
    def model(self) -> Any:
        return self._load()[0]

    @property
    def tokenizer(self) -> Any:
        return self._load()[1]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def chat_prefix(self, user: str) -> str | None:
        """The chat-template text up to where an assistant reply starts, or ``None`` without a template."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            return None
        return tok.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )

    def next_token_logprobs(
        self, sequences: Sequence[Sequence[int]], columns: Sequence[int] | None = None
    ) -> Any:
        """``log softmax`` of the next-token logits after each sequence: a float64 array ``[B, vocab]``
        (only the token ids in ``columns``, in that order, when given).

        Sequences are grouped by length and batched without padding, so every row is computed the same
        way regardless of what else is in the batch.
        """
        import numpy as np
        import torch

        model, _ = self._load()
        out: np.ndarray | None = None
        by_len: dict[int, list[int]] = {}
        for i, s in enumerate(sequences):
            if len(s) == 0:
                raise ValueError("cannot score an empty sequence")
            by_len.setdefault(len(s), []).append(i)
        with torch.inference_mode():
            for _, rows in sorted(by_len.items()):
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start : start + self.batch_size]
                    ids = torch.tensor(
                        [list(sequences[i]) for i in chunk], dtype=torch.long, device=self.device
                    )
                    logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1, :].double()
                    lp = torch.log_softmax(logits, dim=-1)
                    if columns is not None:
                        lp = lp[:, list(columns)]
                    lp = lp.cpu().numpy()
                    if out is None:
                        out = np.empty((len(sequences), lp.shape[1]), dtype=np.float64)
                    out[chunk] = lp
        assert out is not None
        return out

    def _prefix_state(self, prefix: tuple[int, ...]) -> tuple[Any, Any]:
        """(KV cache, last-position log-probs) of ``prefix``; the last few prefixes are kept."""
        import torch

        hit = self._prefix_cache.get(prefix)
        if hit is not None:
            return hit
        model, _ = self._load()
        with torch.inference_mode():
            out = model(
                input_ids=torch.tensor([list(prefix)], dtype=torch.long, device=self.device), use_cache=True
            )
        cache = out.get("cache")
        if cache is None:  # transformers before the `cache` rename
            cache = out.past_key_values
        lp = torch.log_softmax(out.logits[0, -1, :].double(), dim=-1)
        if len(self._prefix_cache) >= 8:
            self._prefix_cache.pop(next(iter(self._prefix_cache)))
        self._prefix_cache[prefix] = (cache, lp)
        return cache, lp

    def next_token_logprobs_shared(
        self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]], columns: Sequence[int] | None = None
    ) -> Any:
        """Like :meth:`next_token_logprobs` for ``prefix + suffix`` (all suffixes of one length), running the
        shared prefix once and reusing its KV cache (same numbers, several times faster)."""

        import numpy as np
        import torch

        if not suffixes:
            return np.zeros((0, len(columns) if columns is not None else 0))
        lengths = {len(x) for x in suffixes}
        if len(lengths) != 1:
            raise ValueError("suffixes must all have the same length")
        cache, last = self._prefix_state(tuple(prefix))
        cols = list(columns) if columns is not None else None
        if lengths == {0}:
            row = (last[cols] if cols is not None else last).cpu().numpy()
            return np.tile(row, (len(suffixes), 1))
        model, _ = self._load()
        arr = torch.tensor([list(x) for x in suffixes], dtype=torch.long, device=self.device)
        if self._packed_ok is None:  # check once that packed (tree-masked) batches match expanded caches
            probe = arr[: min(8, len(arr))]
            try:
                a = self._shared_packed(model, cache, len(prefix), probe)
                b = self._shared_expanded(model, cache, probe)
                self._packed_ok = bool(torch.allclose(a, b, atol=1e-4, rtol=0))
            except Exception:  # a model without 4-D mask support: use expanded caches
                self._packed_ok = False
        run = self._shared_packed if self._packed_ok else None
        parts = []
        step = max(1, PACKED_TOKENS // arr.shape[1]) if run else self.batch_size
        for start in range(0, len(arr), step):
            chunk = arr[start : start + step]
            lp = run(model, cache, len(prefix), chunk) if run else self._shared_expanded(model, cache, chunk)
            parts.append((lp[:, cols] if cols is not None else lp).cpu().numpy())
        return np.concatenate(parts, axis=0)

    def tree_logprobs(
        self, prefix: Sequence[int], branch_ids: Sequence[int], depth: int, columns: Sequence[int]
    ) -> list[Any]:
        """Next-token log-probs (``columns`` only) at every node of the complete ``len(branch_ids)``-ary
        tree of the given ``depth`` hanging after ``prefix``: level ``j`` is an array
        ``[branches**j, len(columns)]`` in lexicographic order (level 0 = right after the prefix).

        All nodes are packed into as few sequences as possible after the single prefix cache, with a
        tree attention mask (each node sees the prefix and its ancestors) and the positions of a plain
        sequence, so a 4-digit trie costs one forward pass over 1,110 tokens.
        """
        import copy

        import numpy as np
        import torch

        model, _ = self._load()
        cache, last = self._prefix_state(tuple(prefix))
        cols = list(columns)
        k = len(branch_ids)
        levels = [last[cols].cpu().numpy()[None, :]]
        if depth < 1:
            return levels
        # one subtree per first branch: nodes in BFS order, with their level and parent (local indices)
        sub_levels, sub_parent, sub_token = [], [], []
        frontier = [-1]
        for j in range(1, depth + 1):
            new = []
            for par in frontier:
                for b in range(k if j > 1 else 1):
                    sub_parent.append(par)
                    sub_levels.append(j)
                    sub_token.append(b)
                    new.append(len(sub_parent) - 1)
            frontier = new
        size = len(sub_parent)
        anc = np.zeros((size, size), dtype=bool)
        for i in range(size):
            anc[i, i] = True
            if sub_parent[i] >= 0:
                anc[i] |= anc[sub_parent[i]]
        per_call = max(1, TREE_TOKENS // size)
        outs = {j: np.empty((k**j, len(cols))) for j in range(1, depth + 1)}
        n_prefix = len(prefix)
        sub_levels_a = np.array(sub_levels)
        with torch.inference_mode():
            for first in range(0, k, per_call):
                firsts = list(range(first, min(k, first + per_call)))
                tokens, positions = [], []
                for f in firsts:
                    tokens.extend(
                        branch_ids[f] if lv == 1 else branch_ids[b]
                        for lv, b in zip(sub_levels, sub_token, strict=True)
                    )
                    positions.extend(n_prefix + lv - 1 for lv in sub_levels)
                n = len(tokens)
                mask = np.zeros((n, n_prefix + n), dtype=bool)
                mask[:, :n_prefix] = True
                for s_i in range(len(firsts)):
                    o = n_prefix + s_i * size
                    mask[s_i * size : (s_i + 1) * size, o : o + size] = anc
                kwargs = {self._cache_kwarg(): copy.deepcopy(cache)}
                logits = model(
                    input_ids=torch.tensor([tokens], dtype=torch.long, device=self.device),
                    position_ids=torch.tensor([positions], dtype=torch.long, device=self.device),
                    attention_mask=torch.from_numpy(mask)[None, None].to(self.device),
                    use_cache=True,
                    **kwargs,
                ).logits[0]
                lp = torch.log_softmax(logits.double(), dim=-1)[:, cols].cpu().numpy()
                for s_i, f in enumerate(firsts):
                    block = lp[s_i * size : (s_i + 1) * size]
                    for j in range(1, depth + 1):
                        rows = block[sub_levels_a == j]  # BFS order within a subtree = lexicographic
                        per = k ** (j - 1)
                        outs[j][f * per : (f + 1) * per] = rows
        return levels + [outs[j] for j in range(1, depth + 1)]

    def forest_logprobs(
        self,
        prefix: Sequence[int],
        queries: Sequence[Sequence[int]],
        columns: Sequence[int],
        *,
        max_tokens: int = FOREST_TOKENS,
    ) -> Any:
        """Next-token log-probs (``columns`` only; float64 ``[len(queries), len(columns)]``) after
        ``prefix + query`` for each non-empty token path ``query``.

        The queries are merged into a trie (a token shared by several queries runs once) and packed into as
        few sequences of at most ``max_tokens`` new tokens as possible after the single cached ``prefix``,
        with a tree attention mask (each token sees the prefix and its own ancestors) and the positions of a
        plain sequence. Many contexts, triggers and trie levels thus share one forward pass.
        """
        import copy

        import numpy as np
        import torch

        if any(len(q) == 0 for q in queries):
            raise ValueError("cannot score an empty query")
        model, _ = self._load()
        cache = self._prefix_state(tuple(prefix))[0] if prefix else None
        cols = list(columns)
        out = np.empty((len(queries), len(cols)), dtype=np.float64)
        n_prefix = len(prefix)
        order = sorted(range(len(queries)), key=lambda i: tuple(queries[i]))  # neighbours share ancestors
        chunk: list[int] = []
        nodes: dict[tuple[int, ...], int] = {}

        def run() -> None:
            if not chunk:
                return
            keys = list(nodes)
            parent = [nodes.get(k[:-1], -1) for k in keys]
            n = len(keys)
            anc = np.zeros((n, n_prefix + n), dtype=bool)
            anc[:, :n_prefix] = True
            for i in range(n):  # parents precede their children (insertion order)
                if parent[i] >= 0:
                    anc[i] = anc[parent[i]]
                anc[i, n_prefix + i] = True
            tokens = [k[-1] for k in keys]
            positions = [n_prefix + len(k) - 1 for k in keys]
            with torch.inference_mode():
                kwargs = {self._cache_kwarg(): copy.deepcopy(cache)} if cache is not None else {}
                logits = model(
                    input_ids=torch.tensor([tokens], dtype=torch.long, device=self.device),
                    position_ids=torch.tensor([positions], dtype=torch.long, device=self.device),
                    attention_mask=torch.from_numpy(anc)[None, None].to(self.device),
                    use_cache=True,
                    **kwargs,
                ).logits[0]
                rows = torch.tensor([nodes[tuple(queries[i])] for i in chunk], device=self.device)
                lp = torch.log_softmax(logits[rows].double(), dim=-1)[:, cols].cpu().numpy()
            out[chunk] = lp
            chunk.clear()
            nodes.clear()

        for i in order:
            q = tuple(queries[i])
            new = [q[:j] for j in range(1, len(q) + 1) if q[:j] not in nodes]
            if chunk and len(nodes) + len(new) > max_tokens:
                run()
                new = [q[:j] for j in range(1, len(q) + 1)]
            for key in new:
                nodes[key] = len(nodes)
            chunk.append(i)
        run()
        return out

    def _shared_expanded(self, model: Any, cache: Any, ids: Any) -> Any:
        """Next-token log-probs after ``prefix + row`` for each row, with the prefix cache copied per row."""
        import copy

        import torch

        with torch.inference_mode():
            expanded = copy.deepcopy(cache)
            expanded.batch_repeat_interleave(ids.shape[0])
            kwargs = {self._cache_kwarg(): expanded}
            logits = model(input_ids=ids, use_cache=True, logits_to_keep=1, **kwargs).logits
            return torch.log_softmax(logits[:, -1, :].double(), dim=-1)

    def _shared_packed(self, model: Any, cache: Any, n_prefix: int, ids: Any) -> Any:
        """Same numbers as :meth:`_shared_expanded`, with all rows packed into one sequence after the single
        prefix cache and a block mask (each row sees the prefix and its own earlier tokens): no cache copies
        per row, several times faster for long prompts."""
        import copy

        import torch

        b, j = ids.shape
        n = b * j
        group = torch.arange(b).repeat_interleave(j)
        within = torch.arange(j).repeat(b)
        own = (group[:, None] == group[None, :]) & (within[None, :] <= within[:, None])
        mask = torch.cat([torch.ones(n, n_prefix, dtype=torch.bool), own], dim=1)[None, None].to(self.device)
        positions = (n_prefix + within).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            kwargs = {self._cache_kwarg(): copy.deepcopy(cache)}
            logits = model(
                input_ids=ids.reshape(1, n),
                position_ids=positions,
                attention_mask=mask,
                use_cache=True,
                **kwargs,
            ).logits
            last = logits[0].reshape(b, j, -1)[:, -1, :].double()
            return torch.log_softmax(last, dim=-1)

    def _cache_kwarg(self) -> str:
        if self._cache_name is None:
            import inspect

            params = inspect.signature(self.model.forward).parameters
            self._cache_name = "cache" if "cache" in params else "past_key_values"
        return self._cache_name

    def continuation_logprobs(self, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]]) -> Any:
        """``sum log p(continuation | prompt)`` for each token-id continuation (float64 array); the prompt
        runs once and its KV cache is shared."""
        import copy

        import numpy as np
        import torch

        model, _ = self._load()
        scores = np.zeros(len(continuations), dtype=np.float64)
        by_len: dict[int, list[int]] = {}
        for i, c in enumerate(continuations):
            by_len.setdefault(len(c), []).append(i)
        cache, last = self._prefix_state(tuple(prompt_ids))
        with torch.inference_mode():
            for length, rows in sorted(by_len.items()):
                if length == 0:
                    continue
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start : start + self.batch_size]
                    ids = torch.tensor(
                        [list(continuations[i]) for i in chunk], dtype=torch.long, device=self.device
                    )
                    first = last[ids[:, 0]]  # log p(first token | prompt), from the prompt's own pass
                    if length == 1:
                        scores[chunk] = first.cpu().numpy()
                        continue
                    expanded = copy.deepcopy(cache)
                    expanded.batch_repeat_interleave(len(chunk))
                    kwargs = {self._cache_kwarg(): expanded}
                    logits = model(input_ids=ids[:, :-1], use_cache=True, **kwargs).logits.double()
                    lp = torch.log_softmax(logits, dim=-1)
                    rest = lp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).sum(-1)
                    scores[chunk] = (first + rest).cpu().numpy()
        return scores

    def _sample(
        self, prompt: str, n: int, max_new_tokens: int, temperature: float, seed: int | None
    ) -> tuple[list[Sample], dict]:
        import torch

        model, tok = self._load()
        ids = torch.tensor([self.encode(prompt)], dtype=torch.long, device=self.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            kwargs: dict[str, Any] = {
                "max_new_tokens": max_new_tokens,
                "pad_token_id": pad,
                "attention_mask": torch.ones_like(ids),
                "max_time": self.timeout,
            }
            if temperature <= 0:
                out = model.generate(ids, do_sample=False, **kwargs)
                texts = [tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)] * n
            else:
                out = model.generate(
                    ids,
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    top_p=1.0,
                    num_return_sequences=n,
                    **kwargs,
                )
                texts = [tok.decode(row[ids.shape[1] :].tolist(), skip_special_tokens=True) for row in out]
        return [Sample(text=t) for t in texts], {}

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
        self._prefix_cache.clear()
