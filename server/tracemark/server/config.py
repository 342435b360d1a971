"""Server configuration: a TOML file plus ``TRACEMARK_<SECTION>__<KEY>`` environment overrides.

Precedence (highest first): command-line flags, environment variables, the TOML file, defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from tracemark.forensics.adapters.policy import SuspectPolicy
from tracemark.foundation.errors import InvalidInput
from tracemark.foundation.files import read_toml

Quantization = Literal["auto", "none", "int8-dynamic", "int8", "nf4", "fp4"]
Backend = Literal["embedded", "transformers", "openai", "tiny"]


class ConfigError(InvalidInput):
    """The configuration file or an override is invalid (one-line message)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSection(_Section):
    address: str = Field("127.0.0.1:50051", description="host:port to listen on (port 0 picks a free port)")
    max_workers: int = Field(16, ge=1, description="gRPC handler threads")
    max_message_bytes: int = Field(1 << 20, ge=1024, description="largest request accepted, in bytes")
    max_problem_chars: int = Field(8000, ge=1, description="longest problem text accepted")
    max_trace_chars: int = Field(64000, ge=1, description="longest trace accepted by Rewrite")
    grace_period_s: float = Field(10.0, ge=0, description="seconds in-flight RPCs get on SIGTERM")
    tls_cert: Path | None = Field(None, description="PEM certificate; with tls_key enables TLS")
    tls_key: Path | None = Field(None, description="PEM private key")


