"""Configuration of ``tracemark bench distill`` (a TOML or JSON file; every key has a CPU-scale default).

The shipped CPU-scale config is ``benchmarks/distill-cpu.toml``; ``benchmarks/distill-gpu.toml`` shows the
full-scale settings (an OpenAI-compatible teacher and rewriter, GSM8K, a 1B+ student). Unknown keys are
errors, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tracemark.experiments.countermeasures import COUNTERMEASURES
from tracemark.foundation.errors import InvalidInput

__all__ = ["BenchConfig", "BenchConfigError", "load_bench_config"]

KNOWN_METHODS = ("restructure", "semantic", "optimized", "hotflip", "embedding-ascent")
PROXY_METHODS = ("hotflip", "embedding-ascent")


class BenchConfigError(InvalidInput):
    """The benchmark config file is missing, unreadable or invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProblemsSection(_Section):
    source: Literal["generated", "gsm8k"] = Field("generated", description="procedural generator or a JSONL")
    path: str = Field("", description="GSM8K-style JSONL (question/answer) when source = gsm8k")
    difficulty: str = Field("easy", description="generator preset: easy | medium | hard | gsm")
    templates: Literal["heldout", "shared"] = Field(
        "heldout",
        description="generated: 'heldout' trains on TRAIN_TEMPLATES and tests on HELDOUT_TEMPLATES (no test "
        "problem shares a template with training); 'shared' draws both from the classic eight",
    )
    train: int = Field(80, ge=1, description="problems whose traces the students are trained on (per seed)")
    test: int = Field(200, ge=1, description="held-out problems for accuracy (the same for every seed)")
    train_lines: tuple[int, int] = Field(
        (0, 5000), description="gsm8k: training problems are drawn from these lines [start, end) of the file"
    )
    test_lines: tuple[int, int] = Field(
        (5000, 6000), description="gsm8k: held-out problems are the first `test` of these lines [start, end)"
    )

    @model_validator(mode="after")
    def _path_for_gsm8k(self) -> ProblemsSection:
        if self.source == "gsm8k" and not self.path:
            raise ValueError("problems.path is required when problems.source = 'gsm8k'")
        (a, b), (c, d) = self.train_lines, self.test_lines
        if not (0 <= a < b and 0 <= c < d):
            raise ValueError("problems.train_lines and test_lines must be [start, end) with start < end")
        if a < d and c < b:
            raise ValueError("problems.train_lines and test_lines overlap")
        if self.source == "gsm8k" and (self.test > d - c or self.train > b - a):
            raise ValueError("problems.test/train exceed their line ranges")
        return self


class TeacherSection(_Section):
    kind: Literal["reference", "local", "embedded", "openai"] = Field(
        "reference",
        description="reference: the problems' worked solutions; local/embedded: a transformers model "
        "generates; openai: an OpenAI-compatible endpoint generates",
    )
    model: str = Field("", description="model folder/.gguf (local) or model name (openai)")
    endpoint: str = Field("", description="OpenAI-compatible base URL (openai)")
    api_key_env: str = Field("TRACEMARK_TEACHER_API_KEY", description="env var holding the endpoint's key")
    max_new_tokens: int = Field(256, ge=16)
    forcing_model: str = Field(
        "embedded",
        description="model for answer-forced teacher accuracy of each trace set: 'embedded', a folder, "
        "'teacher' (the openai teacher, asked for the final answer) or '' to skip",
    )


class RewriteSection(_Section):
    methods: list[str] = Field(
        default_factory=lambda: ["restructure", "semantic", "optimized", "hotflip", "embedding-ascent"],
        description="rewriters applied to the clean traces (one trace set each; any installed rewriter)",
    )
    llm: Literal["embedded", "local", "openai", "none"] = Field(
        "embedded", description="LLM behind semantic/optimized"
    )
    llm_model: str = Field("", description="model folder (local) or model name (openai)")
    llm_endpoint: str = Field("", description="OpenAI-compatible base URL (openai)")
    llm_api_key_env: str = Field("TRACEMARK_REWRITE_API_KEY")
    workers: int = Field(8, ge=1, description="traces rewritten concurrently (LLM calls batch together)")
    timeout_s: float = Field(600.0, gt=0, description="per-step time limit of the answer guard")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-rewriter options, e.g. [rewrite.options.hotflip]"
    )
    proxy: str = Field(
        "distinct",
        description="proxy student of the gradient rewriters (hotflip, embedding-ascent) and ADS: 'distinct' "
        "(a student fine-tuned on clean traces of other problems with another seed: not the student "
        "being measured), 'oracle' (the student's own base model) or a model folder",
    )
    oracle_rows: bool = Field(
        False, description="also add '<method>@oracle' rows whose proxy is the student's own base model"
    )


class AdaptiveSection(_Section):
    countermeasure: str = Field(
        "all",
        description="the distiller's key-blind cleanup before distilling (see tracemark.experiments."
        "countermeasures): none | invert | flip | strip | normalise | all; '<set>+<countermeasure>' rows",
    )
    control: bool = Field(True, description="also the 'clean+<countermeasure>' row (the cleanup's own cost)")

    @field_validator("countermeasure")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in COUNTERMEASURES:
            raise ValueError(f"unknown countermeasure {value!r} (one of {', '.join(COUNTERMEASURES)})")
        return value


class UtilitySection(_Section):
    problems: int = Field(
        100, ge=0, description="traces per set scored for utility (answer line removed) and readability"
    )


