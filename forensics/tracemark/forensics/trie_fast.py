"""The fast exact trie rank: the same ranks as the level-by-level search of
:class:`~tracemark.forensics.scoring.WhiteBoxScorer`, at a fraction of the forward passes.

What changes is only *how* the digit log-probs are computed and how much of the trie is visited:

* every context's prompt shares its leading tokens (the chat prefix and the context's first sentence) with
  the others and with every other trigger: that prefix runs once and its KV cache is reused; each
  (context, trie node) is a token path after it, and all paths of one level (all contexts, the target's
  path) go through one packed forward (:meth:`~tracemark.forensics.adapters.LocalModelSuspect.
  forest_logprobs`: a token shared by several paths runs once);
* the search stops as soon as the rank is decided. A pair is censored (``p = 1``) when some level keeps more
  than ``search_budget`` prefixes; with ``combine = "max"`` a prefix is kept when *any* context scores it
  above the threshold, so the prefixes one context alone keeps are a lower bound on the level's count. That
  context is searched best-first, and the search stops as soon as the bound exceeds the budget (an innocent
  suspect's pair is decided after about ``budget / 10`` expansions instead of ``3 x 1,111``).

Floating point: a forward pass packed differently gives log-probs that differ in the last bits, so every
decision is taken with a margin (:func:`calibrate`): a prefix within it of the threshold, a leaf within it
of the target, or a count that the margin could move across the budget makes the outcome
*ambiguous*, and :meth:`WhiteBoxScorer.score_pair` then runs the reference search for that pair. So the
rank, the p-value, the method and the kept-node count are the reference search's whenever the two
computations agree within half the margin (checked by tests/forensics/test_scoring_batched.py); only the
target's score may differ in its last bits, and ``forward_passes`` counts what ran.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MIN_MARGIN = 1e-6
MARGIN_FACTOR = 4.0
"""The margin is ``MARGIN_FACTOR x digits x`` the largest per-digit log-prob difference measured between the
two computations (:func:`calibrate`), at least :data:`MIN_MARGIN`: a candidate's score sums ``digits`` terms
and the threshold moves with the target's, so this is twice the worst case."""
MAX_DISCREPANCY = 1e-2
"""Beyond this per-digit difference the packed forward is considered broken for the model (no fast path)."""


@dataclass
class FastOutcome:
    """A decided rank: ``method`` ``trie-exact`` or ``trie-censored``; ``extra`` as the reference has it."""

    method: str
    better: int
    tied: int
    target_score: float
    queries: int
    extra: dict = field(default_factory=dict)


class Ambiguous(Exception):
    """A decision fell within the margin: the reference search decides this pair."""


def supports_fast(suspect: Any) -> bool:
    """Whether ``suspect`` can run the fast trie search (packed token forests after a cached prefix)."""
    return callable(getattr(suspect, "forest_logprobs", None))


Item = tuple[int, str]  # (context, trie node): the next-digit log-probs after prompt_k + sep + node
Steps = Generator[list[Item], None, FastOutcome]


