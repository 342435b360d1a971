"""The tracemark-vllm logits processor (integrations/vllm).

vLLM is not installed in the test environment (it would pull its own torch). The processor is driven
through the methods vLLM 0.34's V2 model runner calls (``cls(vllm_config, req_states)``,
``validate_params``, ``add_request(slot, sampling_params)``, ``apply(logits, ctx)``), with the objects
vLLM passes emulated by local dataclasses that copy the fields of ``LogitsProcRequestState`` and
``LogitsContext`` (vllm/v1/worker/gpu/sample/logits_processor/interface.py) and of ``SamplingParams``
(``extra_args``). When ``vllm`` is importable, vLLM's own classes and its plugin loader are used instead.
"""

from __future__ import annotations

import importlib.metadata
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import typer
from tracemark.forensics.channel_keys import (
    ChannelKeyFile,
    ChannelKeyFileError,
    UnknownChannelAccount,
    export_channel_keys,
    write_channel_key_file,
)
from tracemark.forensics.keys import MasterSecret
from tracemark.foundation.channel import ChannelSpec, Keyring, batch_bias, tokenizer_fingerprint
from tracemark.foundation.models.channel_processor import ChannelLogitsProcessor, add_channel_bias
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "integrations" / "vllm"
try:
    import tracemark_vllm  # noqa: F401  (installed: pip install -e integrations/vllm)
except ImportError:
    sys.path.insert(0, str(DIST))
from tracemark_vllm import processor as plugin  # noqa: E402

MASTER_HEX = "11" * 32


@dataclass(frozen=True)
class LocalRequestState:
    """Fields of vllm's ``LogitsProcRequestState`` (0.34); the processor reads ``max_num_reqs``."""

    device: Any
    max_num_reqs: int
    vocab_size: int
    all_token_ids: Any = None
    prompt_len: Any = None
    prefill_len: Any = None
    total_len: Any = None


@dataclass(frozen=True)
class LocalLogitsContext:
    """Fields of vllm's ``LogitsContext`` (0.34)."""

    expanded_idx_mapping: torch.Tensor
    idx_mapping: torch.Tensor
    idx_mapping_np: np.ndarray
    expanded_local_pos: torch.Tensor
    input_ids: torch.Tensor
    pos: torch.Tensor
    seq_lens_upper_bound_np: np.ndarray


@dataclass
class LocalSamplingParams:
    """The one ``SamplingParams`` field the processor reads."""

    extra_args: dict[str, Any] | None = field(default=None)


if plugin.HAVE_VLLM:  # vLLM's own classes
    from vllm.sampling_params import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext, LogitsProcRequestState
else:
    SamplingParams, LogitsContext, LogitsProcRequestState = (
        LocalSamplingParams,
        LocalLogitsContext,
        LocalRequestState,
    )


def _params(account: str | None = None, **extra) -> Any:
    args = {**extra, **({plugin.ACCOUNT_ARG: account} if account is not None else {})}
    return SamplingParams(extra_args=args or None)


def _ctx(slots: list[int], prev: list[int]) -> Any:
    mapping = torch.tensor(slots, dtype=torch.int32)
    unique = np.array(sorted(set(slots), key=slots.index), dtype=np.int32)
    return LogitsContext(
        expanded_idx_mapping=mapping,
        idx_mapping=torch.from_numpy(unique),
        idx_mapping_np=unique,
        expanded_local_pos=torch.zeros(len(slots), dtype=torch.int32),
        input_ids=torch.tensor(prev, dtype=torch.int32),
        pos=torch.arange(len(slots), dtype=torch.int64),
        seq_lens_upper_bound_np=np.ones(len(unique), dtype=np.int32),
    )


@pytest.fixture
def master(monkeypatch) -> MasterSecret:
    monkeypatch.setenv("TRACEMARK_MASTER_KEY", MASTER_HEX)
    return MasterSecret.load(create=False)


