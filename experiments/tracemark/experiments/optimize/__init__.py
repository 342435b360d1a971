"""OPRO-style search for the ``optimized`` rewriter's instruction (``tracemark optimize``).

Each candidate instruction is scored by what a small proxy student still learns from traces rewritten
with it:

1. the sample's clean traces are rewritten with the candidate through the real ``optimized`` rewriter and
   the answer guard (:class:`~tracemark.plugins.pipeline.RewritePipeline`); ``kept`` counts the rewrites
   the guard delivered, ``fell_back`` those it replaced by the original trace;
2. a fresh proxy student is fine-tuned for a fixed budget on the delivered traces;
3. ``gain`` = held-out NLL of *clean* traces under the untrained proxy minus the same after fine-tuning
   (nats per token). Lower gain = better protection. ``score`` is the gain of a qualified candidate;
   a candidate whose ``preservation`` (kept / sample) is below the threshold is disqualified (score null).

New candidates come from an LLM shown the best-scored instructions so far (a meta-prompt, OPRO style);
they are deduplicated against everything already seen.

Run folder (resumable; the JSONL files are append-only, one ``write`` per line):

* ``config.json`` - the scoring configuration; a rerun must match it (else :class:`ConfigMismatch`);
* ``reference.json`` - untrained proxy NLL and the gain from clean (unrewritten) traces, computed once;
* ``proposals.jsonl`` - one line per round: the instructions proposed for it (so a resumed round reuses
  them instead of asking the LLM again);
* ``results.jsonl`` - one line per scored candidate (see :class:`CandidateResult`);
* ``state.json`` - a summary rewritten after each candidate (best so far, counts); derived, informative.

An interrupted run (Ctrl-C) loses at most the candidate being scored; rerunning the same command
continues where it stopped, never re-scoring a logged instruction.

Modules, by job: :mod:`.records` (configuration, plan, one scored candidate), :mod:`.folder` (the run
folder), :mod:`.sample` (problem sample, seed instructions, proxy model), :mod:`.scoring` (the proxy
student's gain), :mod:`.proposals` (meta-prompt and parsing), :mod:`.search` (the loop),
:mod:`.install` (making the best instruction the rewriter's default).

:mod:`.scoring` and :mod:`.search` import torch; ``ProxyScorer`` and ``run_search`` are therefore loaded on
first use, so ``tracemark optimize show|install`` (and ``tracemark --help``) stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tracemark.experiments.optimize.folder import LAYOUT_VERSION, RunFolder
from tracemark.experiments.optimize.install import install_instruction
from tracemark.experiments.optimize.proposals import (
    MAX_PROPOSAL_CHARS,
    META_SYSTEM,
    MIN_PROPOSAL_CHARS,
    meta_prompt,
    parse_proposal,
    propose_instructions,
)
from tracemark.experiments.optimize.records import (
    CandidateResult,
    ConfigMismatch,
    Event,
    OptimizeError,
    SearchConfig,
    SearchPlan,
    SearchSummary,
    best_of,
    instruction_sha,
)
from tracemark.experiments.optimize.sample import load_sample, prepare_proxy, read_seed_instructions

if TYPE_CHECKING:
    from tracemark.experiments.optimize.scoring import ProxyScorer
    from tracemark.experiments.optimize.search import run_search

__all__ = [
    "LAYOUT_VERSION",
    "MAX_PROPOSAL_CHARS",
    "META_SYSTEM",
    "MIN_PROPOSAL_CHARS",
    "CandidateResult",
    "ConfigMismatch",
    "Event",
    "OptimizeError",
    "ProxyScorer",
    "RunFolder",
    "SearchConfig",
    "SearchPlan",
    "SearchSummary",
    "best_of",
    "install_instruction",
    "instruction_sha",
    "load_sample",
    "meta_prompt",
    "parse_proposal",
    "prepare_proxy",
    "propose_instructions",
    "read_seed_instructions",
    "run_search",
]

_IMPORTS_TORCH = {"ProxyScorer": "scoring", "run_search": "search"}


def __getattr__(name: str) -> Any:
    """``ProxyScorer`` and ``run_search`` on first use (their modules import torch)."""
    if name in _IMPORTS_TORCH:
        return getattr(importlib.import_module(f"{__name__}.{_IMPORTS_TORCH[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
