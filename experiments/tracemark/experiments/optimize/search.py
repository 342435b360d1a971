"""The search loop: score the built-in and seed instructions, then rounds of proposals (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tracemark.experiments.optimize.folder import RunFolder
from tracemark.experiments.optimize.proposals import propose_instructions
from tracemark.experiments.optimize.records import (
    Event,
    SearchConfig,
    SearchPlan,
    SearchSummary,
    best_of,
    instruction_sha,
    no_events,
    norm_instruction,
)
from tracemark.experiments.optimize.sample import prepare_proxy
from tracemark.experiments.optimize.scoring import ProxyScorer
from tracemark.plugins.builtin.optimized import OPTIMIZED_INSTRUCTION


def run_search(
    run_dir: str | Path,
    config: SearchConfig,
    plan: SearchPlan,
    llm: Any,
    *,
    force: bool = False,
    proxy_dir: str | Path | None = None,
    on_event: Event = no_events,
) -> SearchSummary:
    """Run (or continue) the search in ``run_dir`` (see :mod:`tracemark.experiments.optimize`); ``llm`` has
    ``chat``."""
    folder = RunFolder(run_dir)
    folder.open(config, force=force)
    proxy = Path(proxy_dir) if proxy_dir is not None else prepare_proxy(config, folder.path)
    scorer = ProxyScorer(config, proxy, llm, plan=plan, on_event=on_event)
    results = folder.results()
    summary = SearchSummary(results=results)
    by_sha = {r.sha: r for r in results}
    known = {norm_instruction(r.instruction) for r in results}

    reference = folder.reference()
    if reference is None:
        on_event("stage", {"text": "reference: untrained proxy and clean traces"})
        reference = scorer.reference()
        folder.write_reference(reference)
    summary.reference = reference

    def score_all(round_: int, candidates: list[tuple[str, str]]) -> None:
        for index, (instruction, origin) in enumerate(candidates):
            sha = instruction_sha(instruction)
            if sha in by_sha:
                summary.reused += 1
                continue
            on_event(
                "candidate_start",
                {"round": round_, "index": index, "count": len(candidates), "sha": sha, "origin": origin},
            )
            result = scorer.score(instruction, round_=round_, origin=origin, reference=reference)
            folder.append_result(result)
            results.append(result)
            by_sha[sha] = result
            known.add(norm_instruction(instruction))
            summary.scored_now += 1
            folder.write_state(results, rounds_done=round_, status="running")
            on_event("candidate", {"result": result, "best": best_of(results)})

    initial = [(OPTIMIZED_INSTRUCTION, "built-in")] + [(s, "seed") for s in plan.seeds]
    deduped: list[tuple[str, str]] = []
    for text, origin in initial:
        if norm_instruction(text) not in {norm_instruction(t) for t, _ in deduped}:
            deduped.append((text.strip(), origin))
    on_event("round", {"round": 0, "rounds": plan.rounds, "count": len(deduped)})
    score_all(0, deduped)
    known.update(norm_instruction(t) for t, _ in deduped)

    stored = folder.proposals()
    for round_ in range(1, plan.rounds + 1):
        if round_ in stored:
            candidates = stored[round_]
        else:
            on_event("stage", {"text": f"round {round_}: asking the LLM for {plan.proposals} instructions"})
            candidates, calls = propose_instructions(
                llm,
                results,
                n=plan.proposals,
                known=known,
                seed=config.seed * 7919 + round_,
                top_k=plan.top_k,
                temperature=plan.propose_temperature,
                max_new_tokens=plan.propose_max_new_tokens,
                on_event=on_event,
            )
            folder.append_proposals(round_, candidates, calls=calls)
            stored[round_] = candidates
        on_event("round", {"round": round_, "rounds": plan.rounds, "count": len(candidates)})
        known.update(norm_instruction(c) for c in candidates)
        score_all(round_, [(c, "proposed") for c in candidates])
    folder.write_state(results, rounds_done=plan.rounds, status="finished")
    return summary