class StatsSection(_Section):
    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise error of the table's tests (Holm)")
    bootstrap: int = Field(2000, ge=100, description="bootstrap draws for intervals")
    permutations: int = Field(10000, ge=100, description="sign-flip draws of the paired tests")


class AdsSection(_Section):
    enabled: bool = Field(True, description="add the antidistillation-sampling rows")
    teacher: str = Field(
        "student:clean",
        description="local teacher that decodes with and without ADS: 'student:clean' (the student "
        "trained on clean traces: the most capable local model at CPU scale) or a model folder",
    )
    proxy: str = Field("", description="proxy student folder (empty: the same proxy as rewrite.proxy)")
    lambdas: list[float] = Field(
        default_factory=lambda: [0.5],
        alias="lambda",
        description="ADS strength λ, or a list of them (one trace set and student each: ads-<λ>)",
    )
    epsilon: float = Field(0.01, gt=0)
    heldout: int = Field(16, ge=1, description="clean traces for the proxy's held-out gradient")
    batch_size: int = Field(8, ge=1)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("lambdas", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, int | float) else value

    @field_validator("lambdas")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if not value or any(v < 0 for v in value):
            raise ValueError("ads.lambda must be one or more numbers >= 0")
        return value

    def set_names(self) -> list[str]:
        """Trace-set names of the ADS rows, one per λ."""
        return [f"ads-{lam:g}" for lam in self.lambdas]


class StudentSection(_Section):
    model: str = Field("embedded", description="'embedded', 'tiny' (random char-level model) or a folder")
    method: Literal["lora", "full"] = "lora"
    epochs: float = Field(1, gt=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    max_length: int = Field(384, ge=32)
    eval_max_new_tokens: int = Field(100, ge=8)
    eval_batch: int = Field(8, ge=1)
    eval_forced: bool = Field(
        False, description="also score answer-forced accuracy (slow on CPU; free accuracy is the table's)"
    )
    threads: int = Field(1, ge=1, description="torch threads (1 is fastest on a small shared CPU)")
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto (CUDA when visible) | cpu | cuda | cuda:N",
    )


class WatermarkSection(_Section):
    fractions: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1])
    seeds: list[int] = Field(default_factory=lambda: [0, 1])
    train: int = Field(800, ge=10, description="protected traces harvested per run (demo-sized student)")
    bystanders: int = Field(19, ge=1, description="accounts never distilled (false-alarm opportunities)")
    alpha: float = Field(1e-3, gt=0, lt=1)
    pairs_per_account: int = Field(2, ge=1)
    target_digits: int = Field(4, ge=2, le=8)
    epochs: float = Field(4, gt=0)

    @model_validator(mode="after")
    def _fractions_in_range(self) -> WatermarkSection:
        if any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError("watermark.fractions must lie in (0, 1]")
        return self


class BenchConfig(_Section):
    name: str = Field("cpu", description="label printed in the results")
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        min_length=1,
        description="one student per trace set and seed; a seed also draws the training problems and the "
        "rewriters' randomness",
    )
    problems: ProblemsSection = Field(default_factory=ProblemsSection)
    teacher: TeacherSection = Field(default_factory=TeacherSection)
    rewrite: RewriteSection = Field(default_factory=RewriteSection)
    ads: AdsSection = Field(default_factory=AdsSection)
    adaptive: AdaptiveSection = Field(default_factory=AdaptiveSection)
    utility: UtilitySection = Field(default_factory=UtilitySection)
    stats: StatsSection = Field(default_factory=StatsSection)
    student: StudentSection = Field(default_factory=StudentSection)
    watermark: WatermarkSection = Field(default_factory=WatermarkSection)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(v < 0 for v in value):
            raise ValueError("seeds must be distinct non-negative integers")
        return value

    def protected_sets(self) -> list[str]:
        """Trace sets of the protection rows (rewriters, oracle-proxy variants, ADS strengths)."""
        names = list(self.rewrite.methods)
        if self.rewrite.oracle_rows:
            names += [f"{m}@oracle" for m in self.rewrite.methods if m in PROXY_METHODS]
        if self.ads.enabled:
            names += self.ads.set_names()
        return names

    def adaptive_sets(self) -> list[str]:
        """'<set>+<countermeasure>' rows: the distiller cleans each protected set (and clean, as control)."""
        c = self.adaptive.countermeasure
        if c == "none":
            return []
        sources = self.protected_sets() + (["clean"] if self.adaptive.control else [])
        return [f"{name}+{c}" for name in sources]

    def student_sets(self) -> list[str]:
        """Every trace set a student is trained on, per seed (the untrained 'base' is apart)."""
        names = ["clean", *self.rewrite.methods]
        if self.rewrite.oracle_rows:
            names += [f"{m}@oracle" for m in self.rewrite.methods if m in PROXY_METHODS]
        if self.ads.enabled:
            names += ["teacher-standard", *self.ads.set_names()]
        return names + self.adaptive_sets()

    def fingerprint(self) -> str:
        """Hash of every setting that changes results (not the name, not the device)."""
        data = self.model_dump(mode="json", by_alias=True, exclude={"name": True, "student": {"device"}})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_bench_config(path: str | Path | None) -> BenchConfig:
    """Read a TOML (``.toml``) or JSON config; ``None`` gives the CPU-scale defaults."""
    if path is None:
        return BenchConfig()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BenchConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise BenchConfigError(f"config {path} is not valid {kind}: {exc}") from None
    try:
        return BenchConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise BenchConfigError(f"config {path}: {where}: {first['msg']}") from None