@pytest.fixture
def vocab(tiny_model_dir) -> tuple[str, int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tokenizer_fingerprint(tokenizer), len(tokenizer)


@pytest.fixture
def key_file(tmp_path, master, vocab, monkeypatch) -> Path:
    spec = ChannelSpec(provider_delta=2.0, account_delta=1.0, tokenizer=vocab[0])
    path = tmp_path / "channel.keys"
    write_channel_key_file(path, export_channel_keys(master, spec, ["alice", "bob"]))
    monkeypatch.setenv("TRACEMARK_CHANNEL_KEY_FILE", str(path))
    return path


def _processor(tiny_model_dir, max_num_reqs: int = 8, config=None) -> plugin.TracemarkChannelProcessor:
    config = config or SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(tiny_model_dir)))
    state = LogitsProcRequestState(
        device=torch.device("cpu"),
        max_num_reqs=max_num_reqs,
        vocab_size=0,
        all_token_ids=None,
        prompt_len=None,
        prefill_len=None,
        total_len=None,
    )
    return plugin.TracemarkChannelProcessor(config, state)


def _server_keyring(master: MasterSecret, spec: ChannelSpec) -> Keyring:
    """The keyring the tracemark server builds (server/runtime.py): keys straight from the master secret."""
    return Keyring(spec, master.channel_key(None), lambda account: master.channel_key(account))


# --- (a) the shared core is the transformers processor's computation ---------------------------------


def test_shared_core_gives_the_transformers_processors_logits(master):
    spec = ChannelSpec(provider_delta=1.5, account_delta=2.5)
    ring = _server_keyring(master, spec)
    rows = [ring.lists_for("alice"), ring.lists_for(None), None, ring.lists_for("bob")]
    vocab = 211
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, vocab, generator=gen)
    input_ids = torch.randint(0, vocab, (4, 7), generator=gen)
    expected = ChannelLogitsProcessor(rows)(input_ids, scores.clone())
    prev = input_ids[:, -1].tolist()
    assert torch.equal(add_channel_bias(scores.clone(), rows, prev), expected)
    assert torch.equal(add_channel_bias(scores.clone(), rows, prev, inplace=True), expected)
    # and both are the KGW rule written out: + delta on each key's green tokens after the previous token
    for i, lists in enumerate(rows):
        reference = scores[i].clone()
        for green_lists, delta in lists or []:
            green = torch.from_numpy(green_lists.green(prev[i], np.arange(vocab)))
            reference[green] += delta
        assert torch.allclose(expected[i], reference, atol=1e-6)
    assert torch.equal(expected[2], scores[2])  # a row without keys is untouched
    assert batch_bias([None, []], [1, 2], vocab) is None


def test_shared_core_width_zero_and_half_precision(master):
    spec = ChannelSpec(context_width=0)
    ring = _server_keyring(master, spec)
    rows = [ring.lists_for("alice")] * 2
    scores = torch.randn(2, 97, dtype=torch.bfloat16)
    input_ids = torch.tensor([[3, 5], [4, 9]])
    expected = ChannelLogitsProcessor(rows, width=0)(input_ids, scores.clone())
    out = add_channel_bias(scores.clone(), rows, [5, 9], width=0)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    moved = expected != scores
    assert moved.any() and torch.equal(moved[0], moved[1])  # width 0: the previous token is ignored


# --- (b) the vLLM adapter through the calls vLLM makes -----------------------------------------------


