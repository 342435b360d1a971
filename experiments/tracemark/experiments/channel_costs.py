"""What the distributional channel costs: teacher accuracy with and without it, and its detectability.

Method (``make bench-channel-costs``; figures in ``benchmarks/results/channel_costs.{json,md}``):

* **Teacher**: the embedded SmolLM2-135M-Instruct, fp32 on CPU, transformers ``generate`` with the chat
  template and no system prompt, decoding each problem once *clean* and once through
  :class:`~tracemark.foundation.models.channel_processor.ChannelLogitsProcessor` with the rows of a
  :class:`~tracemark.foundation.channel.Keyring` for one account (provider key + account key, each at the
  given delta, gamma 0.25, context width 1). The keys are fixed *test* keys (SHA-256 of public labels),
  never a deployment's. Sampling uses ``temperature`` with top-k/top-p off and the channel bias added
  after the temperature, as the local teacher backend does.
* **Held-out problems**: generated problems (``generate_problems(seed=777, difficulty="easy")``, a seed
  no tuning used) and, when a GSM8K ``train.jsonl`` is given, its *last* ``n`` rows (read in place,
  never copied).
* **Free accuracy**: the final answer of the greedy trace (``extract_final_answer``: boxed, ``####``,
  else the last number) against the reference.
* **Answer-forced accuracy** (issue 14's definition): the greedy trace is cut before the line holding
  its final answer (that line, or sentence in prose, and everything after it are removed), then the
  teacher, *without* the channel, continues problem + cut trace + "The final answer is" greedily and the
  first number is taken.
  It measures whether the reasoning the channel let through still leads the teacher to the answer.
* Both accuracies are paired per problem (greedy clean vs greedy channel): Wilson 95% intervals, the
  difference (channel - clean) and an exact McNemar test on the discordant pairs (statsmodels).
* **Detectability**: one sampled trace per problem and condition (clean, channel); a character 2-5-gram
  TF-IDF + logistic-regression classifier, 5-fold cross-validated with the folds grouped by problem (the
  two traces of a problem are always in the same fold, so the classifier cannot key on the problem).
  Reported: per-fold AUC (mean, sd), the pooled out-of-fold AUC with a 95% bootstrap interval over
  problems. The same on the greedy traces is given as a secondary figure.
* **Sanity check**: the green fraction of the distinct (previous token, token) tuples under the provider
  key per condition (~gamma when clean) and its z-score, so a run with the channel silently off shows.

Tokens/s overhead of the processor is measured elsewhere (``channel_overhead``), not here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tracemark.experiments.detectability import detectability
from tracemark.experiments.distill import _pad_id, prompt_ids
from tracemark.experiments.evaluate import _eos_ids, forced_answers
from tracemark.foundation.channel import (
    ChannelKey,
    ChannelSpec,
    GreenLists,
    Keyring,
    count_green,
    distinct_tuples,
)
from tracemark.foundation.errors import InvalidInput
from tracemark.foundation.models.channel_processor import ChannelLogitsProcessor
from tracemark.foundation.models.embedded import ensure_embedded_model
from tracemark.foundation.problems import Problem, generate_problems
from tracemark.plugins.answers import answers_match, boxed_spans, extract_final_answer
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

__all__ = [
    "TEST_ACCOUNT",
    "CostConfig",
    "decode",
    "detectability",
    "green_fraction",
    "load_gsm8k_tail",
    "main",
    "paired_accuracy",
    "render_markdown",
    "run_costs",
    "strip_final_answer",
    "costs_keyring",
]

TEST_ACCOUNT = "channel-costs-account"
_PROVIDER_SECRET = hashlib.sha256(b"tracemark channel-costs test provider key (public)").digest()
_ACCOUNT_SECRET_LABEL = b"tracemark channel-costs test account key (public)|"

Progress = Callable[[str], None]
_SENTENCE_END = re.compile(r"[.!?](?=\s)")


@dataclass
class CostConfig:
    """Sizes and parameters of one measurement (see the module docstring)."""

    n_generated: int = 200
    n_gsm8k: int = 200
    gsm8k: Path | None = None
    seed: int = 777
    difficulty: str = "easy"
    deltas: tuple[float, ...] = (1.5,)
    gamma: float = 0.25
    max_new_tokens: int = 200
    forced_tokens: int = 12
    batch_size: int = 16
    temperature: float = 0.7
    sample_seed: int = 0
    folds: int = 5
    bootstrap: int = 1000
    detect: bool = True

    def __post_init__(self) -> None:
        if self.n_generated < 0 or self.n_gsm8k < 0:
            raise InvalidInput("problem counts must be >= 0")
        if not self.deltas or any(not 0.0 < d <= 20.0 for d in self.deltas):
            raise InvalidInput("deltas must be in (0, 20]")
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.forced_tokens < 1:
            raise InvalidInput("batch size and token counts must be >= 1")
        if self.temperature <= 0:
            raise InvalidInput("temperature must be > 0")
        if self.folds < 2:
            raise InvalidInput("detectability needs at least 2 folds")


def costs_keyring(delta: float, gamma: float = 0.25) -> Keyring:
    """A keyring over fixed, public test keys: provider and account keys both at ``delta``."""

    def account_key(name: str) -> ChannelKey:
        secret = hashlib.sha256(_ACCOUNT_SECRET_LABEL + name.encode()).digest()
        return ChannelKey(secret=secret, scope="account", name=name)

    spec = ChannelSpec(gamma=gamma, provider_delta=delta, account_delta=delta)
    return Keyring(spec, ChannelKey(secret=_PROVIDER_SECRET, scope="provider"), account_key)


def load_gsm8k_tail(path: Path, n: int) -> list[Problem]:
    """The last ``n`` rows of a GSM8K jsonl file as problems (answer after ``####``)."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path} ({type(exc).__name__})") from None
    problems = []
    for number, line in enumerate(lines[-n:] if n else [], len(lines) - min(n, len(lines)) + 1):
        try:
            row = json.loads(line)
            question, solution = row["question"], row["answer"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InvalidInput(f"{path} row {number} is not a GSM8K row (question and answer)") from None
        answer = extract_final_answer(solution)
        if answer is None:
            raise InvalidInput(f"{path} row {number} has no final answer")
        problems.append(Problem(question=question, solution=solution, answer=answer, template="gsm8k"))
    return problems


def strip_final_answer(trace: str) -> str:
    """``trace`` cut before the line holding its final answer (the answer-forcing input). A "line" of
    prose is a sentence: the cut is at the last newline or sentence end (``.!?`` then a space) before
    the answer, so a one-paragraph trace keeps the reasoning that precedes its concluding sentence."""
    answer = extract_final_answer(trace)
    if answer is None:
        return trace.rstrip()
    closed = [span for span in boxed_spans(trace) if span[2] >= 0]
    if closed:
        pos = closed[-1][0]
    elif "####" in trace:
        pos = trace.rfind("####")
    else:
        pos = trace.rfind(answer)
    cut = max([trace.rfind("\n", 0, pos) + 1] + [m.end() for m in _SENTENCE_END.finditer(trace, 0, pos)])
    return trace[:cut].rstrip()


@torch.no_grad()
def decode(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    rows: Sequence[list | None],
    *,
    max_new_tokens: int,
    batch_size: int,
    temperature: float | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[list[str], list[int]]:
    """Decode each prompt (greedy, or sampled at ``temperature``) with its row's channel bias
    (``None``: clean); returns the texts and the number of generated tokens, in input order."""
    if len(prompts) != len(rows):
        raise InvalidInput("prompts and channel rows differ in length")
    pad, eos = _pad_id(tokenizer), _eos_ids(tokenizer, model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts, lengths = [""] * len(prompts), [0] * len(prompts)
    model.eval()
    for number, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            input_ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
        if temperature is None:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            torch.manual_seed(seed + number)
        batch_rows = [rows[i] for i in idx]
        if any(batch_rows):
            kwargs["logits_processor"] = LogitsProcessorList([ChannelLogitsProcessor(batch_rows)])
        out = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        for r, i in enumerate(idx):
            new = out[r, width:].tolist()
            cut = next((k for k, t in enumerate(new) if t in eos), len(new))
            texts[i] = tokenizer.decode(new[:cut], skip_special_tokens=True)
            lengths[i] = cut
        if progress is not None:
            progress(f"decoded {min(start + batch_size, len(order))}/{len(order)}")
    return texts, lengths


def _wilson(k: int, n: int) -> list[float]:
    # deferred: statsmodels is slow to import and only needed here
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return [0.0, 1.0]
    low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
    return [float(low), float(high)]


def paired_accuracy(clean: Sequence[bool], channel: Sequence[bool]) -> dict:
    """Accuracies with Wilson 95% intervals, the difference and an exact McNemar test."""
    # deferred: statsmodels is slow to import and only needed here
    from statsmodels.stats.contingency_tables import mcnemar

    if len(clean) != len(channel):
        raise InvalidInput("paired accuracies need the same problems")
    n = len(clean)
    kc, kw = sum(map(bool, clean)), sum(map(bool, channel))
    only_clean = sum(bool(a) and not bool(b) for a, b in zip(clean, channel))
    only_channel = sum(bool(b) and not bool(a) for a, b in zip(clean, channel))
    p = 1.0
    if only_clean + only_channel:
        table = [[0, only_clean], [only_channel, 0]]
        p = float(mcnemar(table, exact=True).pvalue)
    return {
        "n": n,
        "clean": {"correct": kc, "accuracy": kc / n if n else 0.0, "wilson95": _wilson(kc, n)},
        "channel": {"correct": kw, "accuracy": kw / n if n else 0.0, "wilson95": _wilson(kw, n)},
        "difference_points": 100.0 * (kw - kc) / n if n else 0.0,
        "only_clean_correct": only_clean,
        "only_channel_correct": only_channel,
        "mcnemar_exact_p": p,
    }


def green_fraction(tokenizer: Any, lists: GreenLists, texts: Sequence[str]) -> dict:
    """Green share of the distinct (previous token, token) tuples of ``texts`` under one key."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    count = count_green(lists, distinct_tuples(rows))
    sd = math.sqrt(count.n * count.gamma * (1 - count.gamma)) or 1.0
    return {
        "tuples": count.n,
        "green": count.green,
        "fraction": count.fraction,
        "z": (count.green - count.gamma * count.n) / sd,
    }


def _mean(values: Sequence[int]) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def _measure_set(
    model: Any, tokenizer: Any, problems: list[Problem], config: CostConfig, say: Progress
) -> dict:
    """All conditions for one problem set: clean decoded once, the channel once per delta."""
    questions = [p.question for p in problems]
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    greedy = dict(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)

    def correct(preds: Sequence[str | None]) -> list[bool]:
        return [answers_match(p.answer, pred) for p, pred in zip(problems, preds, strict=True)]

    def forced(traces: Sequence[str], tag: str) -> list[bool]:
        cut = [strip_final_answer(t) for t in traces]
        preds = forced_answers(
            model, tokenizer, questions, cut, forced_tokens=config.forced_tokens, batch_size=config.batch_size
        )
        for row, text, stripped, pred in zip(details, traces, cut, preds, strict=True):
            row[tag] = {"trace": text, "cut": stripped, "forced": pred, "free": extract_final_answer(text)}
        return correct(preds)

    details: list[dict[str, Any]] = [{"question": p.question, "answer": p.answer} for p in problems]

    start = time.perf_counter()
    say("clean greedy")
    clean_texts, clean_len = decode(model, tokenizer, prompts, [None] * len(prompts), **greedy, progress=say)
    clean_free = correct([extract_final_answer(t) for t in clean_texts])
    say("clean forced")
    clean_forced = forced(clean_texts, "clean")
    clean_sampled: list[str] = []
    if config.detect:
        say("clean sampled")
        clean_sampled, _ = decode(
            model,
            tokenizer,
            prompts,
            [None] * len(prompts),
            **greedy,
            temperature=config.temperature,
            seed=config.sample_seed,
            progress=say,
        )
    conditions = []
    for delta in config.deltas:
        keyring = costs_keyring(delta, config.gamma)
        rows = [keyring.lists_for(TEST_ACCOUNT)] * len(prompts)
        say(f"channel greedy, delta {delta}")
        texts, lengths = decode(model, tokenizer, prompts, rows, **greedy, progress=say)
        say(f"channel forced, delta {delta}")
        entry: dict[str, Any] = {
            "delta": delta,
            "free": paired_accuracy(clean_free, correct([extract_final_answer(t) for t in texts])),
            "forced": paired_accuracy(clean_forced, forced(texts, f"channel {delta}")),
            "mean_tokens": {"clean": _mean(clean_len), "channel": _mean(lengths)},
            "truncated": {
                "clean": sum(k >= config.max_new_tokens for k in clean_len),
                "channel": sum(k >= config.max_new_tokens for k in lengths),
            },
            "green_provider": {
                "clean": green_fraction(tokenizer, keyring.provider, clean_texts),
                "channel": green_fraction(tokenizer, keyring.provider, texts),
            },
            "greedy_identical": sum(a == b for a, b in zip(clean_texts, texts)),
        }
        if config.detect:
            say(f"channel sampled, delta {delta}")
            sampled, _ = decode(
                model,
                tokenizer,
                prompts,
                rows,
                **greedy,
                temperature=config.temperature,
                seed=config.sample_seed,
                progress=say,
            )
            entry["detectability_sampled"] = detectability(
                clean_sampled, sampled, folds=config.folds, bootstrap=config.bootstrap
            )
            entry["detectability_greedy"] = detectability(
                clean_texts, texts, folds=config.folds, bootstrap=config.bootstrap
            )
            entry["green_provider"]["channel_sampled"] = green_fraction(tokenizer, keyring.provider, sampled)
        conditions.append(entry)
    seconds = time.perf_counter() - start
    return {"n": len(problems), "seconds": seconds, "conditions": conditions, "traces": details}


def run_costs(
    model: Any,
    tokenizer: Any,
    config: CostConfig,
    *,
    progress: Progress | None = None,
) -> dict:
    """Measure every condition on the generated problems and (if configured) the GSM8K tail."""
    say = progress or (lambda _msg: None)
    sets: dict[str, list[Problem]] = {}
    if config.n_generated:
        sets[f"generated-{config.difficulty}-seed{config.seed}"] = generate_problems(
            config.n_generated, seed=config.seed, difficulty=config.difficulty
        )
    if config.gsm8k is not None and config.n_gsm8k:
        sets[f"gsm8k-train-last{config.n_gsm8k}"] = load_gsm8k_tail(Path(config.gsm8k), config.n_gsm8k)
    if not sets:
        raise InvalidInput("no problems to measure")
    results = {}
    for name, problems in sets.items():
        results[name] = _measure_set(
            model, tokenizer, problems, config, lambda msg, name=name: say(f"[{name}] {msg}")
        )
    settings = asdict(config)
    settings["gsm8k"] = str(config.gsm8k) if config.gsm8k is not None else None
    return {"config": settings, "torch_threads": torch.get_num_threads(), "sets": results}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _acc_row(set_name: str, delta: float, kind: str, acc: dict) -> str:
    c, w = acc["clean"], acc["channel"]
    return (
        f"| {set_name} | {delta} | {kind} | {acc['n']} | {_pct(c['accuracy'])} "
        f"[{_pct(c['wilson95'][0])}, {_pct(c['wilson95'][1])}] | {_pct(w['accuracy'])} "
        f"[{_pct(w['wilson95'][0])}, {_pct(w['wilson95'][1])}] | {acc['difference_points']:+.1f} | "
        f"{acc['only_clean_correct']}/{acc['only_channel_correct']} | {acc['mcnemar_exact_p']:.3g} |"
    )


def render_markdown(result: dict, command: str = "") -> str:
    """The result as a Markdown report (a combined result: one section per run)."""
    if "runs" in result:
        parts = [render_markdown(run, run.get("command", "")) for run in result["runs"]]
        return "\n".join(part.replace("# Channel costs", "# Channel costs, run", 1) for part in parts)
    cfg = result["config"]
    lines = [
        "# Channel costs: teacher accuracy and detectability",
        "",
        f"Teacher: {result.get('model', 'model')}, greedy decoding for accuracy, temperature "
        f"{cfg['temperature']} samples for detectability; gamma {cfg['gamma']}, provider and account key "
        f"at each delta; max {cfg['max_new_tokens']} new tokens; {result['torch_threads']} torch threads.",
    ]
    if command:
        lines += ["", f"Command: `{command}`"]
    if "wall_seconds" in result:
        lines += ["", f"Wall time: {result['wall_seconds'] / 60:.1f} min."]
    lines += [
        "",
        "## Accuracy (paired per problem; Wilson 95%; McNemar exact)",
        "",
        "| problems | delta | accuracy | n | clean % | channel % | diff (points) | "
        "only clean / only channel | McNemar p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, block in result["sets"].items():
        for cond in block["conditions"]:
            lines.append(_acc_row(name, cond["delta"], "answer-forced", cond["forced"]))
            lines.append(_acc_row(name, cond["delta"], "free", cond["free"]))
    lines += [
        "",
        "## Detectability (char 2-5-gram TF-IDF + logistic regression, CV grouped by problem)",
        "",
        "| problems | delta | traces | folds | fold AUC mean ± sd | pooled AUC [bootstrap 95%] |",
        "|---|---|---|---|---|---|",
    ]
    for name, block in result["sets"].items():
        for cond in block["conditions"]:
            for kind in ("sampled", "greedy"):
                det = cond.get(f"detectability_{kind}")
                if det:
                    low, high = det["pooled_auc_bootstrap95"]
                    lines.append(
                        f"| {name} | {cond['delta']} | {kind} | {det['folds']} | "
                        f"{det['fold_auc_mean']:.3f} ± {det['fold_auc_sd']:.3f} | "
                        f"{det['pooled_auc']:.3f} [{low:.3f}, {high:.3f}] |"
                    )
    lines += [
        "",
        "## Sanity: provider-key green share of distinct tuples, trace length",
        "",
        "| problems | delta | clean green (z) | channel green (z) | mean tokens clean / channel | "
        "truncated clean / channel |",
        "|---|---|---|---|---|---|",
    ]
    for name, block in result["sets"].items():
        for cond in block["conditions"]:
            g, t, m = cond["green_provider"], cond["truncated"], cond["mean_tokens"]
            lines.append(
                f"| {name} | {cond['delta']} | {g['clean']['fraction']:.3f} ({g['clean']['z']:.1f}) | "
                f"{g['channel']['fraction']:.3f} ({g['channel']['z']:.1f}) | {m['clean']:.0f} / "
                f"{m['channel']:.0f} | {t['clean']} / {t['channel']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m tracemark.experiments.channel_costs --out benchmarks/results/channel_costs``
    (writes ``.json`` and ``.md`` beside that stem)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/channel_costs"))
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: embedded)")
    parser.add_argument("--n-generated", type=int, default=200)
    parser.add_argument("--n-gsm8k", type=int, default=200)
    parser.add_argument("--gsm8k", type=Path, default=None, help="GSM8K train.jsonl (last rows are used)")
    parser.add_argument("--deltas", default="1.5", help="comma-separated channel deltas")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-detect", action="store_true", help="skip the sampled traces and the AUC")
    parser.add_argument("--traces", type=Path, default=None, help="write per-problem traces here (jsonl)")
    parser.add_argument(
        "--combine", type=Path, nargs="+", default=None, help="merge the .json results of separate runs"
    )
    args = parser.parse_args(argv)
    if args.combine:
        runs = [json.loads(path.read_text(encoding="utf-8")) for path in args.combine]
        _write(args.out, {"runs": runs}, "")
        return 0
    gsm8k = args.gsm8k if args.gsm8k is not None and args.gsm8k.is_file() else None
    config = CostConfig(
        n_generated=args.n_generated,
        n_gsm8k=args.n_gsm8k if gsm8k else 0,
        gsm8k=gsm8k,
        deltas=tuple(float(d) for d in args.deltas.split(",") if d.strip()),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        detect=not args.no_detect,
    )
    torch.set_num_threads(max(1, args.threads))
    path = args.model or ensure_embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.0f}s] {msg}", file=sys.stderr, flush=True)

    result = run_costs(model, tokenizer, config, progress=say)
    result["model"] = "embedded SmolLM2-135M-Instruct (fp32, CPU)" if args.model is None else str(args.model)
    result["wall_seconds"] = time.perf_counter() - start
    traces = {name: block.pop("traces") for name, block in result["sets"].items()}
    if args.traces is not None:  # kept out of the report: problem text (e.g. GSM8K) stays in place
        with args.traces.open("w", encoding="utf-8") as fh:
            for name, rows in traces.items():
                fh.writelines(json.dumps({"set": name, **row}) + "\n" for row in rows)
    shown = sys.argv[1:] if argv is None else list(argv)
    command = "python -m tracemark.experiments.channel_costs " + " ".join(shown)
    result["command"] = command
    _write(args.out, result, command)
    return 0


def _write(out: Path, result: dict, command: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    report = render_markdown(result, command)
    out.with_suffix(".md").write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    raise SystemExit(main())
