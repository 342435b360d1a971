"""Everything a running server holds: teacher, queue, rewriter registry and pipeline, signature issuer."""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from dataclasses import asdict, dataclass, field
from random import Random
from typing import Any

import grpc
from sqlalchemy.engine import Engine
from tracemark.forensics.issuer import SignatureIssuer
from tracemark.forensics.keys import MasterSecret
from tracemark.forensics.ledger.db import make_engine
from tracemark.forensics.signatures import CandidateSpace
from tracemark.foundation.channel import ChannelSpec, Keyring, tokenizer_fingerprint
from tracemark.plugins.api import LLMBackend, RewriteContext, SignatureService, WatermarkPolicy
from tracemark.plugins.isolation import WorkerPool
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import TRUSTED_DISTRIBUTIONS, RewritePipeline
from tracemark.server.batching import ChannelKeys, GenerationQueue
from tracemark.server.config import Settings
from tracemark.server.decoding import MAX_OPTION_ENTRIES, load_json_object, pipeline_names, shown
from tracemark.server.errors import RequestError, invalid
from tracemark.server.llm import DirectLLM, QueuedLLM
from tracemark.server.teacher.base import TeacherBackend, TeacherError
from tracemark.server.teacher.remote import OpenAITeacher

log = logging.getLogger(__name__)


def _load_tokenizer(path: str):
    """The local tokenizer holding a remote endpoint's vocabulary (for the logit_bias channel)."""
    from transformers import AutoTokenizer  # deferred: only an OpenAI teacher with logit_bias needs it

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise TeacherError(f"cannot load the channel tokenizer {path!r}: {type(exc).__name__}") from None


PLUGIN_WORKERS = 4  # third-party plugin steps running at once (each in its own worker process)
# Green-list row caches (one row = vocab_size bytes, ~49 KB for the embedded model): the provider key marks
# every trace, so its rows for common tokens are reused across requests; an account's rows mostly within one
# request. Worst case 2048 + 128 * 32 rows: ~300 MB at a 49K vocabulary.
CHANNEL_PROVIDER_ROWS = 2048
CHANNEL_ACCOUNTS = 128
CHANNEL_ACCOUNT_ROWS = 32
# Teachers that cannot weave a signature pair into a trace (measured: the embedded 135M model timed out or
# garbled the pair on every trace): with rewrite.llm = teacher, the weave uses the keyed template.
WEAVE_INCAPABLE_BACKENDS = frozenset({"embedded", "tiny"})


