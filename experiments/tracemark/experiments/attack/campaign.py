"""The whole attack campaign on a self-hosted server (harvest, truth, every attack, control, K-account
spread), or the attacks alone on an existing harvest file."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tracemark.experiments.attack.detect import StudentSize, channel_verdict
from tracemark.experiments.attack.harvest import (
    HarvestError,
    HarvestRecord,
    account_names,
    harvest_grpc,
    plan_requests,
    write_harvest,
)
from tracemark.experiments.attack.measure import Truth, truth_from_ledger, write_truth
from tracemark.experiments.attack.selfhost import INVESTIGATOR, SelfHostedServer
from tracemark.experiments.attack.suite import (
    ALL_ATTACKS,
    BASELINE,
    CONTROL,
    PARAPHRASE,
    Detector,
    Paraphraser,
    SuiteResult,
    apply_attack,
    evaluate,
    sampling_prompts,
)
from tracemark.experiments.attack.transforms import ATTACKS
from tracemark.forensics.channel.score import tokenize_texts
from tracemark.foundation.channel import ChannelSpec, distinct_tuples, tokenizer_fingerprint
from tracemark.foundation.problems import generate_problems

Log = Callable[[str], None]


@dataclass(frozen=True)
class CampaignConfig:
    teacher: str = "reference"  # reference | embedded | tiny | config (the settings file's teacher)
    settings_file: Path | None = None
    accounts: int = 2
    problems: int = 120
    repeats: int = 0
    overlap: int = 0
    spread_accounts: int = 0  # a second harvest over this many accounts (provider-key test)
    spread_problems: int = 0
    difficulty: str = "easy"
    pipeline: tuple[str, ...] = ("restructure", "watermark")
    attacks: tuple[str, ...] = ALL_ATTACKS
    paraphraser: Paraphraser = field(default_factory=Paraphraser)
    student: StudentSize = field(default_factory=StudentSize)
    alpha: float = 1e-6
    seed: int = 0
    watermark_fraction: float = 0.1
    pairs_per_account: int = 2
    target_digits: int = 6
    max_new_tokens: int = 200
    channel_tokenizer: str = ""  # tokenizer folder of the channel's vocabulary ("": the embedded model)
    control: bool = True
    investigate: bool = True
    workers: int = 8

    def as_dict(self) -> dict:
        data = asdict(self)
        data["paraphraser"] = {"model_dir": self.paraphraser.model_dir, "endpoint": self.paraphraser.endpoint}
        data["settings_file"] = str(self.settings_file) if self.settings_file else None
        return data


def check_attacks(names: Sequence[str]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in ALL_ATTACKS]
    if unknown:
        raise HarvestError(f"unknown attack {unknown[0]!r}; known: {', '.join(ALL_ATTACKS)}")
    return tuple(names)


def load_channel_tokenizer(folder: str, spec: ChannelSpec | None):
    """The tokenizer of the channel's vocabulary; refuses one whose fingerprint differs from ``spec``'s."""
    from tracemark.foundation.models.embedded import ensure_embedded_model  # deferred: model files
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder or ensure_embedded_model())
    if spec is not None and spec.tokenizer and spec.tokenizer != tokenizer_fingerprint(tokenizer):
        raise HarvestError("the channel tokenizer's fingerprint differs from the one the teacher used")
    return tokenizer


def _progress(log: Log, what: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            log(f"{what}: {done}/{total} traces")

    return report


def with_tokenizer(spec: ChannelSpec, tokenizer) -> ChannelSpec:
    """``spec`` naming ``tokenizer`` by fingerprint (a teacher without the channel logs none)."""
    return spec if spec.tokenizer else replace(spec, tokenizer=tokenizer_fingerprint(tokenizer))


def _student_size(cfg: CampaignConfig) -> StudentSize:
    if cfg.student.tokenizer == "channel":
        from tracemark.foundation.models.embedded import ensure_embedded_model  # deferred: model files

        return replace(cfg.student, tokenizer=cfg.channel_tokenizer or str(ensure_embedded_model()))
    return cfg.student


def attack_rows(
    records: Sequence[HarvestRecord],
    truth: Truth | None,
    detector: Detector | None,
    *,
    attacks: Sequence[str],
    paraphraser: Paraphraser,
    student: StudentSize,
    workdir: Path,
    seed: int,
    difficulty: str,
    control: bool,
    log: Log,
) -> list:
    """One row per attack (plus the clean control when the records hold reference solutions)."""
    prompts = sampling_prompts(student.samples, seed=seed, difficulty=difficulty)
    harvesters = sorted({r.account for r in records})
    rows = []
    for name in attacks:
        log(f"attack '{name}'")
        attacked = apply_attack(name, records, paraphraser)
        desc = (
            ATTACKS[name][1]
            if name in ATTACKS
            else ("no attack (the raw harvest)" if name == BASELINE else "paraphrase every trace with an LLM")
        )
        rows.append(
            evaluate(
                name,
                desc,
                records,
                attacked,
                truth,
                detector,
                workdir=workdir,
                student=student,
                seed=seed,
                sample_prompts=prompts,
                harvesters=harvesters,
                log=log,
            )
        )
    if control and detector is not None and all(r.reference for r in records):
        log("control student (reference solutions, never watermarked)")
        clean = [r.with_trace(r.reference) for r in records]
        rows.append(
            evaluate(
                CONTROL,
                "clean control: reference solutions, no tracemark",
                records,
                clean,
                None,
                detector,
                workdir=workdir,
                student=student,
                seed=seed,
                sample_prompts=prompts,
                harvesters=[],
                log=log,
            )
        )
    return rows


def run_campaign(cfg: CampaignConfig, workdir: Path, *, log: Log = lambda _: None) -> SuiteResult:
    """Self-host a server, harvest through gRPC, and run every attack; results also under ``workdir``."""
    started = time.perf_counter()
    check_attacks(cfg.attacks)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    problems = generate_problems(cfg.problems + cfg.spread_problems, seed=cfg.seed, difficulty=cfg.difficulty)
    items = [(f"p{cfg.seed}-{i}", p.question, p.solution) for i, p in enumerate(problems)]
    harvesters = account_names(cfg.accounts)
    spread = account_names(cfg.spread_accounts, "spread") if cfg.spread_accounts else []
    overrides = {
        "rewrite": {
            "default_pipeline": list(cfg.pipeline),
            "watermark_fraction": cfg.watermark_fraction,
            "pairs_per_account": cfg.pairs_per_account,
            "target_digits": cfg.target_digits,
            "llm": "none",
        },
        "teacher": {"max_new_tokens": cfg.max_new_tokens},
    }
    teacher = "config" if cfg.teacher == "config" else cfg.teacher
    with SelfHostedServer(
        workdir,
        accounts=[*harvesters, *spread],
        teacher=teacher,
        problems=problems,
        settings_file=cfg.settings_file,
        overrides=overrides,
    ) as server:
        log(f"server on {server.address}: {server.teacher_info}")
        plan = plan_requests(items[: cfg.problems], harvesters, repeats=cfg.repeats, overlap=cfg.overlap)
        t0 = time.perf_counter()
        records = harvest_grpc(
            server.address, server.tokens, plan, workers=cfg.workers, progress=_progress(log, "harvest")
        )
        harvest_s = time.perf_counter() - t0
        spread_records: list[HarvestRecord] = []
        if spread:
            spread_plan = plan_requests(items[cfg.problems :], spread)
            spread_records = harvest_grpc(
                server.address,
                server.tokens,
                spread_plan,
                workers=cfg.workers,
                progress=_progress(log, "spread"),
            )
        issuer = server.runtime.issuer
        truth = truth_from_ledger(issuer.engine, issuer, [r.trace_id for r in [*records, *spread_records]])
        write_harvest(records, workdir / "harvest.jsonl")
        write_truth(truth, workdir / "truth.jsonl")
        if spread_records:
            write_harvest(spread_records, workdir / "harvest-spread.jsonl")
        spec = server.channel_spec
        tokenizer = load_channel_tokenizer(cfg.channel_tokenizer, spec)
        detector = Detector.from_master(
            server.master,
            [*harvesters, *spread],
            with_tokenizer(spec or ChannelSpec(), tokenizer),
            tokenizer,
            alpha=cfg.alpha,
            address=server.address if cfg.investigate else "",
            token=server.tokens[INVESTIGATOR] if cfg.investigate else "",
        )
        student = _student_size(cfg)
        # the teacher's own output, scored like a suspect's text: how strong the channel is at the source
        source = channel_verdict(
            distinct_tuples(
                tokenize_texts([r.trace for r in records], tokenizer), width=detector.spec.context_width
            ),
            mode="harvest",
            spec=detector.spec,
            provider_key=detector.provider_key,
            account_keys={a: detector.account_keys[a] for a in harvesters},
            harvesters=harvesters,
        )
        rows = attack_rows(
            records,
            truth,
            detector,
            attacks=cfg.attacks,
            paraphraser=cfg.paraphraser,
            student=student,
            workdir=workdir,
            seed=cfg.seed,
            difficulty=cfg.difficulty,
            control=cfg.control,
            log=log,
        )
        if spread_records:
            name = f"spread-{len(spread)}"
            log(f"'{name}': harvest over {len(spread)} accounts, no transform")
            rows.append(
                evaluate(
                    name,
                    f"harvest spread over {len(spread)} accounts (no transform)",
                    spread_records,
                    spread_records,
                    truth,
                    detector,
                    workdir=workdir,
                    student=student,
                    seed=cfg.seed,
                    sample_prompts=sampling_prompts(
                        student.samples, seed=cfg.seed, difficulty=cfg.difficulty
                    ),
                    harvesters=spread,
                    log=log,
                )
            )
        harvest = {
            "teacher": server.teacher_info,
            "channel_spec": spec.as_dict() if spec else None,
            "pipeline": list(cfg.pipeline),
            "harvest_channel": {"provider": source.provider, "accounts": source.accounts},
            "traces": len(records),
            "accounts": len(harvesters),
            "signed_traces": sum(1 for r in records if truth.get(r.trace_id)),
            "spread_traces": len(spread_records),
            "spread_accounts": len(spread),
            "harvest_s": harvest_s,
            "mean_request_s": sum(r.request_s for r in records) / max(1, len(records)),
        }
    return SuiteResult(cfg.as_dict(), rows, harvest, cfg.alpha, time.perf_counter() - started)


def run_on_harvest(
    records: Sequence[HarvestRecord],
    truth: Truth | None,
    *,
    workdir: Path,
    master=None,
    spec: ChannelSpec | None = None,
    accounts: Sequence[str] = (),
    channel_tokenizer: str = "",
    attacks: Sequence[str] = ALL_ATTACKS,
    paraphraser: Paraphraser | None = None,
    student: StudentSize | None = None,
    alpha: float = 1e-6,
    address: str = "",
    token: str = "",
    seed: int = 0,
    difficulty: str = "easy",
    control: bool = True,
    log: Log = lambda _: None,
) -> SuiteResult:
    """The attacks on an existing harvest. Detection needs ``master`` (the operator's master secret);
    the pair investigation also a server ``address`` and a compliance ``token``."""
    started = time.perf_counter()
    check_attacks(attacks)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    student = student or StudentSize()
    if student.tokenizer == "channel":
        from tracemark.foundation.models.embedded import ensure_embedded_model  # deferred: model files

        student = replace(student, tokenizer=channel_tokenizer or str(ensure_embedded_model()))
    detector = None
    if master is not None:
        tokenizer = load_channel_tokenizer(channel_tokenizer, spec)
        names = sorted(set(accounts) | {r.account for r in records})
        detector = Detector.from_master(
            master,
            names,
            with_tokenizer(spec or ChannelSpec(), tokenizer),
            tokenizer,
            alpha=alpha,
            address=address,
            token=token,
        )
    rows = attack_rows(
        records,
        truth,
        detector,
        attacks=attacks,
        paraphraser=paraphraser or Paraphraser(),
        student=student,
        workdir=workdir,
        seed=seed,
        difficulty=difficulty,
        control=control,
        log=log,
    )
    harvest = {
        "teacher": {"model_id": "harvest file"},
        "traces": len(records),
        "accounts": len({r.account for r in records}),
        "signed_traces": sum(1 for r in records if truth and truth.get(r.trace_id)) if truth else None,
    }
    config = {"attacks": list(attacks), "alpha": alpha, "seed": seed, "student": asdict(student)}
    return SuiteResult(config, rows, harvest, alpha, time.perf_counter() - started)


__all__ = ["CampaignConfig", "run_campaign", "run_on_harvest", "PARAPHRASE", "CONTROL"]