class TeacherSection(_Section):
    backend: Backend = Field("embedded", description="embedded | transformers | openai | tiny")
    model: str = Field("", description="model folder or .gguf file (transformers); model name (openai)")
    endpoint: str = Field("", description="base URL of an OpenAI-compatible server, e.g. http://host:8000/v1")
    api_key_env: str = Field("TRACEMARK_TEACHER_API_KEY", description="env var holding the endpoint's key")
    quantization: Quantization = Field(
        "auto",
        description="auto (per device, measured: int8-dynamic on CPU, nf4 on CUDA) | none | int8-dynamic "
        "(torch dynamic int8, CPU) | int8 | nf4 | fp4 (bitsandbytes)",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    max_new_tokens: int = Field(256, ge=1, le=8192)
    max_batch_size: int = Field(8, ge=1, description="requests generated together")
    batch_window_ms: float = Field(15.0, ge=0, description="how long the batcher waits to fill a batch")
    max_queue: int = Field(64, ge=1, description="queued requests before RESOURCE_EXHAUSTED")
    request_timeout_s: float = Field(120.0, gt=0, description="remote endpoint time-out")
    decoding: Literal["standard", "ads"] = Field(
        "standard", description="standard | ads (antidistillation sampling with a proxy student; local only)"
    )
    ads_lambda: float = Field(0.5, ge=0, description="ADS strength λ (logits += λ·Δ)")
    ads_epsilon: float = Field(0.01, gt=0, description="ADS finite-difference step ε (normalised gradient)")
    ads_proxy: str = Field("", description="proxy student folder for ADS (empty: the embedded model)")
    ads_heldout: int = Field(16, ge=1, description="generated clean traces used for the proxy's gradient")
    system_prompt: str = Field(
        "You are a careful math tutor. Solve the problem step by step, then give the final answer "
        "on its own last line as '#### <number>'.",
        description="system message sent before each problem",
    )


class AuthSection(_Section):
    tokens_file: Path | None = Field(
        None, description="TOML file mapping accounts to sha256 token hashes (see `tracemark accounts`)"
    )
    allow_anonymous: bool = Field(False, description="accept calls without a token (no watermark)")


class RewriteSection(_Section):
    default_pipeline: list[str] = Field(
        default_factory=lambda: ["restructure", "watermark"], description="rewriters run by default"
    )
    mandatory: list[str] = Field(
        default_factory=lambda: ["watermark"],
        description="rewriters appended to every caller-chosen pipeline that lacks them (no opting out)",
    )
    timeout_s: float = Field(30.0, gt=0, description="time limit per rewriter step")
    retries: int = Field(1, ge=0, description="guard retries before falling back to the input trace")
    watermark_fraction: float = Field(0.1, ge=0, le=1, description="share of an account's traces signed")
    watermark_weave: Literal["template", "llm"] = Field(
        "template",
        description="how pairs are woven: template (keyed, model-free, microseconds) | llm (the rewrite LLM "
        "for every trace, signed or not; use only with an LLM that does this job well and fast)",
    )
    pairs_per_account: int = Field(2, ge=1, le=64, description="signature pairs derived per account")
    target_digits: int = Field(
        6,
        ge=2,
        le=7,
        description="digits of a signature target (candidate space 10^digits; min p per pair); recorded in "
        "the transparency log with each account key commitment, so investigations cannot change it",
    )
    on_error: Literal["fallback", "raise"] = Field(
        "fallback", description="a crashing/hung rewriter: fall back to its input, or fail the RPC"
    )
    llm: Literal["teacher", "openai", "none"] = Field(
        "teacher", description="LLM used by LLM rewriters (semantic, optimized, LLM-woven watermark)"
    )
    llm_endpoint: str = Field("", description="OpenAI-compatible base URL when llm = openai")
    llm_model: str = Field("", description="model name at llm_endpoint")

    @field_validator("default_pipeline", "mandatory", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value


class ChannelSection(_Section):
    """The distributional watermark channel (keyed green lists, see ``tracemark.foundation.channel``):
    applied wherever a model decodes text a customer receives, with the provider key on every trace and
    the caller's account key on its own. Its keys derive from the ledger's master secret."""

    enabled: bool = Field(
        True,
        description="bias decoding with the channel (model teachers and LLM rewriters; a reference "
        "teacher cannot carry it)",
    )
    gamma: float = Field(0.25, gt=0, lt=1, description="share of the vocabulary green under each key")
    provider_delta: float = Field(
        1.5, ge=0, le=20, description="logit bias of the provider key's green tokens"
    )
    account_delta: float = Field(1.5, ge=0, le=20, description="logit bias of the account key's green tokens")
    context_width: Literal[0, 1] = Field(
        1, description="1: green lists keyed on the previous token (KGW); 0: one fixed list per key"
    )
    tokenizer: str = Field(
        "",
        description="tokenizer folder naming the deployment's channel vocabulary: a teacher that cannot "
        "decode with the channel (reference solutions) still logs this spec, so replicas with model and "
        "model-free teachers share one scheme; a model teacher must have this vocabulary",
    )
    openai_logit_bias: bool = Field(
        False, description="the OpenAI-compatible teacher endpoint accepts logit_bias (width-0 channel)"
    )
    openai_tokenizer: str = Field(
        "", description="local tokenizer folder with the endpoint's vocabulary (needed for logit_bias)"
    )
    openai_vllm_plugin: bool = Field(
        False,
        description="the OpenAI-compatible teacher endpoint is vLLM with the tracemark-vllm logits processor "
        "(the full channel is applied inside the engine; the account goes in vllm_xargs, no logit_bias)",
    )
    llm_tokenizer: str = Field(
        "", description="same for the rewriters' endpoint when rewrite.llm = openai (empty: no channel there)"
    )
    max_bias_tokens: int = Field(
        300, ge=1, le=300, description="logit_bias entries per request (OpenAI accepts at most 300)"
    )

    @model_validator(mode="after")
    def _tokenizer_for_bias(self) -> ChannelSection:
        if self.openai_logit_bias and not self.openai_tokenizer:
            raise ValueError("openai_logit_bias needs openai_tokenizer (the endpoint's vocabulary)")
        if self.openai_vllm_plugin and not self.openai_tokenizer:
            raise ValueError("openai_vllm_plugin needs openai_tokenizer (the endpoint's vocabulary)")
        if self.openai_vllm_plugin and self.openai_logit_bias:
            raise ValueError(
                "openai_vllm_plugin and openai_logit_bias are exclusive (the plugin applies the channel)"
            )
        return self


class LedgerSection(_Section):
    url: str = Field("", description="SQLAlchemy URL; empty means SQLite in the user data folder")
    master_key_file: Path | None = Field(None, description="master secret file (created 0600 if missing)")


class ForensicsSection(_Section):
    """The suspects ForensicsService.Investigate may query (the command line is not restricted). Empty
    lists (the default): the server investigates no suspect until its operator lists some."""

    endpoints: list[str] = Field(
        default_factory=list,
        description="suspect endpoints the server may query: OpenAI-compatible base URLs "
        "(https://host[:port]/v1) and tracemark://HOST:PORT; matched exactly after normalisation",
    )
    model_roots: list[Path] = Field(
        default_factory=list, description="folders under which hf:/gguf: suspect models may be loaded"
    )
    credentials: dict[str, str] = Field(
        default_factory=dict,
        description="endpoint -> NAME of the environment variable holding its API key or bearer token",
    )

    @model_validator(mode="after")
    def _valid_policy(self) -> ForensicsSection:
        self.policy()  # SuspectSpecError is a ValueError: reported as an invalid setting
        return self

    def policy(self) -> SuspectPolicy:
        return SuspectPolicy.build(self.endpoints, self.model_roots, self.credentials)


class Settings(BaseSettings):
    """All server settings; see ``tracemark serve --help`` and README for each key."""

    model_config = SettingsConfigDict(env_prefix="TRACEMARK_", env_nested_delimiter="__", extra="forbid")

    server: ServerSection = Field(default_factory=ServerSection)
    teacher: TeacherSection = Field(default_factory=TeacherSection)
    auth: AuthSection = Field(default_factory=AuthSection)
    rewrite: RewriteSection = Field(default_factory=RewriteSection)
    ledger: LedgerSection = Field(default_factory=LedgerSection)
    channel: ChannelSection = Field(default_factory=ChannelSection)
    forensics: ForensicsSection = Field(default_factory=ForensicsSection)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment overrides them.
        return (env_settings, init_settings)


def load_settings(path: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Settings:
    """Read ``path`` (TOML), apply env overrides, then ``overrides`` (from CLI flags)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_toml(path, what="config file", error=ConfigError)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None
    # Flags beat the environment, so sections are rebuilt directly rather than re-read.
    updates = {}
    for section, values in (overrides or {}).items():
        current = getattr(settings, section)
        clean = {k: v for k, v in values.items() if v is not None}
        try:
            updates[section] = type(current).model_validate({**current.model_dump(), **clean})
        except ValidationError as exc:
            raise ConfigError(_first_error(exc, prefix=section)) from None
    settings = settings.model_copy(update=updates)
    for endpoint, name in settings.forensics.credentials.items():
        # a suspect is the accused: it must never receive the server's own token or the teacher's key
        if name.upper().startswith("TRACEMARK_") or name == settings.teacher.api_key_env:
            raise ConfigError(
                f"invalid setting forensics.credentials: {endpoint!r} names {name}, one of the server's own"
                " variables (TRACEMARK_* or teacher.api_key_env); use a variable of its own"
            )
    return settings


def _first_error(exc: ValidationError, prefix: str = "") -> str:
    first = exc.errors()[0]
    where = ".".join([prefix, *(str(p) for p in first["loc"])] if prefix else [str(p) for p in first["loc"]])
    return f"invalid setting {where}: {first['msg']}"