@dataclass
class Runtime:
    """What one server process holds; filled in by the start-up steps below, in this order:
    :meth:`load_plugins`, :meth:`open_ledger`, then :meth:`attach_teacher` once the teacher has loaded."""

    settings: Settings
    registry: RewriterRegistry | None = None
    pipeline: RewritePipeline | None = None
    issuer: SignatureIssuer | None = None
    engine: Engine | None = None
    master: MasterSecret | None = None
    teacher: TeacherBackend | None = None
    queue: GenerationQueue | None = None
    llm: LLMBackend | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    load_error: str = ""
    pool: WorkerPool | None = None
    # The distributional channel: public parameters in effect for the teacher (None: off), and the keys.
    channel_spec: ChannelSpec | None = None
    channel: ChannelKeys | None = None
    # With rewrite.llm = openai, the rewriters' endpoint has its own (width-0, logit_bias) channel spec;
    # with rewrite.llm = teacher, LLM rewriters decode through the teacher under ``channel_spec``.
    llm_channel_spec: ChannelSpec | None = None
    # A tokenizer with the channel's vocabulary (the teacher's), for black-box channel detection.
    channel_tokenizer: Any = None
    _channel_tokenizer_cache: Any = None
    # How pairs are woven in effect: rewrite.watermark_weave, unless its LLM cannot do the job ("" until
    # the teacher is attached).
    weave_mode: str = ""

    # --- start-up -------------------------------------------------------------------------------
    def load_plugins(self) -> None:
        self.registry = RewriterRegistry.discover()
        rw = self.settings.rewrite
        third_party = [
            r.name
            for r in self.registry.records
            if r.status == "loaded" and r.distribution.lower() not in TRUSTED_DISTRIBUTIONS
        ]
        # Third-party steps run in killable worker processes; one is started now so the first call is warm.
        self.pool = WorkerPool(max_workers=PLUGIN_WORKERS, warm=1) if third_party else None
        self.pipeline = RewritePipeline(
            self.registry, timeout_s=rw.timeout_s, retries=rw.retries, on_error=rw.on_error, pool=self.pool
        )
        for record in self.registry.records:
            if record.status != "loaded":
                log.warning(
                    "rewriter %s (%s) %s: %s", record.name, record.distribution, record.status, record.error
                )
        for name in rw.default_pipeline:
            self.registry.get(name)  # fail at start-up, not on the first request

    def open_ledger(self) -> None:
        ledger = self.settings.ledger
        self.master = MasterSecret.load(path=ledger.master_key_file)
        self.engine = make_engine(ledger.url or None)
        self.issuer = SignatureIssuer(
            master=self.master,
            engine=self.engine,
            pairs_per_account=self.settings.rewrite.pairs_per_account,
            space=CandidateSpace(digits=self.settings.rewrite.target_digits),
        )
        # The channel part is checked once the teacher says which channel it decodes with.
        self.issuer.check_scheme(ignore_channel=True)

    def attach_teacher(self, teacher: TeacherBackend) -> None:
        t = self.settings.teacher
        self.teacher = teacher
        c = self.settings.channel
        self.channel_spec, self.channel = self._configure_channel(
            teacher,
            c.openai_tokenizer if (c.openai_logit_bias or c.openai_vllm_plugin) else "",
            teacher_side=True,
            vllm_plugin=c.openai_vllm_plugin,
        )
        self.channel_tokenizer = None
        if self.channel_spec is not None:
            self.channel_tokenizer = (
                getattr(teacher, "channel_tokenizer", None)
                or getattr(teacher, "tokenizer", None)
                or self._channel_tokenizer_cache
            )
        if self.issuer is not None:
            # The scheme gains the channel spec and the provider key's commitment is logged before the
            # first decoded trace (SchemeMismatch when this key version was logged under another scheme).
            self.issuer.attach_channel(self.channel_spec)
        self.queue = GenerationQueue(
            teacher,
            max_batch=t.max_batch_size,
            window_s=t.batch_window_ms / 1000,
            max_queue=t.max_queue,
            channel=self.channel,
        )
        rw = self.settings.rewrite
        if rw.llm == "teacher":
            self.llm = QueuedLLM(self.queue, teacher.info.model_id)
        elif rw.llm == "openai":
            backend = OpenAITeacher(rw.llm_endpoint, rw.llm_model)
            self.llm_channel_spec, keys = self._configure_channel(backend, c.llm_tokenizer)
            self.llm = DirectLLM(backend, channel=keys)
            log.info("distributional channel of the rewriters' LLM: %s", backend.info.extra["channel"])
        log.info("distributional channel: %s", teacher.info.extra.get("channel", "off"))
        self.weave_mode = rw.watermark_weave
        if (
            rw.watermark_weave == "llm"
            and rw.llm == "teacher"
            and teacher.info.backend in WEAVE_INCAPABLE_BACKENDS
        ):
            self.weave_mode = "template"
            log.warning(
                "rewrite.watermark_weave = llm asks the %s teacher to weave pairs, which it cannot do; "
                "weaving with the template (configure rewrite.llm = openai with a capable model for llm)",
                teacher.info.backend,
            )
        log.info("watermark weave: %s", self.weave_mode)

    def _configure_channel(
        self,
        backend: TeacherBackend,
        bias_tokenizer: str,
        *,
        teacher_side: bool = False,
        vllm_plugin: bool = False,
    ) -> tuple[ChannelSpec | None, ChannelKeys | None]:
        """The channel ``backend`` carries (spec in effect, keys), or ``(None, None)`` when it is off.
        ``bias_tokenizer``: for an OpenAI-compatible endpoint, the local tokenizer folder of its vocabulary
        (empty: the endpoint gets no logit_bias). On the teacher side, ``channel.tokenizer`` names the
        deployment's vocabulary: a teacher that cannot decode with the channel still logs that spec."""
        c = self.settings.channel
        if not c.enabled:
            backend.info.extra["channel"] = "off (channel.enabled = false)"
            return None, None
        if self.master is None:
            backend.info.extra["channel"] = "off (no master secret: the ledger is not open)"
            return None, None
        spec = ChannelSpec(
            gamma=c.gamma,
            provider_delta=c.provider_delta,
            account_delta=c.account_delta,
            context_width=c.context_width,
        )
        if isinstance(backend, OpenAITeacher):
            tokenizer = _load_tokenizer(bias_tokenizer) if bias_tokenizer else None
            spec = backend.configure_channel(
                spec, tokenizer=tokenizer, max_bias_tokens=c.max_bias_tokens, vllm_plugin=vllm_plugin
            )
        else:
            spec = backend.configure_channel(spec)
        if teacher_side and c.tokenizer:
            fingerprint = tokenizer_fingerprint(self._deployment_tokenizer())
            if spec is None:  # cannot decode with it, but logs the deployment's spec (one scheme)
                spec = dataclasses.replace(
                    ChannelSpec(
                        gamma=c.gamma,
                        provider_delta=c.provider_delta,
                        account_delta=c.account_delta,
                        context_width=c.context_width,
                    ),
                    tokenizer=fingerprint,
                )
                backend.info.extra["channel"] += f"; logged spec over channel.tokenizer {fingerprint}"
                return spec, None
            if spec.tokenizer != fingerprint:
                raise TeacherError(
                    f"the teacher's vocabulary ({spec.tokenizer}) is not channel.tokenizer's ({fingerprint})"
                )
        if spec is None:
            return None, None
        master = self.master
        keyring = Keyring(
            spec,
            master.channel_key(None),
            lambda account: master.channel_key(account),
            max_accounts=CHANNEL_ACCOUNTS,
            provider_cache_rows=CHANNEL_PROVIDER_ROWS,
            account_cache_rows=CHANNEL_ACCOUNT_ROWS,
        )
        return spec, ChannelKeys(keyring)

    def _deployment_tokenizer(self) -> Any:
        if self._channel_tokenizer_cache is None:
            self._channel_tokenizer_cache = _load_tokenizer(self.settings.channel.tokenizer)
        return self._channel_tokenizer_cache

    def channel_description(self) -> str:
        """The channel in effect, in words (public parameters only)."""
        return self.teacher.info.extra.get("channel", "off") if self.teacher is not None else "off"

    # --- per request ----------------------------------------------------------------------------
    def resolve_pipeline(self, names: list[str], options_json: dict[str, str]) -> tuple[list[str], dict]:
        """Validate rewriter names and options before any work; raise RequestError / domain errors."""
        names = pipeline_names(names) or list(self.settings.rewrite.default_pipeline)
        names += [m for m in self.settings.rewrite.mandatory if m not in names]
        if len(options_json) > MAX_OPTION_ENTRIES:
            count = len(options_json)
            raise invalid(f"options are given for {count} rewriters; the limit is {MAX_OPTION_ENTRIES}")
        options: dict[str, dict] = {}
        for name, raw in options_json.items():
            options[name] = load_json_object(raw, what=f"options for {shown(name)}")
        self.pipeline.prepare(names, options)
        self._check_host_owned(options)
        return names, options

    def _check_host_owned(self, options: dict[str, dict]) -> None:
        """Options the server's policy sets (watermark ``fraction``) may only repeat the server's value."""
        policy = self._policy()
        if policy is None:
            return
        values = asdict(policy)
        for name, given in options.items():
            owned = getattr(self.registry.get(name), "host_owned_options", frozenset())
            for key in sorted(owned & set(given)):
                if key in values and given[key] != values[key]:
                    raise invalid(
                        f"option {key!r} of rewriter {name!r} is set by the server's policy; "
                        "a request may not change it (omit it)"
                    )

    def rewrite(
        self,
        trace: str,
        *,
        problem: str,
        names: list[str],
        options: dict,
        account: str | None,
        seed: int | None = None,
        trace_id: str | None = None,
    ):
        trace_id = trace_id or uuid.uuid4().hex
        signatures, watermark_policy = self._services()
        if self.llm is not None:
            self.decoding_for(account)  # LLM rewriters may decode under the caller's channel key
        context = RewriteContext(
            problem=problem,
            account=account,
            trace_id=trace_id,
            rng=Random(seed if seed else uuid.UUID(trace_id).int),
            # LLM-woven text reaches the caller: it is decoded with the caller's channel keys.
            llm=self._llm_for(account),
            signatures=signatures,
            watermark_policy=watermark_policy,
        )
        return trace_id, self.pipeline.run(trace, names=names, options=options, context=context)

    def decoding_for(self, account: str | None) -> None:
        """Call before decoding text for ``account`` under its channel key: the key's commitment is logged
        first (once per account and key version)."""
        if account and self.issuer is not None and (self.channel is not None or self._llm_channel()):
            self.issuer.ensure_channel_account(account)

    def _llm_channel(self) -> bool:
        return getattr(self.llm, "channel", None) is not None

    def _llm_for(self, account: str | None) -> LLMBackend | None:
        """The rewriters' LLM decoding for ``account`` (an LLM without channel support as it is)."""
        bind = getattr(self.llm, "for_account", None)
        return bind(account) if bind is not None else self.llm

    def _services(self) -> tuple[SignatureService | None, WatermarkPolicy | None]:
        """The host services of a rewrite: (signature service, watermark policy), or (None, None)."""
        if self.issuer is None:
            return None, None
        return self.issuer, self._policy()

    def _policy(self) -> WatermarkPolicy | None:
        """The server's watermark policy (None without a ledger); requests cannot change it."""
        if self.issuer is None:
            return None
        rw = self.settings.rewrite
        return WatermarkPolicy(fraction=rw.watermark_fraction, mode=self.weave_mode or rw.watermark_weave)

    def close(self) -> None:
        """Stop the plugin worker processes."""
        if self.pool is not None:
            self.pool.close()

    def require_ready(self) -> None:
        if not self.ready.is_set():
            detail = f": {self.load_error}" if self.load_error else " (still loading)"
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "teacher not ready" + detail)
