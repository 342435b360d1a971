"""Run the attack suite: per attack, the pair signal removed, clean traces altered, and the detection
p-values (pair channel, distributional channel) of a student distilled from the attacked harvest."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tracemark.experiments.attack.detect import (
    StudentSize,
    build_student_base,
    channel_verdict,
    investigate_pairs,
    student_evidence,
    train_student,
)
from tracemark.experiments.attack.harvest import HarvestError, HarvestRecord, write_harvest
from tracemark.experiments.attack.measure import Truth, clean_altered, signal_removed
from tracemark.experiments.attack.paraphrase import endpoint_paraphraser, local_paraphraser, paraphrase
from tracemark.experiments.attack.transforms import ATTACKS
from tracemark.foundation.channel import ChannelSpec
from tracemark.foundation.problems import generate_problems

BASELINE = "none"
PARAPHRASE = "paraphrase"
CONTROL = "control"
ALL_ATTACKS = (BASELINE, *ATTACKS, PARAPHRASE)


@dataclass(frozen=True)
class Paraphraser:
    """Where attack (8) gets its LLM: a local model folder ("" = the embedded SmolLM2) or an endpoint."""

    model_dir: str = ""
    endpoint: str = ""
    endpoint_model: str = ""
    api_key: str = field(default="", repr=False)
    max_new_tokens: int = 256

    def build(self) -> Callable[[Sequence[str]], list[str]]:
        if self.endpoint:
            return endpoint_paraphraser(self.endpoint, self.endpoint_model, api_key=self.api_key)
        return local_paraphraser(self.model_dir or None, max_new_tokens=self.max_new_tokens)


def apply_attack(
    name: str, records: Sequence[HarvestRecord], paraphraser: Paraphraser
) -> list[HarvestRecord]:
    """The harvest after attack ``name`` (``none``: unchanged)."""
    if name == BASELINE:
        return list(records)
    if name == PARAPHRASE:
        return paraphrase(records, paraphraser.build())
    if name not in ATTACKS:
        raise HarvestError(f"unknown attack {name!r}; known: {', '.join(ALL_ATTACKS)}")
    return ATTACKS[name][0](records)


@dataclass
class Detector:
    """What the defender tests a student with: channel spec, tokenizer and keys; optionally a server to
    investigate the pair channel through (``address`` and a compliance token)."""

    spec: ChannelSpec
    tokenizer: Any
    provider_key: Any
    account_keys: dict[str, Any]
    alpha: float
    address: str = ""
    token: str = field(default="", repr=False)

    @classmethod
    def from_master(cls, master, accounts: Sequence[str], spec: ChannelSpec, tokenizer, **kw) -> Detector:
        return cls(
            spec=spec,
            tokenizer=tokenizer,
            provider_key=master.channel_key(None),
            account_keys={a: master.channel_key(a) for a in accounts},
            **kw,
        )


@dataclass
class AttackRow:
    attack: str
    description: str
    traces: int
    removed: dict | None
    clean_altered: dict | None
    pair: dict | None
    channel: dict | None
    harvesters: list[str]
    seconds: float = 0.0
    verdict: dict = field(default_factory=dict)


def _verdict(row: AttackRow, alpha: float) -> dict:
    out: dict[str, Any] = {}
    if row.channel:
        provider_p = row.channel["provider"]["p_value"]
        out["channel_detects"] = provider_p <= alpha
        attributed = row.channel.get("attributed", "")
        out["channel_attributes"] = bool(
            attributed in row.harvesters and row.channel.get("attributed_p", 1.0) <= alpha
        )
    if row.pair:
        out["investigation_detects"] = row.pair.get("verdict") == "detected"
        out["pair_only_p_le_alpha"] = row.pair.get("pair_only_p", 1.0) <= alpha
        if row.pair.get("provider_tested"):
            out["investigation_provider"] = bool(row.pair.get("distilled_from_us"))
    return out


def evaluate(
    name: str,
    description: str,
    before: Sequence[HarvestRecord],
    after: Sequence[HarvestRecord],
    truth: Truth | None,
    detector: Detector | None,
    *,
    workdir: Path,
    student: StudentSize,
    seed: int,
    sample_prompts: Sequence[str],
    harvesters: Sequence[str],
    log: Callable[[str], None] = lambda _: None,
) -> AttackRow:
    """Measure one attacked harvest: damage (with ``truth``) and detection (with ``detector``)."""
    t0 = time.perf_counter()
    row = AttackRow(name, description, len(after), None, None, None, None, sorted(set(harvesters)))
    if truth is not None and name != CONTROL:
        row.removed = signal_removed(before, after, truth).as_dict()
        row.clean_altered = clean_altered(before, after, truth).as_dict()
    write_harvest(after, workdir / "harvests" / f"{name}.jsonl")
    if detector is not None:
        log(f"{name}: train student")
        base = build_student_base(workdir / "students" / f"base-{name}", student, seed=seed)
        path = train_student(
            base, [(r.prompt, r.trace) for r in after], workdir / "students" / name, student, seed=seed
        )
        log(f"{name}: sample {len(sample_prompts)} completions, channel evidence")
        texts, evidence = student_evidence(
            path, sample_prompts, student, spec=detector.spec, tokenizer=detector.tokenizer, beacon=name
        )
        (workdir / "samples").mkdir(parents=True, exist_ok=True)
        (workdir / "samples" / f"{name}.json").write_text(json.dumps(texts, ensure_ascii=False))
        modes = {
            mode: channel_verdict(
                ev.tuples,
                mode=mode,
                spec=detector.spec,
                provider_key=detector.provider_key,
                account_keys=detector.account_keys,
                harvesters=harvesters,
            ).as_dict()
            for mode, ev in evidence.items()
        }
        # the verdict reads the strongest evidence the student allows (white-box when it has our vocabulary)
        row.channel = {**modes.get("white-box", modes["black-box"]), "modes": modes}
        if detector.address:
            log(f"{name}: investigate (pair channel)")
            row.pair = investigate_pairs(detector.address, detector.token, path, alpha=detector.alpha)
    row.seconds = time.perf_counter() - t0
    row.verdict = _verdict(row, detector.alpha if detector else 0.0)
    return row


def sampling_prompts(n: int, *, seed: int, difficulty: str) -> list[str]:
    """Fresh problems (never harvested) the suspect student is sampled on for the channel test."""
    return [p.question for p in generate_problems(n, seed=seed + 50_000, difficulty=difficulty)]


@dataclass
class SuiteResult:
    config: dict
    rows: list[AttackRow]
    harvest: dict
    alpha: float
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "config": self.config,
            "harvest": self.harvest,
            "alpha": self.alpha,
            "seconds": self.seconds,
            "rows": [asdict(r) for r in self.rows],
        }


def _fmt_share(share: dict | None) -> str:
    if not share or not share["n"]:
        return "n/a"
    return f"{share['share']:.1%} [{share['lo']:.0%}, {share['hi']:.0%}] ({share['k']}/{share['n']})"


def _fmt_p(p: float | None) -> str:
    return "-" if p is None else f"{p:.2g}"


def table_rows(result: SuiteResult) -> list[list[str]]:
    """The summary table's rows (attack, removed, clean altered, pair p, provider p, account, verdict)."""
    out = []
    for r in result.rows:
        pair_p = r.pair.get("pair_only_p", r.pair["p_value"]) if r.pair else None
        prov = None
        if r.channel:
            modes = r.channel.get("modes", {})
            prov = " / ".join(
                f"{_fmt_p(m['provider']['p_value'])} ({k[0]}b)" for k, m in modes.items()
            ) or _fmt_p(r.channel["provider"]["p_value"])
        acct = (
            f"{r.channel['attributed']} ({_fmt_p(r.channel['attributed_p'])})"
            if r.channel and r.channel.get("attributed")
            else "-"
        )
        verdict = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in r.verdict.items()) or "-"
        out.append(
            [
                r.attack,
                _fmt_share(r.removed),
                _fmt_share(r.clean_altered),
                _fmt_p(pair_p),
                prov or "-",
                acct,
                verdict,
            ]
        )
    return out


COLUMNS = (
    "attack",
    "pair signal removed",
    "clean altered",
    "pair p",
    "channel p provider (wb / bb)",
    "channel account (adj. p)",
    "verdict",
)


def markdown(result: SuiteResult) -> str:
    """The table as GitHub markdown, with the run's headline figures."""
    lines = [
        f"Attack suite: teacher {result.harvest.get('teacher', {}).get('model_id', '?')}, "
        f"{result.harvest.get('traces', 0)} traces over {result.harvest.get('accounts', 0)} account(s), "
        f"alpha = {result.alpha:g}, {result.seconds:.0f} s",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    return "\n".join(lines) + "\n"


def write_result(result: SuiteResult, out: Path) -> tuple[Path, Path]:
    """Write ``out`` (JSON) and the markdown table beside it (``.md``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.as_dict(), indent=2, default=str))
    md = out.with_suffix(".md")
    md.write_text(markdown(result))
    return out, md
