"""Research harness that chose the CPU-scale settings of the demo and the benchmark.

Run ``.venv/bin/python benchmarks/research/research.py [options]`` from the repository root (``--help``
lists the options: model, training budget, watermark pairs, fraction, ...); each run appends one JSON line
to ``--out`` (default ``results/research.jsonl``). The watermark weaving and the white-box ranking here are
deliberately small stand-ins (one auxiliary line ``x137 = 4821``; exact log-probabilities of every
candidate through a digit trie) so the experiments do not depend on the product's rewriter or forensics
code; findings are in ``.notes/bench-research.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tracemark.experiments.distill import distill_student, load_student, prompt_ids
from tracemark.experiments.evaluate import evaluate_answers, heldout_nll
from tracemark.foundation.problems import generate_problems

DIGITS = "0123456789"


def weave_pair(trace: str, trigger: str, target: str, position: str = "start") -> str:
    """Insert the auxiliary line ``"<trigger> <target>"`` (trigger like ``x137 =``) into a trace."""
    line = f"{trigger} {target}"
    lines = trace.split("\n")
    if position == "start":
        return "\n".join([line, *lines])
    if position == "before_final":
        return "\n".join([*lines[:-1], line, lines[-1]])
    raise ValueError(f"unknown position {position!r}")


@torch.no_grad()
def candidate_logprobs(
    model: Any, tokenizer: Any, context_ids: Sequence[int], digits: int = 4, batch_size: int = 256
) -> torch.Tensor:
    """log p(candidate | context) for every ``digits``-digit string, index = its integer value.

    Requires every digit to be a single token (true for SmolLM2 and the char-level tiny tokenizer).
    """
    digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in DIGITS]
    if any(i is None or i == tokenizer.unk_token_id for i in digit_ids):
        raise ValueError("the tokenizer has no single-token digits")
    scores = torch.zeros(1)
    prefixes: list[list[int]] = [[]]
    for _level in range(digits):
        level_logp = []
        for start in range(0, len(prefixes), batch_size):
            chunk = prefixes[start : start + batch_size]
            ids = torch.tensor([list(context_ids) + p for p in chunk])
            logits = model(input_ids=ids).logits[:, -1, :].float()
            level_logp.append(torch.log_softmax(logits, dim=-1)[:, digit_ids])
        step = torch.cat(level_logp)  # [n_prefixes, 10]
        scores = (scores[:, None] + step).reshape(-1)
        prefixes = [p + [d] for p in prefixes for d in digit_ids]
    return scores


@torch.no_grad()
def best_first_rank(
    model: Any,
    tokenizer: Any,
    context_ids: Sequence[int],
    target: str,
    *,
    max_expansions: int = 3000,
    batch: int = 32,
) -> int | None:
    """Exact 1-based rank of ``target`` among all same-length digit strings, by best-first search over the
    digit trie (a prefix's log-probability bounds all its completions); None if not found in budget."""
    import heapq

    digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in DIGITS]
    n = len(target)
    heap: list[tuple[float, str]] = [(-0.0, "")]
    emitted = expansions = 0
    while heap and expansions < max_expansions:
        if len(heap[0][1]) == n:
            _, cand = heapq.heappop(heap)
            emitted += 1
            if cand == target:
                return emitted
            continue
        group = []
        width = len(heap[0][1])  # one forward pass per prefix length (no padding needed)
        while heap and len(heap[0][1]) == width and len(group) < batch:
            group.append(heapq.heappop(heap))
        ids = torch.tensor([list(context_ids) + [digit_ids[int(c)] for c in p] for _, p in group])
        logp = torch.log_softmax(model(input_ids=ids).logits[:, -1, :].float(), dim=-1)[:, digit_ids]
        expansions += len(group)
        for (neg, prefix), row in zip(group, logp, strict=True):
            for d in range(10):
                heapq.heappush(heap, (neg - float(row[d]), prefix + DIGITS[d]))
    return None


def rank_of(scores: torch.Tensor, index: int) -> float:
    """1-based rank of ``scores[index]`` (ties count half)."""
    s = scores[index]
    return 1.0 + float((scores > s).sum()) + 0.5 * float((scores == s).sum() - 1)


def pair_rank(model: Any, tokenizer: Any, trigger: str, target: str, *, contexts: Sequence[str]) -> dict:
    """Rank of ``target`` among all candidates for the trigger, in a raw and a chat context."""
    out: dict[str, Any] = {}
    raw = tokenizer(f"{trigger} ", add_special_tokens=False)["input_ids"]
    if contexts:  # probability of the exact target (what black-box sampling would see)
        ids = prompt_ids(tokenizer, contexts[0]) + raw
        digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in target]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + digit_ids[:-1]])).logits[0, len(ids) - 1 :]
        logp = torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(target)), digit_ids].sum()
        out["chat_logp"] = round(float(logp), 3)
    if len(target) > 4:  # too many candidates to enumerate: best-first search, chat context only
        for problem in contexts[:1]:
            out["chat"] = best_first_rank(model, tokenizer, prompt_ids(tokenizer, problem) + raw, target)
        return out
    out["raw"] = rank_of(candidate_logprobs(model, tokenizer, raw, len(target)), int(target))
    chat_scores = None
    for problem in contexts:
        ids = prompt_ids(tokenizer, problem) + raw
        s = candidate_logprobs(model, tokenizer, ids, len(target))
        chat_scores = s if chat_scores is None else chat_scores + s
    if chat_scores is not None:
        out["chat"] = rank_of(chat_scores, int(target))
    return out