def test_adapter_biases_each_slot_with_its_accounts_keys(tiny_model_dir, key_file, master, vocab):
    proc = _processor(tiny_model_dir)
    spec = proc.spec
    assert spec.tokenizer == vocab[0] and (spec.provider_delta, spec.account_delta) == (2.0, 1.0)
    V = vocab[1]
    for slot, params in [(3, _params("alice")), (0, _params("bob")), (5, _params()), (6, _params(""))]:
        proc.validate_params(params)
        assert proc.add_request(slot, params) is True
    ring = _server_keyring(master, spec)
    reference_rows = [
        ring.lists_for("alice"),
        ring.lists_for("bob"),
        ring.lists_for(None),
        ring.lists_for(None),
    ]
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, V, generator=gen)
    prev = [7, 2, 7, 11]
    # rows in vLLM's order of this step (not the slots' order)
    out = proc.apply(logits.clone(), _ctx([3, 0, 5, 6], prev))
    expected = ChannelLogitsProcessor(reference_rows)(torch.tensor(prev)[:, None], logits.clone())
    assert torch.equal(out, expected)
    # alice's and the provider-only row share the previous token: they differ exactly by alice's key
    alice_green = torch.from_numpy(ring.account("alice").row(7, V))
    assert torch.allclose((out[0] - out[2]) - (logits[0] - logits[2]), alice_green.float() * 1.0, atol=1e-5)
    assert not torch.equal(out[0] - logits[0], out[1] - logits[1])

    # speculative decoding: one request owns several rows, each after its own previous token
    out = proc.apply(logits[:3].clone(), _ctx([3, 3, 0], [7, 9, 2]))
    expected = ChannelLogitsProcessor(reference_rows[:1] * 2 + reference_rows[1:2])(
        torch.tensor([[7], [9], [2]]), logits[:3].clone()
    )
    assert torch.equal(out, expected)

    # a slot is recycled: the new occupant's keys replace the old ones
    proc.add_request(3, _params("bob"))
    out = proc.apply(logits[:1].clone(), _ctx([3], [2]))
    assert torch.equal(out, ChannelLogitsProcessor([ring.lists_for("bob")])(torch.tensor([[2]]), logits[:1]))
    assert proc.steps == 3 and proc.seconds > 0

    with pytest.raises(RuntimeError, match="slot 7"):  # no request ever took slot 7
        proc.apply(logits[:1].clone(), _ctx([7], [1]))

    # the device path (green lists computed by torch where the logits live, the default on a GPU) gives
    # the same logits; here on the CPU
    proc.on_device = True
    proc.add_request(3, _params("alice"))
    out = proc.apply(logits.clone(), _ctx([3, 0, 5, 6], prev))
    assert torch.equal(
        out, ChannelLogitsProcessor(reference_rows)(torch.tensor(prev)[:, None], logits.clone())
    )


def test_adapter_validates_the_account_at_admission(tiny_model_dir, key_file, master):
    proc = _processor(tiny_model_dir)
    with pytest.raises(ValueError, match="no channel key for account 'mallory'"):
        proc.validate_params(_params("mallory"))
    with pytest.raises(ValueError, match="must be a string"):
        proc.validate_params(_params(**{plugin.ACCOUNT_ARG: 42}))
    # an engine never crashes on a request the frontend would have refused: provider key only
    assert proc.add_request(1, _params("mallory"))
    out = proc.apply(torch.zeros(1, 50), _ctx([1], [4]))
    ring = _server_keyring(master, proc.spec)
    assert torch.equal(
        out, ChannelLogitsProcessor([ring.lists_for(None)])(torch.tensor([[4]]), torch.zeros(1, 50))
    )
    # a re-export with the new account is picked up without restarting the engine
    write_channel_key_file(key_file, export_channel_keys(master, proc.spec, ["alice", "bob", "mallory"]))
    proc.validate_params(_params("mallory"))
    proc.add_request(1, _params("mallory"))
    out = proc.apply(torch.zeros(1, 50), _ctx([1], [4]))
    expected = ChannelLogitsProcessor([ring.lists_for("mallory")])(torch.tensor([[4]]), torch.zeros(1, 50))
    assert torch.equal(out, expected)


def test_adapter_refuses_to_be_loaded_twice_for_one_engine(tiny_model_dir, key_file):
    config = SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(tiny_model_dir)))
    first = _processor(tiny_model_dir, config=config)
    with pytest.raises(ValueError, match="loaded twice"):
        _processor(tiny_model_dir, config=config)
    assert _processor(tiny_model_dir) is not first  # another engine's config: fine


