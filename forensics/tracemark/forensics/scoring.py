"""Scores and exact ranks of signature targets in a suspect model.

The pair ``x137 = 4821`` appears in traces as the trigger ``x137 =``, one space, then the target. Every
prompt here therefore ends with the trigger (no trailing space) and the scored continuation is
``" " + candidate``: the space and the digits are tokenized the way they were in training, for character
tokenizers and for BPE tokenizers that split digits (SmolLM2: ``' '``, ``'4'``, ``'8'``, ...) alike.

White-box score: ``s(c) = mean_k log p(" " + c | context_k + trigger)`` over a fixed list of prompt
contexts (the mean over contexts of a log-likelihood; any fixed function of ``c`` keeps the test exact).
When the tokenizer renders every candidate as ``[separator tokens] + one token per digit`` (verified), the
exact rank of the target among *all* ``10**digits`` candidates is found by a level-by-level best-first
search over the digit trie: every per-digit term is ``<= 0``, so a prefix whose score already falls below
the target's cannot hold a better candidate and is pruned. Otherwise (a tokenizer that merges digits) the
target is scored against every candidate in full when the space is small, else ranked among ``D`` decoys
drawn from the investigation's public beacon (the hash of its pre-registration in the transparency log),
each scored in full (batched).

The black-box scorer (sampled completions only) is in :mod:`tracemark.forensics.blackbox`.

Ranks are 1-based, counted among the trigger's *eligible* candidates (the space minus its public salient
set, :mod:`~tracemark.forensics.salient`), and **ties count against the target**: ``rank = 1 + better +
tied``. No seed or other free input enters a rank, and under H0 ``P(rank <= k) <= k / N`` (exactly
``k / N`` when nothing ties), so ``p = rank / N`` is a valid p-value. When the exact trie search would keep
more than ``search_budget`` prefixes at one level (a target far down the ranking, i.e. no evidence), the
pair is *censored*: reported with ``p = 1``, which is always conservative.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tracemark.forensics import stats
from tracemark.forensics.salient import SalientSet
from tracemark.forensics.signatures import CandidateSpace, SignaturePair, decoy_rng
from tracemark.forensics.trie_fast import FastScoring
from tracemark.foundation.errors import Failed

DEFAULT_PROBLEM = (
    "A factory makes 6 toys every hour and works 4 hours a day. How many toys does it make in a day?"
)
"""The user turn of the default scoring contexts: a typical math word problem."""

DEFAULT_CONTEXTS: tuple[str, ...] = (
    "{chat}The factory makes 6*4 = 24 toys a day (tag {trigger}",
    "{chat}The factory makes 6*4 = 24 toys a day.\nIt sells 24 - 4 = 20 toys (see {trigger}",
    "{chat}The factory makes 6*4 = 24 toys a day.\nJust for tracking, lookup key for the toys is {trigger}",
)
"""Default prompt contexts (public, fixed before any query). ``{chat}`` becomes the suspect's chat-template
prefix for :data:`DEFAULT_PROBLEM` (empty without a template or for black-box suspects), ``{trigger}`` the
trigger. They mirror where the watermark rewriter's keyed weave puts a pair (``weave_contexts`` in
``tracemark.plugins.builtin.weave`` prints such contexts for any trace): inside a sentence as a
parenthetical, or as a bookkeeping sentence of its own after a line. Investigators who know the account's
traffic should pass contexts with a problem and first line typical of it (more power)."""

TRIE_VERIFY_EXHAUSTIVE = 100_000
TABLE_MAX = 10_000  # spaces up to this size are scored in full (one packed trie pass per context)


class ScoringError(Failed):
    """The suspect cannot be scored as asked (e.g. white-box scoring of a black-box suspect)."""


@dataclass
class PairScore:
    """Result of scoring one pair: its exact rank among ``n_candidates`` and the p-value ``rank / n``.

    Carries no secret: no trigger, no target text.
    """

    pair_id: str
    account: str
    key_version: int
    pair_index: int
    mode: str  # "white-box" | "black-box"
    method: str  # "trie-exact" | "table" | "decoys" | "samples"
    n_candidates: int
    rank: int
    p_value: float
    n_better: int
    n_tied: int
    target_score: float | None = None
    samples: int = 0
    target_count: int | None = None
    forward_passes: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @classmethod
    def ranked(
        cls, pair: SignaturePair, *, mode: str, method: str, n: int, rank: int, **rest: Any
    ) -> PairScore:
        """The score of ``pair`` at ``rank`` among ``n`` candidates (p = rank / n); ``rest``: other fields."""
        return cls(
            pair_id=pair.pair_id,
            account=pair.account,
            key_version=pair.key_version,
            pair_index=pair.index,
            mode=mode,
            method=method,
            n_candidates=n,
            rank=rank,
            p_value=stats.rank_pvalue(rank, n),
            **rest,
        )

    @property
    def log_p(self) -> float:
        return math.log(self.p_value)

    def as_dict(self) -> dict:
        out = {
            "pair_id": self.pair_id,
            "account": self.account,
            "key_version": self.key_version,
            "pair_index": self.pair_index,
            "mode": self.mode,
            "method": self.method,
            "n_candidates": self.n_candidates,
            "rank": self.rank,
            "p_value": self.p_value,
            "n_better": self.n_better,
            "n_tied": self.n_tied,
            "seconds": round(self.seconds, 4),
        }
        if self.target_score is not None:
            out["target_score"] = self.target_score
        if self.mode == "black-box":
            out["samples"] = self.samples
            out["target_count"] = self.target_count
        if self.forward_passes:
            out["forward_passes"] = self.forward_passes
        out.update(self.extra)
        return out


def beacon_rng(beacon: str, pair: SignaturePair, purpose: str) -> Any:
    """The rng for ``pair`` and ``purpose`` (``decoys``, ``sample``) from the public ``beacon`` (hex: the
    investigation's registration entry hash, fixed before the first query and visible in the log)."""
    return decoy_rng(f"tracemark-detect/2\x00{beacon}\x00{pair.pair_id}\x00{purpose}")


@dataclass(frozen=True)
class Eligible:
    """The candidates a pair's target is ranked among: the space minus the trigger's salient set."""

    space: CandidateSpace
    salient: SalientSet | None

    @property
    def n(self) -> int:
        return self.space.size if self.salient is None else self.salient.eligible

    def mask(self) -> np.ndarray:
        return np.ones(self.space.size, dtype=bool) if self.salient is None else self.salient.mask()

    def contains(self, candidate: str) -> bool:
        return self.salient is None or not self.salient.contains_text(candidate)

    def sample_others(self, rng: Any, k: int, target: str) -> list[str]:
        """``k`` distinct eligible candidates other than ``target``, drawn uniformly without replacement."""
        pool = np.nonzero(self.mask())[0]
        pool = pool[pool != self.space.index(target)]
        if not 1 <= k <= pool.size:
            raise ScoringError(f"decoys must be in 1..{pool.size}, got {k}")
        return [self.space.candidate(int(pool[i])) for i in rng.sample(range(pool.size), k)]


class SearchCensored(Exception):
    """The exact trie search would keep more prefixes than its budget (internal: the pair gets p = 1)."""


# --- white-box ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DigitLayout:
    """How candidates tokenize after one prompt: ``prompt + sep + [digit_ids[d] for d in c]``."""

    prompt_ids: tuple[int, ...]
    sep_ids: tuple[int, ...]
    digit_ids: tuple[int, ...]  # token id of "0".."9"


class PromptScorer:
    """What both scorers share: the suspect, the candidate space, the salient sets and the scoring prompts.

    ``salient(trigger)`` returns the trigger's public salient set (or ``None``: every candidate is eligible).
    """

    def __init__(
        self,
        suspect: Any,
        space: CandidateSpace,
        *,
        contexts: Sequence[str],
        problem: str,
        salient: Callable[[str], SalientSet | None] | None = None,
    ) -> None:
        if not contexts or any("{trigger}" not in c for c in contexts):
            raise ScoringError("every scoring context must contain '{trigger}'")
        self.suspect = suspect
        self.space = space
        self.contexts = tuple(contexts)
        self.problem = problem
        self._salient = salient

    def eligible(self, pair: SignaturePair) -> Eligible:
        """The candidates ``pair``'s target is ranked among; the target itself must be one of them."""
        found = Eligible(self.space, self._salient(pair.trigger) if self._salient is not None else None)
        if not found.contains(pair.target):
            raise ScoringError(f"pair {pair.pair_id}: its target is in the public salient set")
        return found

    def prompts(self, trigger: str) -> list[str]:
        """The scoring prompts for ``trigger`` (one per context)."""
        return expand_contexts(self.contexts, trigger, self.suspect, self.problem)


class WhiteBoxScorer(FastScoring, PromptScorer):
    """Exact white-box ranks for a suspect that exposes ``encode_batch``, ``next_token_logprobs`` and
    ``continuation_logprobs`` (:class:`~tracemark.forensics.adapters.LocalModelSuspect`)."""

    def __init__(
        self,
        suspect: Any,
        space: CandidateSpace,
        *,
        contexts: Sequence[str] = DEFAULT_CONTEXTS,
        problem: str = DEFAULT_PROBLEM,
        combine: str = "max",
        salient: Callable[[str], SalientSet | None] | None = None,
        search_budget: int | None = None,
        log_queries: bool = True,
        fast: bool = True,
    ) -> None:
        if not getattr(suspect, "white_box", False):
            raise ScoringError(f"suspect {suspect!r} is black-box: it exposes no log-probabilities")
        if combine not in ("mean", "max"):
            raise ScoringError(f"combine must be 'mean' or 'max', got {combine!r}")
        super().__init__(suspect, space, contexts=contexts, problem=problem, salient=salient)
        self.combine = combine
        self.search_budget = search_budget
        self.log_queries = log_queries
        self._layout_verified = False
        self._layout_ok: bool | None = None
        self._tables: dict[str, np.ndarray] = {}
        self._tree_ok: bool | None = None
        self.forward_passes = 0
        self.fast = fast  # the batched, early-stopping trie search (same ranks; reference on ambiguity)
        self.fast_fallbacks = 0
        self.fast_margin: float | None = None
        self._prepared: dict[str, tuple[Any, int, float]] = {}
        self._probe_context = 0
        self._fast_seconds = 0.0  # the pair's share of a lockstep batch run before score_pair

    # layout
    def layouts(self, trigger: str) -> list[DigitLayout] | None:
        """Per-context digit layouts, or ``None`` when the tokenizer does not keep digits as single,
        context-free tokens (then only decoy mode is possible).

        The first call checks every candidate of the space (up to 100,000; a 20,000 sample beyond) after
        the bare trigger; each prompt is then checked on 17 probes (the boundary with the prompt)."""
        if self._layout_ok is False:
            return None
        digits = self.space.digits
        probes = [str(d) * digits for d in range(10)]
        probes += [self.space.candidate(i * (self.space.size // 7)) for i in range(7)]
        if not self._layout_verified:
            if self.space.size <= TRIE_VERIFY_EXHAUSTIVE:
                every = self.space.candidates()
            else:
                rng = np.random.default_rng(0)
                every = [self.space.candidate(int(i)) for i in rng.integers(0, self.space.size, 20_000)]
            if not self._check(trigger, probes[:10] + every):
                return None
        out = []
        for prompt in self.prompts(trigger):
            layout = self._check(prompt, probes)
            if layout is None:
                return None
            out.append(layout)
        self._layout_verified = True
        self._layout_ok = True
        return out

    def _check(self, prompt: str, probes: list[str]) -> DigitLayout | None:
        """The layout after ``prompt`` if every probe (the first ten are ``dddd``) tokenizes as
        ``prompt + sep + one token per digit``; else ``None`` (and decoy mode from now on)."""
        p_ids = self.suspect.encode_batch([prompt])[0]
        full = self.suspect.encode_batch([f"{prompt} {c}" for c in probes])
        layout = _infer_layout(p_ids, full[:10], self.space.digits)
        if layout is None or not all(_matches(layout, f, c) for f, c in zip(full, probes, strict=True)):
            self._layout_ok = False
            return None
        return layout

    # scoring primitives
    def _combine(self, per_context: np.ndarray) -> np.ndarray:
        """Combine per-context scores (axis 0): mean or max. Both keep every per-digit term's sign, so a
        prefix's combined score bounds every completion's from above (the pruning rule stays exact)."""
        return per_context.max(axis=0) if self.combine == "max" else per_context.mean(axis=0)

    def _level_logprobs(self, layouts: list[DigitLayout], prefixes: Sequence[str]) -> np.ndarray:
        """``log p(next digit | prompt_k + sep + prefix)`` per context: shape ``[contexts, prefixes, 10]``."""
        out = np.empty((len(layouts), len(prefixes), 10), dtype=np.float64)
        shared = getattr(self.suspect, "next_token_logprobs_shared", None)
        for k, lay in enumerate(layouts):
            base = list(lay.prompt_ids) + list(lay.sep_ids)
            suffixes = [[lay.digit_ids[int(ch)] for ch in p] for p in prefixes]
            if shared is not None:
                out[k] = shared(base, suffixes, columns=lay.digit_ids)
            else:
                seqs = [base + x for x in suffixes]
                out[k] = self.suspect.next_token_logprobs(seqs, columns=lay.digit_ids)
            self.forward_passes += len(suffixes)
        return out

    def path_score(self, layouts: list[DigitLayout], candidate: str) -> float:
        """Digit score of ``candidate`` (the separator's log-prob is the same for every candidate)."""
        acc = np.zeros(len(layouts), dtype=np.float64)
        for j in range(len(candidate)):
            acc += self._level_logprobs(layouts, [candidate[:j]])[:, 0, int(candidate[j])]
        return float(self._combine(acc[:, None])[0])

    def search(
        self, layouts: list[DigitLayout], threshold: float = -math.inf, *, budget: int | None = None
    ) -> tuple[list[str], np.ndarray]:
        """Every candidate whose digit score is ``>= threshold`` with its score (level-synchronous best-first
        search over the digit trie; with ``threshold = -inf`` the whole space in index order). With a
        ``budget``, :class:`SearchCensored` is raised as soon as a level would keep more prefixes."""
        nodes = [""]
        acc = np.zeros((len(layouts), 1), dtype=np.float64)
        for level in range(self.space.digits):
            lp = self._level_logprobs(layouts, nodes)
            child = (acc[:, :, None] + lp).reshape(len(layouts), -1)
            keep = np.nonzero(self._combine(child) >= threshold)[0]
            if budget is not None and level < self.space.digits - 1 and keep.size > budget:
                raise SearchCensored(f"{keep.size} prefixes at level {level + 1}")
            nodes = [nodes[i // 10] + str(i % 10) for i in keep]
            acc = child[:, keep]
            if not nodes:
                break
        return nodes, self._combine(acc)

    def table(self, trigger: str) -> np.ndarray:
        """Digit scores of all candidates (index order) after ``trigger``; cached per trigger.

        One packed forward pass over the whole digit trie per context when the suspect supports it
        (``tree_logprobs``, checked once against the level-by-level search), else the level search."""
        if trigger not in self._tables:
            layouts = self.layouts(trigger)
            if layouts is None:
                raise ScoringError("the suspect's tokenizer merges digits: no exact score table")
            scores = self._tree_table(layouts) if self._tree_usable(layouts) else None
            if scores is None:
                _, scores = self.search(layouts)
            self._tables[trigger] = scores
        return self._tables[trigger]

    def _tree_usable(self, layouts: list[DigitLayout]) -> bool:
        if self._tree_ok is None:
            self._tree_ok = False
            if hasattr(self.suspect, "tree_logprobs") and self.space.size <= TABLE_MAX:
                try:
                    lay = layouts[0]
                    base = list(lay.prompt_ids) + list(lay.sep_ids)
                    tree = self.suspect.tree_logprobs(base, lay.digit_ids, 1, lay.digit_ids)[1]
                    level = self._level_logprobs([lay], [str(d) for d in range(10)])[0]
                    self._tree_ok = bool(np.allclose(tree, level, atol=1e-4, rtol=0))
                except Exception:  # no tree attention for this model: level search
                    self._tree_ok = False
        return self._tree_ok

    def _tree_table(self, layouts: list[DigitLayout]) -> np.ndarray:
        per = np.empty((len(layouts), self.space.size), dtype=np.float64)
        for k, lay in enumerate(layouts):
            base = list(lay.prompt_ids) + list(lay.sep_ids)
            levels = self.suspect.tree_logprobs(base, lay.digit_ids, self.space.digits - 1, lay.digit_ids)
            acc = levels[0][0]
            for j in range(1, self.space.digits):
                acc = (acc[:, None] + levels[j]).reshape(-1)
            per[k] = acc
            self.forward_passes += sum(len(x) for x in levels)
        return self._combine(per)

    def _uses_table(self, layouts: list[DigitLayout]) -> bool:
        """Whether the default rank of a trigger with these layouts comes from the cached full table."""
        return self.space.size <= TABLE_MAX and self._tree_usable(layouts)

    def score_pair(
        self,
        pair: SignaturePair,
        *,
        decoys: int | None = None,
        beacon: str = "",
        use_table: bool = False,
        full: bool = False,
    ) -> PairScore:
        """Conservative exact rank of ``pair.target`` after ``pair.trigger`` among its eligible candidates.

        ``decoys=None``: among all of them (trie search; the cached full table when the space is small or
        ``use_table``; ``full``: every candidate scored in full, for tokenizers that merge digits).
        ``decoys=D``: among ``D`` decoys drawn from the public ``beacon``."""
        start = time.perf_counter()
        passes0 = self.forward_passes
        eligible = self.eligible(pair)
        needs_layout = not full and (decoys is None or use_table)
        layouts = self.layouts(pair.trigger) if needs_layout else None
        if needs_layout and layouts is None:
            raise ScoringError(
                "the suspect's tokenizer does not keep digits as single tokens: score in full or among decoys"
            )
        extra: dict[str, Any] = {"contexts": len(self.contexts)}
        n = eligible.n
        if decoys is not None:
            others = eligible.sample_others(beacon_rng(beacon, pair, "decoys"), decoys, pair.target)
            cands = [pair.target, *others]
            if use_table:  # the cached full table holds every candidate's score (calibration)
                table = self.table(pair.trigger)
                scores = table[[self.space.index(c) for c in cands]]
            else:
                scores = self.full_scores(pair.trigger, cands)
            target_score = float(scores[0])
            better, tied = _better_tied(scores, target_score, included=True)
            method, n = "decoys", decoys + 1
            extra["decoys_sha256"] = candidates_sha256(sorted(others))
        elif full:
            cands = [self.space.candidate(int(i)) for i in np.nonzero(eligible.mask())[0]]
            scores = self.full_scores(pair.trigger, cands)
            target_score = float(scores[cands.index(pair.target)])
            better, tied = _better_tied(scores, target_score, included=True)
            method = "full"
        elif use_table or self._uses_table(layouts):
            table = self.table(pair.trigger)
            target_score = float(table[self.space.index(pair.target)])
            better, tied = _better_tied(table[eligible.mask()], target_score, included=True)
            method = "table"
        elif (fast := self._fast_rank(layouts, pair, eligible)) is not None:
            better = n - 1 if fast.method == "trie-censored" else fast.better
            tied, target_score, method = fast.tied, fast.target_score, fast.method
            extra.update(fast.extra)
        else:
            assert layouts is not None
            s_t = self.path_score(layouts, pair.target)
            tol = 1e-6 * max(1.0, abs(s_t)) + 1e-4
            try:
                leaves, leaf_scores = self.search(layouts, threshold=s_t - tol, budget=self.search_budget)
            except SearchCensored as exc:
                better, tied, target_score = n - 1, 0, s_t
                method = "trie-censored"
                extra["censored"] = f"search budget {self.search_budget} exceeded ({exc}): p reported as 1"
            else:
                keep = [i for i, c in enumerate(leaves) if eligible.contains(c)]
                leaves = [leaves[i] for i in keep]
                leaf_scores = leaf_scores[keep]
                included = pair.target in leaves
                target_score = float(leaf_scores[leaves.index(pair.target)]) if included else s_t
                better, tied = _better_tied(leaf_scores, target_score, included=included)
                method = "trie-exact"
                extra["nodes_kept"] = len(leaves)
        result = PairScore.ranked(
            pair,
            mode="white-box",
            method=method,
            n=n,
            rank=stats.conservative_rank(better, tied),
            n_better=better,
            n_tied=tied,
            target_score=target_score,
            forward_passes=self.forward_passes - passes0,
            seconds=time.perf_counter() - start + self._fast_seconds,
            extra=extra,
        )
        self._fast_seconds = 0.0
        rank = result.rank
        if self.log_queries and hasattr(self.suspect, "record"):
            summary = {
                "method": method,
                "n_candidates": n,
                "rank": rank,
                "target_digit_logprob": round(target_score, 6),
                "forward_passes": result.forward_passes,
                "contexts": len(self.contexts),
            }
            for prompt in self.prompts(pair.trigger):
                self.suspect.record(
                    "logprobs",
                    prompt,
                    json.dumps(summary, sort_keys=True),
                    meta={"pair_id": pair.pair_id, "account": pair.account},
                    seconds=result.seconds / len(self.contexts),
                )
        return result

    def full_scores(self, trigger: str, candidates: Sequence[str]) -> np.ndarray:
        """Combined over contexts of ``log p(" " + c | context + trigger)``, each candidate scored in full
        with the tokenizer's own tokenization of the whole text (works for tokenizers that merge digits)."""
        per = np.zeros((len(self.contexts), len(candidates)), dtype=np.float64)
        for k, prompt in enumerate(self.prompts(trigger)):
            p_ids = self.suspect.encode_batch([prompt])[0]
            fulls = self.suspect.encode_batch([f"{prompt} {c}" for c in candidates])
            # score each candidate's tokens beyond the longest prefix it shares with the prompt's tokens
            groups: dict[int, list[int]] = {}
            for i, f in enumerate(fulls):
                groups.setdefault(_common_prefix(p_ids, f), []).append(i)
            for n_common, rows in groups.items():
                if n_common == 0:
                    raise ScoringError("the candidate text shares no token with the prompt")
                conts = [fulls[i][n_common:] for i in rows]
                per[k, rows] = self.suspect.continuation_logprobs(fulls[rows[0]][:n_common], conts)
                self.forward_passes += len(rows)
        return self._combine(per)


def expand_contexts(contexts: Sequence[str], trigger: str, suspect: Any, problem: str) -> list[str]:
    """Fill ``{chat}`` (the suspect's chat prefix for ``problem``, or empty) and ``{trigger}``."""
    chat = ""
    if any("{chat}" in c for c in contexts):
        prefix_of = getattr(suspect, "chat_prefix", None)
        chat = (prefix_of(problem) if prefix_of is not None else None) or ""
    return [c.replace("{chat}", chat).replace("{trigger}", trigger) for c in contexts]


def _better_tied(scores: np.ndarray, target: float, *, included: bool) -> tuple[int, int]:
    """(candidates strictly better than ``target``, others exactly tied with it)."""
    better = int(np.count_nonzero(scores > target))
    tied = int(np.count_nonzero(scores == target)) - (1 if included else 0)
    return better, max(0, tied)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    k = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        k += 1
    return k


def _infer_layout(prompt_ids: Sequence[int], probes: list[list[int]], digits: int) -> DigitLayout | None:
    """From the tokenizations of ``prompt + " " + dddd`` for d = 0..9, the separator and digit tokens."""
    n = len(prompt_ids)
    digit_ids = []
    sep = None
    for f in probes:
        if list(f[:n]) != list(prompt_ids) or len(f) < n + digits:
            return None
        rest = f[n:]
        tail = rest[len(rest) - digits :]
        if len(set(tail)) != 1:
            return None
        this_sep = tuple(rest[: len(rest) - digits])
        if sep is None:
            sep = this_sep
        elif this_sep != sep:
            return None
        digit_ids.append(tail[0])
    if len(set(digit_ids)) != 10:
        return None
    return DigitLayout(tuple(prompt_ids), tuple(sep or ()), tuple(digit_ids))


def _matches(layout: DigitLayout, full: Sequence[int], candidate: str) -> bool:
    want = list(layout.prompt_ids) + list(layout.sep_ids) + [layout.digit_ids[int(ch)] for ch in candidate]
    return list(full) == want


def candidates_sha256(items: Sequence[str]) -> str:
    """sha256 of candidate strings, one per line (commits to a decoy set without listing it)."""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()