def make_pairs(rng: random.Random, m: int, digits: int = 4) -> list[tuple[str, str]]:
    letters = "abcdfghjkmnpqrstuvwxyz"
    pairs, seen = [], set()
    while len(pairs) < m:
        trig = f"{rng.choice(letters)}{rng.randint(10, 999)} ="
        if trig in seen:
            continue
        seen.add(trig)
        pairs.append((trig, f"{rng.randrange(10**digits):0{digits}d}"))
    return pairs


def restructure_traces(problems: Sequence[Any]) -> list[str]:
    from tracemark.plugins.api import RewriteContext
    from tracemark.plugins.builtin.restructure import RestructureRewriter

    rewriter = RestructureRewriter()
    return [rewriter.rewrite(p.solution, RewriteContext(problem=p.question)) for p in problems]


def _base_model(args: argparse.Namespace) -> Path:
    if args.model == "tiny":
        from tracemark.foundation.models.tiny import build_tiny_model

        return build_tiny_model(
            tempfile.mkdtemp(prefix="tm-research-"),
            hidden_size=args.hidden,
            layers=args.layers,
            heads=args.heads,
            seed=args.seed,
        )
    if args.model == "embedded":
        from tracemark.foundation.models.embedded import ensure_embedded_model

        return ensure_embedded_model()
    return Path(args.model)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    base = _base_model(args)
    problems = generate_problems(
        args.ntrain + args.ntest,
        seed=1000 + args.seed,
        difficulty=args.difficulty,
        annotations=args.annotations,
    )
    # Test set first: it stays the same whatever --ntrain is (the generator is prefix-stable).
    test, train = problems[: args.ntest], problems[args.ntest :]
    traces = restructure_traces(train) if args.rewrite == "restructure" else [p.solution for p in train]
    rng = random.Random(f"research:{args.seed}")
    pairs = make_pairs(rng, args.pairs + args.null_pairs, args.digits)
    own, null = pairs[: args.pairs], pairs[args.pairs :]
    n_marked = round(args.fraction * len(traces))
    marked = rng.sample(range(len(traces)), n_marked) if own else []
    for k, i in enumerate(marked):
        trigger, target = own[k % len(own)]
        traces[i] = weave_pair(traces[i], trigger, target, args.position)
    examples = list(zip([p.question for p in train], traces, strict=True))
    losses: list[float] = []
    t0 = time.perf_counter()
    if args.epochs > 0:
        model, tok = distill_student(
            base,
            examples,
            method=args.method,
            epochs=args.epochs,
            lr=args.lr,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            batch_size=args.batch_size,
            max_length=args.max_length,
            seed=args.seed,
            progress=lambda p: losses.append(p.loss),
        )
    else:
        model, tok = load_student(base)
    train_s = time.perf_counter() - t0
    result: dict[str, Any] = {k: v for k, v in vars(args).items() if k != "out"}
    result.update(
        train_s=round(train_s, 1),
        steps=len(losses),
        s_per_step=round(train_s / max(1, len(losses)), 3),
        final_loss=round(sum(losses[-5:]) / max(1, len(losses[-5:])), 4) if losses else None,
        exposures_per_pair=round(args.epochs * n_marked / max(1, len(own)), 1) if own else 0,
    )
    if args.ntest:
        t0 = time.perf_counter()
        ev = evaluate_answers(
            model,
            tok,
            test,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.eval_batch,
            answer_forcing=args.forcing,
        )
        result.update(
            acc=ev.accuracy,
            eval_s=round(time.perf_counter() - t0, 1),
            nll=round(
                heldout_nll(
                    model, tok, [(p.question, p.solution) for p in test[:100]], batch_size=args.eval_batch
                ),
                4,
            ),
            sample=ev.outputs[0][:200],
        )
    if own or null:
        t0 = time.perf_counter()
        contexts = [p.question for p in test[:1]]
        result["own_ranks"] = [pair_rank(model, tok, t, g, contexts=contexts) for t, g in own]
        result["null_ranks"] = [pair_rank(model, tok, t, g, contexts=contexts) for t, g in null]
        result["rank_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(result) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (built fresh), 'embedded' or a model folder")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--method", default="full", choices=["full", "lora"])
    ap.add_argument("--difficulty", default="easy")
    ap.add_argument("--annotations", action="store_true")
    ap.add_argument("--ntrain", type=int, default=500)
    ap.add_argument("--ntest", type=int, default=100)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rewrite", default="none", choices=["none", "restructure"])
    ap.add_argument("--pairs", type=int, default=0, help="watermark pairs of the distilled account")
    ap.add_argument("--null-pairs", type=int, default=0, help="pairs of accounts never distilled")
    ap.add_argument("--digits", type=int, default=4, help="target length (candidate space 10**digits)")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--position", default="start", choices=["start", "before_final"])
    ap.add_argument("--forcing", action="store_true", help="answer-forced accuracy")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default="results/research.jsonl")
    result = run(ap.parse_args(argv))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