class FastTrie:
    """One pair's trie search over ``layouts`` (one per context) with ``combine`` (``max`` or ``mean``).

    :meth:`steps` is a generator that yields the (context, node) items it needs next and reads their
    log-probs from :attr:`known`; :func:`run_lockstep` drives many pairs at once, one packed forward per
    round for all of them."""

    def __init__(self, suspect: Any, layouts: list, digits: int, combine: str, margin: float) -> None:
        self.suspect = suspect
        self.margin = margin
        self.digits = digits
        self.combine = combine
        self.queries = 0
        self.known: dict[Item, np.ndarray] = {}
        prompts = [list(lay.prompt_ids) for lay in layouts]
        shared = min(len(p) for p in prompts) - 1
        for k in range(shared):
            if any(p[k] != prompts[0][k] for p in prompts):
                shared = k
                break
        self.prefix = tuple(prompts[0][:shared])
        self.tails = [tuple(p[shared:]) + tuple(lay.sep_ids) for p, lay in zip(prompts, layouts, strict=True)]
        self.digit_ids = [tuple(lay.digit_ids) for lay in layouts]
        if len(set(self.digit_ids)) != 1:  # digit tokens differ per context: not worth a special case
            raise Ambiguous("digit tokens differ between contexts")
        self.columns = list(layouts[0].digit_ids)
        self.probe_context = 0  # the context whose best-first search may prove censoring

    def query(self, item: Item) -> tuple[int, ...]:
        k, node = item
        return self.tails[k] + tuple(self.digit_ids[k][int(ch)] for ch in node)

    def missing(self, items: list[Item]) -> list[Item]:
        return [it for it in dict.fromkeys(items) if it not in self.known]

    def table(self, contexts: list[int], nodes: list[str]) -> np.ndarray:
        """Known log-probs as ``[len(contexts), len(nodes), 10]``."""
        out = np.empty((len(contexts), len(nodes), 10), dtype=np.float64)
        for a, k in enumerate(contexts):
            for b, node in enumerate(nodes):
                out[a, b] = self.known[(k, node)]
        return out

    def level(self, contexts: list[int], nodes: list[str]) -> np.ndarray:
        """Compute (one forest) and return ``[len(contexts), len(nodes), 10]``."""
        run_lockstep([(self, _fetch(self, [(k, n) for k in contexts for n in nodes]))])
        return self.table(contexts, nodes)

    def rank(self, target: str, eligible: Any, budget: int | None) -> FastOutcome:
        """This pair alone (see :func:`run_lockstep` for many); raises :class:`Ambiguous`."""
        out = run_lockstep([(self, self.steps(target, eligible, budget))])[0]
        if isinstance(out, Ambiguous):
            raise out
        return out

    def _combine(self, per_context: np.ndarray) -> np.ndarray:
        return per_context.max(axis=0) if self.combine == "max" else per_context.mean(axis=0)

    # the search
    def steps(self, target: str, eligible: Any, budget: int | None) -> Steps:
        """Decide the pair (raise :class:`Ambiguous` when the margin does not allow it)."""
        contexts = list(range(len(self.tails)))
        probe = budget is not None and self.combine == "max" and self.digits >= 2
        items = [(k, target[:j]) for k in contexts for j in range(self.digits)]
        if probe:  # the probe context's first levels ride along with the target's paths
            depth = min(2, self.digits - 2)
            items += [(self.probe_context, node) for node in _complete(depth)]
        yield self.missing(items)
        per = np.zeros(len(contexts), dtype=np.float64)
        for j in range(self.digits):
            per += np.array([self.known[(k, target[:j])][int(target[j])] for k in contexts])
        s_t = float(self._combine(per[:, None])[0])
        tol = 1e-6 * max(1.0, abs(s_t)) + 1e-4
        threshold = s_t - tol
        if probe:
            assert budget is not None
            self.probe_context = int(np.argmax(per))
            level = yield from self._probe(self.probe_context, threshold, budget)
            if level is not None:
                return self._censored(level, budget, s_t)
        return (yield from self._exact(target, threshold, s_t, eligible, budget))

    def _censored(self, level: int, budget: int, s_t: float) -> FastOutcome:
        why = f"more than {budget} prefixes at level {level}"
        return FastOutcome(
            method="trie-censored",
            better=-1,  # the caller reports n - 1
            tied=0,
            target_score=s_t,
            queries=self.queries,
            extra={"censored": f"search budget {budget} exceeded ({why}): p reported as 1"},
        )

    def _probe(self, k: int, threshold: float, budget: int) -> Generator[list[Item], None, int | None]:
        """Best-first search of context ``k`` alone for more than ``budget`` prefixes (at one level below the
        last) that score ``>= threshold + margin`` in it: each is kept by the max-combined search too. The
        level where the count was exceeded, or ``None``."""
        sure = threshold + self.margin
        nodes, acc = [""], np.zeros(1, dtype=np.float64)
        for level in range(self.digits - 1):
            order = np.argsort(-acc, kind="stable")
            nodes = [nodes[i] for i in order]
            acc = acc[order]
            kept_nodes: list[str] = []
            kept_acc: list[np.ndarray] = []
            count, start, seen = 0, 0, 0
            while start < len(nodes):
                if 10 * (len(nodes) - start) + count <= budget:
                    step = len(nodes) - start  # cannot decide at this level: expand everything left
                else:  # just enough nodes at the rate seen so far, plus a few
                    rate = count / seen if seen else 1.0
                    step = math.ceil((budget + 1 - count) / (10 * max(rate, 0.05))) + 8
                chunk = nodes[start : start + step]
                yield self.missing([(k, n) for n in chunk])
                lp = self.table([k], chunk)[0]
                child = (acc[start : start + step, None] + lp).reshape(-1)
                good = np.nonzero(child >= sure)[0]
                count += good.size
                seen += child.size
                kept_nodes.extend(chunk[i // 10] + str(i % 10) for i in good)
                kept_acc.append(child[good])
                start += step
                if count > budget:
                    return level + 1
            if not kept_nodes:
                return None
            nodes, acc = kept_nodes, np.concatenate(kept_acc)
        return None

    def _exact(
        self, target: str, threshold: float, s_t: float, eligible: Any, budget: int | None
    ) -> Generator[list[Item], None, FastOutcome]:
        contexts = list(range(len(self.tails)))
        low, high = threshold - self.margin, threshold + self.margin
        nodes = [""]
        acc = np.zeros((len(contexts), 1), dtype=np.float64)
        comb = np.zeros(1)
        for level in range(self.digits):
            yield self.missing([(k, n) for k in contexts for n in nodes])
            child = (acc[:, :, None] + self.table(contexts, nodes)).reshape(len(contexts), -1)
            comb = self._combine(child)
            possible = np.nonzero(comb >= low)[0]
            if budget is not None and level < self.digits - 1:
                if int(np.count_nonzero(comb >= high)) > budget:
                    return self._censored(level + 1, budget, s_t)
                if possible.size > budget:
                    raise Ambiguous(f"level {level + 1} count within the margin of the budget")
            nodes = [nodes[i // 10] + str(i % 10) for i in possible]
            acc = child[:, possible]
            comb = comb[possible]
            if not nodes:
                break
        keep = [i for i, c in enumerate(nodes) if eligible.contains(c)]
        leaves = [nodes[i] for i in keep]
        scores = comb[keep]
        if np.any((scores >= low) & (scores < high)):
            raise Ambiguous("a leaf within the margin of the threshold")
        if target not in leaves:
            raise Ambiguous("the target's own leaf fell below the threshold")
        i_t = leaves.index(target)
        t = float(scores[i_t])
        others = np.delete(scores, i_t)
        if np.any(np.abs(others - t) <= self.margin):
            raise Ambiguous("a candidate within the margin of the target")
        return FastOutcome(
            method="trie-exact",
            better=int(np.count_nonzero(others > t)),
            tied=0,
            target_score=t,
            queries=self.queries,
            extra={"nodes_kept": int(np.count_nonzero(scores >= threshold))},
        )


def _complete(depth: int) -> list[str]:
    """Every trie node of length ``0..depth``."""
    out = [""]
    for j in range(1, depth + 1):
        out += [f"{i:0{j}d}" for i in range(10**j)]
    return out


def _fetch(trie: FastTrie, items: list[Item]) -> Steps:
    yield trie.missing(items)
    return FastOutcome("fetch", 0, 0, 0.0, trie.queries)


def run_lockstep(jobs: list[tuple[FastTrie, Steps]]) -> list[FastOutcome | Ambiguous]:
    """Drive several pairs' :meth:`FastTrie.steps` together: each round, the items every pending pair needs
    go through one :meth:`forest_logprobs` call per shared prefix. Returns each pair's outcome, or the
    :class:`Ambiguous` it raised (the caller then runs the reference search for it)."""
    results: list[FastOutcome | Ambiguous | None] = [None] * len(jobs)
    pending: dict[int, list[Item]] = {}

    def advance(i: int) -> None:
        try:
            pending[i] = next(jobs[i][1])
        except StopIteration as stop:
            results[i] = stop.value
        except Ambiguous as exc:
            results[i] = exc

    for i in range(len(jobs)):
        advance(i)
    while pending:
        groups: dict[tuple, list[int]] = {}
        for i in pending:
            trie = jobs[i][0]
            groups.setdefault((id(trie.suspect), trie.prefix, tuple(trie.columns)), []).append(i)
        for (_, prefix, _), members in groups.items():
            queries, owners = [], []
            for i in members:
                trie = jobs[i][0]
                for item in pending[i]:
                    queries.append(trie.query(item))
                    owners.append((i, item))
            if queries:
                first = jobs[members[0]][0]
                lp = first.suspect.forest_logprobs(prefix, queries, first.columns)
                for row, (i, item) in zip(lp, owners, strict=True):
                    jobs[i][0].known[item] = row
                    jobs[i][0].queries += 1
        current = list(pending)
        pending.clear()
        for i in current:
            advance(i)
    return [r if r is not None else Ambiguous("no outcome") for r in results]


def calibrate(reference: Any, trie: FastTrie, layouts: list, target: str) -> float | None:
    """The margin for ``trie``'s suspect: the largest difference between the reference per-digit log-probs
    (``reference(layouts, nodes)``, ``[contexts, nodes, 10]``) and the packed ones, on the target's prefixes
    and three fixed ones per level, times ``MARGIN_FACTOR x digits``; ``None`` when they disagree beyond
    :data:`MAX_DISCREPANCY` (the fast path is then not used)."""
    delta = 0.0
    for j in range(trie.digits):  # the reference takes one prefix length per call
        nodes = sorted({target[:j], "0" * j, "5" * j, "9" * j})
        a = np.asarray(reference(layouts, nodes), dtype=np.float64)
        b = trie.level(list(range(len(trie.tails))), nodes)
        if a.shape != b.shape or not np.isfinite(b).all():
            return None
        delta = max(delta, float(np.max(np.abs(a - b))))
    if not delta <= MAX_DISCREPANCY:
        return None
    return max(MIN_MARGIN, MARGIN_FACTOR * trie.digits * delta)


class FastScoring:
    """The fast path of :class:`~tracemark.forensics.scoring.WhiteBoxScorer` (a mixin: it uses the scorer's
    ``suspect``, ``space``, ``combine``, ``search_budget``, ``layouts``, ``eligible``, ``score_pair`` and
    reference ``_level_logprobs``)."""

    suspect: Any
    space: Any
    combine: str
    search_budget: int | None
    fast: bool
    fast_margin: float | None
    fast_fallbacks: int
    forward_passes: int
    _prepared: dict
    _probe_context: int
    _fast_seconds: float

    def _fast_rank(self, layouts: Any, pair: Any, eligible: Any) -> Any:
        """The pair decided by :class:`~tracemark.forensics.trie_fast.FastTrie` (same rank as the reference
        search), or ``None``: not supported by the suspect, turned off (``fast=False``), or ambiguous within
        the floating-point margin (then the reference search decides)."""
        if pair.pair_id in self._prepared:
            out, queries, self._fast_seconds = self._prepared.pop(pair.pair_id)
        else:
            out, queries, _ = self._fast_outcomes([(pair, layouts, eligible)])[0]
        self.forward_passes += queries
        return out

    def _fast_outcomes(self, jobs: list[tuple[Any, Any, Any]]) -> list[tuple[Any, int, float]]:
        """(outcome or ``None``, queries, seconds) per (pair, layouts, eligible), all run in lockstep."""
        start = time.perf_counter()
        none: tuple[Any, int, float] = (None, 0, 0.0)
        if not self.fast or not supports_fast(self.suspect) or any(j[1] is None for j in jobs):
            return [none] * len(jobs)
        tries: list[FastTrie | None] = []
        for pair, layouts, _ in jobs:
            try:
                trie = FastTrie(
                    self.suspect, layouts, self.space.digits, self.combine, self.fast_margin or 0.0
                )
            except Ambiguous:
                trie = None
            if trie is not None and self.fast_margin is None:  # measure how far the computations differ
                self.fast_margin = calibrate(self._level_logprobs, trie, layouts, pair.target)
                if self.fast_margin is None:
                    self.fast = False
                    return [none] * len(jobs)
                trie.margin = self.fast_margin
            if trie is not None:
                trie.probe_context = self._probe_context
            tries.append(trie)
        live = [i for i, t in enumerate(tries) if t is not None]
        steps = []
        for i in live:
            trie = tries[i]
            assert trie is not None
            steps.append((trie, trie.steps(jobs[i][0].target, jobs[i][2], self.search_budget)))
        outcomes = run_lockstep(steps)
        seconds = (time.perf_counter() - start) / max(1, len(jobs))
        result: list[tuple[Any, int, float]] = [(None, 0, seconds)] * len(jobs)
        for i, out in zip(live, outcomes, strict=True):
            trie = tries[i]
            assert trie is not None
            self._probe_context = trie.probe_context  # the next pair's probe starts there
            if isinstance(out, Ambiguous):
                self.fast_fallbacks += 1
                result[i] = (None, trie.queries, seconds)
            else:
                result[i] = (out, trie.queries, seconds)
        return result

    def prepare(self, pairs: Sequence[Any]) -> int:
        """Run the trie searches of ``pairs`` in lockstep (one packed forward per round for all of them) and
        keep their outcomes for the next :meth:`score_pair` of each (which then only assembles the result
        and logs the query). Pairs that are not ranked by the trie (tables, merged digits, a target in the
        salient set) are left to :meth:`score_pair`. Returns how many pairs were prepared."""
        self._prepared.clear()
        jobs = []
        for pair in pairs:
            try:
                layouts = self.layouts(pair.trigger)
                if layouts is None or self._uses_table(layouts):
                    continue
                jobs.append((pair, layouts, self.eligible(pair)))
            except Exception:  # noqa: BLE001 - score_pair raises it again, in its place in the order
                log.debug("pair not prepared", exc_info=True)
        if not jobs:
            return 0
        try:
            outcomes = self._fast_outcomes(jobs)
        except Exception:  # noqa: BLE001 - the pairs are scored one by one (and fail there if they must)
            log.warning("batched trie search failed; scoring pair by pair", exc_info=True)
            return 0
        for (pair, _, _), prepared in zip(jobs, outcomes, strict=True):
            self._prepared[pair.pair_id] = prepared
        return len(jobs)

    def score_pairs(self, pairs: Sequence[Any]) -> list[Any]:
        """:meth:`score_pair` (default arguments) for each pair, after :meth:`prepare` of all of them."""
        self.prepare(pairs)
        try:
            return [self.score_pair(pair) for pair in pairs]
        finally:
            self._prepared.clear()
