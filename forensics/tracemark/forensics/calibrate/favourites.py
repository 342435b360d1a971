"""Salient-target accounts: the adversarial null built honestly.

Under ``tm-sig-v2`` no target is in the public salient set, so an account cannot be "salient" by
construction. The worst case left is an account whose targets some innocent model happens to favour
among the *eligible* candidates. For every null model ``M`` (the *source*) and the triggers of a few fresh
accounts, :func:`favourites` finds ``M``'s highest-scoring eligible candidate (v2) and its highest-scoring
candidate overall (v1, no salient set); the accounts built from them are then tested, by the unchanged
procedure, against ``M`` itself and against every other null model.

* On ``M`` itself such an account is rejected whenever ``M``'s favourite is sharp: that is the conditional
  error every rank test has, and a random key produces it with probability ``1 / N_eligible`` per pair
  (the false-alarm rate over random keys is what the fresh-account runs measure).
* On the *other* innocent models the v2 accounts must stay at the nominal rate: what one innocent model
  favours beyond the public salient set is not favoured by all of them. The v1 accounts (targets an
  innocent model likes overall: ``100000``, ``240000``, an echo of the trigger, ...) show the contrast:
  models that share public priors reject them together, so an unlucky v1 account is accused by every
  innocent model, not by a fraction ``alpha`` of them.

* v1 random keys: the accounts the old derivation draws with a target in the public salient set (about
  one key in eight at 6 digits; ``tm-sig-v2`` never draws them), scored under v1 on every null model: on a
  model with the usual priors (the embedded SmolLM2) they are the accounts every innocent model accuses.

These accounts are built or selected, not drawn: their rates are reported next to the random-key runs,
not pooled with them and not gated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tracemark.forensics.scheme import SignatureScheme
from tracemark.forensics.scoring import SearchCensored

THRESHOLD_STEP = 3.0  # the favourite search lowers its score threshold by this much until one is found


def favourites(scorer: Any, scheme: SignatureScheme, trigger: str) -> tuple[str | None, str | None]:
    """(best eligible candidate, best candidate overall) of the scorer's model after ``trigger``.

    Exact: an exact trie search at thresholds ``-3, -6, ...`` (within the scheme's search budget) returns
    every candidate scoring at least the threshold; the first search holding an eligible candidate gives
    both answers. ``None`` where the search would exceed the budget first (a flat model favours nothing
    sharply) or the tokenizer merges digits."""
    layouts = scorer.layouts(trigger)
    if layouts is None:
        return None, None
    salient = scheme.salient_for(trigger)
    overall: str | None = None
    threshold = -THRESHOLD_STEP
    while threshold >= -THRESHOLD_STEP * 2 * scheme.digits:
        try:
            leaves, scores = scorer.search(layouts, threshold, budget=scheme.search_budget)
        except SearchCensored:
            return None, overall
        if leaves:
            order = np.argsort(-np.asarray(scores), kind="stable")
            if overall is None:
                overall = leaves[int(order[0])]
            for i in order:
                if salient is None or not salient.contains_text(leaves[int(i)]):
                    return leaves[int(i)], overall
        threshold -= THRESHOLD_STEP
    return None, overall


def summarise_favourites(tests: list[Any], alpha: float, conf: float, check: Any) -> dict:
    """Rates of the salient-target accounts at ``alpha``: per variant (v2, v1) on their source model and on
    the other null models (``check(k, n, alpha, conf)`` gives each rate's intervals)."""
    out: dict[str, Any] = {}
    for variant in ("v2", "v1"):
        rows = [t for t in tests if t.kind == f"favourite-{variant}"]
        own = [t for t in rows if t.model == t.source]
        other = [t for t in rows if t.model != t.source]
        entry = {}
        for label, group in (("source model", own), ("other null models", other)):
            k = sum(t.p_value <= alpha for t in group)
            entry[label] = check(k, len(group), alpha, conf).as_dict() if group else None
            if group:
                entry[label]["status"] = "reported (built accounts, not gated)"
                entry[label]["median_log10_p"] = float(np.median([t.log10_p for t in group]))
                entry[label]["censored_pairs"] = sum(t.censored for t in group)
                entry[label]["pairs"] = sum(len(t.ranks) for t in group)
        entry["accounts"] = len({(t.source, t.account) for t in rows})
        out[variant] = entry
    rows = [t for t in tests if t.kind == "v1-salient"]
    entry = {"accounts": len({t.account for t in rows})}
    for family in sorted({t.family for t in rows}):
        group = [t for t in rows if t.family == family]
        k = sum(t.p_value <= alpha for t in group)
        entry[family] = check(k, len(group), alpha, conf).as_dict()
        entry[family]["status"] = "reported (v1 accounts, not gated)"
        entry[family]["median_log10_p"] = float(np.median([t.log10_p for t in group]))
    out["v1-salient"] = entry
    return out