def test_adapter_refuses_another_vocabulary_and_missing_keys(tmp_path, tiny_model_dir, master, monkeypatch):
    monkeypatch.delenv("TRACEMARK_CHANNEL_KEY_FILE", raising=False)
    with pytest.raises(ChannelKeyFileError, match="TRACEMARK_CHANNEL_KEY_FILE"):
        _processor(tiny_model_dir)
    path = tmp_path / "other.keys"
    write_channel_key_file(path, export_channel_keys(master, ChannelSpec(tokenizer="0123456789abcdef"), []))
    monkeypatch.setenv("TRACEMARK_CHANNEL_KEY_FILE", str(path))
    with pytest.raises(ChannelKeyFileError, match="is not the channel's"):
        _processor(tiny_model_dir)


# --- the key file: same keys as the master secret, private, no secret shown --------------------------


def test_key_file_holds_the_master_secrets_channel_keys(tmp_path, master):
    path = tmp_path / "keys" / "channel.keys"
    write_channel_key_file(path, export_channel_keys(master, ChannelSpec(), ["alice", " bob ", "alice"]))
    assert (path.stat().st_mode & 0o777) == 0o600
    keys = ChannelKeyFile(path)
    assert keys.accounts == ["alice", "bob"] and keys.version == 1
    assert keys.provider_key().secret == master.channel_key(None).secret
    assert keys.account_key("bob").secret == master.channel_key("bob").secret
    assert keys.account_key("bob").label == master.channel_key("bob").label
    assert keys.account_key("bob").secret != master.account_key("bob")  # not the signature-pair key
    with pytest.raises(UnknownChannelAccount):
        keys.account_key("carol")
    assert MASTER_HEX not in path.read_text() and keys.provider_key().secret.hex() not in repr(keys)
    path.chmod(0o644)
    with pytest.raises(ChannelKeyFileError, match="readable or writable by others"):
        ChannelKeyFile(path)
    path.chmod(0o600)
    path.write_text('{"format": "tracemark-channel-keys/1", "version": 1, "provider": "zz", "accounts": {}}')
    with pytest.raises(ChannelKeyFileError, match="provider key is not a 64-hex key"):
        ChannelKeyFile(path)


def test_export_channel_command(tmp_path, tiny_model_dir, monkeypatch, vocab):
    from tracemark.cli.channel_keys import export_channel_command

    monkeypatch.delenv("TRACEMARK_MASTER_KEY", raising=False)
    master_file = tmp_path / "master.key"
    master = MasterSecret.create(path=master_file)
    (tmp_path / "accounts.txt").write_text("# customers\ncarol\n\ndave\n")
    app = typer.Typer()
    app.command()(export_channel_command)
    out = tmp_path / "channel.keys"
    args = ["--out", str(out), "--key-file", str(master_file), "--tokenizer", str(tiny_model_dir)]
    result = CliRunner().invoke(
        app, [*args, "-a", "alice", "--accounts-file", str(tmp_path / "accounts.txt")]
    )
    assert result.exit_code == 0, result.output
    assert '"accounts": 3' in result.output and master.channel_key("alice").secret.hex() not in result.output
    keys = ChannelKeyFile(out)
    assert keys.accounts == ["alice", "carol", "dave"]
    assert keys.spec.tokenizer == vocab[0] and keys.spec.gamma == 0.25
    assert keys.account_key("dave").secret == master.channel_key("dave").secret
    result = CliRunner().invoke(app, ["--out", str(out), "--key-file", str(master_file)])
    assert result.exit_code == 2 and "--tokenizer is required" in result.output


# --- (c) the distribution and its entry point ----------------------------------------------------------


def test_distribution_declares_the_vllm_entry_point():
    meta = tomllib.loads((DIST / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "tracemark-vllm"
    assert any(d.startswith("tracemark") for d in meta["project"]["dependencies"])
    assert not any(d.startswith(("vllm", "torch")) for d in meta["project"]["dependencies"])
    group = meta["project"]["entry-points"]["vllm.logits_processors"]
    assert group == {"tracemark_channel": "tracemark_vllm.processor:TracemarkChannelProcessor"}


def test_installed_entry_point_loads_the_processor():
    try:
        importlib.metadata.distribution("tracemark-vllm")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tracemark-vllm is not installed (pip install -e integrations/vllm --no-deps)")
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group="vllm.logits_processors")}
    assert found["tracemark_channel"].load() is plugin.TracemarkChannelProcessor


@pytest.mark.skipif(not plugin.HAVE_VLLM, reason="vllm is not importable here")
def test_vllms_own_loader_builds_the_processor(tiny_model_dir, key_file):
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor, loader

    fqcn = "tracemark_vllm.processor:TracemarkChannelProcessor"
    classes = loader._load_v2_logitsprocs_by_fqcns([fqcn])
    assert classes == [plugin.TracemarkChannelProcessor] and issubclass(classes[0], LogitsProcessor)
    req_states = SimpleNamespace(
        device=torch.device("cpu"), max_num_reqs=4, vocab_size=0,
        all_token_ids=None, prompt_len=None, prefill_len=None, total_len=None,
    )  # fmt: skip

    def config():
        return SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(tiny_model_dir)))

    try:
        importlib.metadata.distribution("tracemark-vllm")
        installed = True
    except importlib.metadata.PackageNotFoundError:
        installed = False
    if installed:  # the entry point alone loads it; naming it again would bias twice and is refused
        assert plugin.TracemarkChannelProcessor in loader._load_v2_logitsprocs_plugins()
        built = loader.build_custom_logits_processors(config(), req_states, False, ())
        with pytest.raises(ValueError, match="loaded twice"):
            loader.build_custom_logits_processors(config(), req_states, False, [fqcn])
    else:
        built = loader.build_custom_logits_processors(config(), req_states, False, [fqcn])
    assert [type(p) for p in built] == [plugin.TracemarkChannelProcessor]
    validate = loader.build_custom_logits_processors_params_validator(() if installed else (fqcn,))
    validate(_params("alice"))
    with pytest.raises(VLLMValidationError, match="no channel key for account 'mallory'"):
        validate(_params("mallory"))  # vLLM answers the request with a validation error (HTTP 400)


# --- a decode loop in vLLM's order against transformers' generate ------------------------------------


def test_decode_loop_through_the_adapter_matches_transformers_generate(tiny_model_dir, key_file, master):
    """Greedy decoding of a tiny model where each step's logits go through ``apply`` (rows in a shuffled
    slot order, previous token from ``input_ids``) picks exactly the tokens ``generate`` picks with the
    server's ChannelLogitsProcessor (keys from the master secret), and differs from unbiased decoding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = ["The cat sat", "Dogs bark a", "Two and two"]
    accounts = ["alice", None, "bob"]
    ids = torch.stack([tokenizer(p, return_tensors="pt").input_ids[0] for p in prompts])
    new_tokens = 16
    ring = _server_keyring(master, ChannelKeyFile(key_file).spec)
    rows = [ring.lists_for(a) for a in accounts]
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        marked = model.generate(
            ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
            logits_processor=[ChannelLogitsProcessor(rows)],
        )  # fmt: skip

    proc = _processor(tiny_model_dir)
    slots = [6, 2, 4]  # persistent slots, and the batch order differs every step
    for slot, account in zip(slots, accounts):
        proc.add_request(slot, _params(account))
    seqs = [list(row) for row in ids.tolist()]
    with torch.no_grad():
        for step in range(new_tokens):
            order = [(step + i) % 3 for i in range(3)]
            logits = model(torch.tensor([seqs[i] for i in order])).logits[:, -1, :].float()
            ctx = _ctx([slots[i] for i in order], [seqs[i][-1] for i in order])
            picked = proc.apply(logits, ctx).argmax(dim=-1).tolist()
            for i, token in zip(order, picked):
                seqs[i].append(token)
    assert seqs == marked.tolist()
    assert seqs != plain.tolist()
