"""Investigations with the distributional channel: commitments, pre-registration, the provider headline,
per-account attribution (pair p combined with channel p), clean suspects, and re-scoring from a bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tracemark.forensics.adapters import Sample
from tracemark.forensics.adapters.local import LocalModelSuspect
from tracemark.forensics.investigate import InvestigationError, InvestigationParams, run_investigation
from tracemark.forensics.investigate.channel import combine_evidence
from tracemark.forensics.issuer import SchemeMismatch, SignatureIssuer
from tracemark.forensics.scheme import SignatureScheme
from tracemark.forensics.tlog import (
    PROVIDER_KEY_KIND,
    find_entries,
    open_channel_commitment,
    open_key_commitment,
    provider_entries,
)
from tracemark.foundation.channel import ChannelSpec, GreenLists, Keyring, tokenizer_fingerprint
from tracemark.foundation.models.channel_processor import ChannelLogitsProcessor
from tracemark.foundation.models.tiny import build_char_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHORT = ("\nLet {trigger}",)
PROMPTS = tuple(f"Question {i}: what is {i} times {i + 2}?" for i in range(10))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tracemark.foundation.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden_size=32, layers=1, heads=2, seed=5)


@pytest.fixture
def spec():
    return ChannelSpec(tokenizer=tokenizer_fingerprint(build_char_tokenizer()))


@pytest.fixture
def world(master, engine, spec):
    scheme = SignatureScheme(digits=4, contexts=SHORT, channel=spec)
    issuer = SignatureIssuer(master=master, engine=engine, scheme=scheme)
    for name in ("alice", "bob", "carol"):
        issuer.ensure_channel_account(name)
    return {"master": master, "engine": engine, "issuer": issuer}


class _Biased(torch.nn.Module):
    """The suspect's network as a student that learnt the channel converges to: base logits plus each
    key's delta on its green list (used for the white-box argmax)."""

    def __init__(self, base, rows, width):
        super().__init__()
        self.base, self.config = base, base.config
        vocab = base.config.vocab_size
        table = np.zeros((vocab, vocab), dtype=np.float32)  # [previous token, next token]
        for prev in range(vocab):
            for lists, delta in rows:
                table[prev] += delta * lists.row(prev if width else -1, vocab)
        self.table = torch.from_numpy(table)

    def forward(self, input_ids, **kw):
        out = self.base(input_ids=input_ids)
        out.logits = out.logits + self.table[input_ids]
        return out


class Distilled(LocalModelSuspect):
    """A tiny model whose outputs carry ``account``'s channel (and the provider's): samples are decoded
    with the channel's logits processor, the white-box network is biased the same way."""

    def __init__(self, path, master, spec, account, *, white_box=True):
        super().__init__(f"hf:{path}", path, device="cpu")
        keyring = Keyring(spec, master.channel_key(None), lambda a: master.channel_key(a))
        self.rows = keyring.lists_for(account)
        self.white_box = white_box
        self.width = spec.context_width

    @property
    def model(self):
        return _Biased(self._load()[0], self.rows, self.width)

    def _sample(self, prompt, n, max_new_tokens, temperature, seed):
        base, tok = self._load()
        ids = torch.tensor([self.encode(prompt)] * n)
        torch.manual_seed(seed or 0)
        out = base.generate(
            ids,
            do_sample=True,
            top_k=0,
            temperature=max(temperature, 1e-3),
            max_new_tokens=max_new_tokens,
            logits_processor=[ChannelLogitsProcessor([self.rows] * n, width=self.width)],
            pad_token_id=tok.pad_token_id,
            attention_mask=torch.ones_like(ids),
        )
        return [Sample(text=tok.decode(r[ids.shape[1] :], skip_special_tokens=True)) for r in out], {}


def _params(**kw):
    return InvestigationParams(channel_prompts=PROMPTS, channel_max_new_tokens=40, channel_decoys=200, **kw)


def test_commitments_are_logged_and_open(world, master, engine, spec):
    (entry,) = provider_entries(engine).values()
    assert entry.body["channel"] == spec.as_dict()
    assert open_channel_commitment(entry.body, master.channel_key(None).secret, scope="provider")
    assert not open_channel_commitment(entry.body, master.channel_key("alice").secret, scope="provider")
    alice = next(e for e in find_entries(engine, kind="account-key") if e.body["account"] == "alice")
    assert open_key_commitment(alice.body, master.account_key("alice", version=1))
    assert open_channel_commitment(alice.body, master.channel_key("alice").secret, scope="account")
    assert not open_channel_commitment(alice.body, master.channel_key("bob").secret, scope="account")
    assert "secret" not in repr(entry.body) and master.channel_key(None).secret.hex() not in str(entry.body)
    other = SignatureScheme(
        digits=4, contexts=SHORT, channel=ChannelSpec(gamma=0.5, tokenizer=spec.tokenizer)
    )
    with pytest.raises(SchemeMismatch):
        SignatureIssuer(master=master, engine=engine, scheme=other)
    assert len(find_entries(engine, kind=PROVIDER_KEY_KIND)) == 1


def test_whitebox_distilled_suspect_is_detected_and_attributed(world, tiny, master, engine, spec, tmp_path):
    suspect = Distilled(tiny, master, spec, "alice")
    out = run_investigation(suspect=suspect, engine=engine, master=master, params=_params())
    reg = out.report["registration"]
    body = next(
        e for e in find_entries(engine, kind="registration") if e.entry_hash == reg["entry_hash"]
    ).body
    channel = body["channel"]
    assert channel["mode"] == "white-box" and channel["prompts"] == list(PROMPTS)
    assert [k["account"] for k in channel["account_keys"]] == ["alice", "bob", "carol"]
    assert channel["provider_keys"][0]["key_entry"] == provider_entries(engine)[1].seq
    assert out.distilled_from_us is True and out.provider["log10_p"] <= -6
    assert out.verdict == "detected" and out.attributed_account == "alice"
    rows = {a.account: a for a in out.accounts}
    assert rows["alice"].evidence == "channel" and rows["alice"].p_value <= 1e-6
    assert not rows["bob"].rejected and not rows["carol"].rejected
    stats_channel = out.report["statistics"]["channel"]
    assert stats_channel["decoy_check"]["passed"] and stats_channel["usable"]
    test = stats_channel["accounts"]["alice"]["tests"][0]
    assert test["n"] >= 50 and test["green"] > test["n"] * spec.gamma and test["key"] == "account:alice@v1"
    assert out.report["decision"]["provider"]["verdict"] == "distilled_from_us"
    from tracemark.forensics.reports import export_html
    from tracemark.forensics.reports.report_sections import build_sections

    sections = {s.key: s for s in build_sections(out.report)}
    assert "channel" in sections and "DISTILLED FROM US" in sections["channel"].blocks[0].text
    html = export_html(out.envelope, tmp_path / "r.html").read_text()
    assert "Distributional channel" in html and "account:alice@v1" in html
    assert master.channel_key("alice").secret.hex() not in html


def test_blackbox_needs_the_channel_tokenizer_and_detects(world, tiny, master, engine, spec):
    suspect = Distilled(tiny, master, spec, "bob", white_box=False)
    with pytest.raises(InvestigationError, match="channel's tokenizer"):
        run_investigation(suspect=suspect, engine=engine, master=master, params=_params(query_budget=20))
    with pytest.raises(InvestigationError, match="fingerprint"):
        run_investigation(
            suspect=suspect,
            engine=engine,
            master=master,
            params=_params(query_budget=20),
            channel_tokenizer=_OtherTokenizer(),
        )
    out = run_investigation(
        suspect=suspect,
        engine=engine,
        master=master,
        params=_params(query_budget=6, channel_samples=2),
        channel_tokenizer=build_char_tokenizer(),
    )
    assert out.report["statistics"]["channel"]["mode"] == "black-box"
    assert out.report["statistics"]["channel"]["evidence"]["completions_sampled"] == 2 * len(PROMPTS)
    assert out.distilled_from_us is True and out.attributed_account == "bob"


class _OtherTokenizer:
    def get_vocab(self):
        return {"a": 0, "b": 1}


def test_clean_suspect_is_not_flagged(world, tiny, master, engine):
    out = run_investigation(
        suspect=LocalModelSuspect(f"hf:{tiny}", tiny, device="cpu"),
        engine=engine,
        master=master,
        params=_params(),
    )
    assert out.distilled_from_us is False and out.verdict == "not_detected"
    assert out.report["statistics"]["channel"]["decoy_check"]["passed"]


def test_pair_only_family_runs_no_channel(master, engine, tiny):
    issuer = SignatureIssuer(master=master, engine=engine, scheme=SignatureScheme(digits=4, contexts=SHORT))
    issuer.ensure_account("dave")
    for p in issuer.pairs_for("dave"):
        issuer.record_issue(account="dave", trace_id=f"t{p.index}", pair=p, rewriter="watermark")
    out = run_investigation(
        suspect=LocalModelSuspect(f"hf:{tiny}", tiny, device="cpu"), engine=engine, master=master
    )
    assert out.provider is None and "channel" not in out.report["statistics"]
    assert out.accounts[0].channel is None and "evidence" not in out.accounts[0].as_dict()


def test_combine_evidence():
    assert combine_evidence(None, -3.0) == (-3.0, "channel")
    assert combine_evidence(-2.0, None) == (-2.0, "pair")
    log10, method = combine_evidence(-2.0, -3.0)
    assert method == "fisher(pair, channel)" and -5.0 < log10 < -3.0
    assert combine_evidence(-400.0, -500.0)[0] < -850  # below the float range, exactly
    assert combine_evidence(0.0, 0.0)[0] == 0.0


def test_green_lists_unused_here_are_independent(spec, master):
    """The account channel key differs from the provider key and from the pair key."""
    a, p = master.channel_key("alice"), master.channel_key(None)
    assert a.secret != p.secret and a.secret != master.account_key("alice", version=1)
    ga, gp = GreenLists(a, spec.gamma), GreenLists(p, spec.gamma)
    assert (ga.row(5, 4000) != gp.row(5, 4000)).mean() > 0.2


def test_disclosure_and_rescore_reproduce_the_channel(world, tiny, master, engine, spec):
    from tracemark.forensics.rederive import build_disclosure, rescore

    suspect = Distilled(tiny, master, spec, "alice")
    out = run_investigation(suspect=suspect, engine=engine, master=master, params=_params())
    pem = master.signing_public_key_pem()
    bundle = build_disclosure(engine, master, report_id=out.report_id, account="alice")
    text = str(bundle)
    assert master.channel_key("alice").secret.hex() in text
    assert master.channel_key(None).secret.hex() not in text and bundle["provider_keys"] == []
    assert master.channel_key("bob").secret.hex() not in text
    result = rescore(bundle, Distilled(tiny, master, spec, "alice"), public_key=pem)
    assert result.matches, result.problems
    assert result.channel and result.channel[0]["green_rescored"] == result.channel[0]["green_report"]
    assert result.p_value_rescored == rows_p(out, "alice")

    full = build_disclosure(engine, master, report_id=out.report_id, account="bob", include_provider=True)
    assert full["provider_keys"][0]["provider_key"] == master.channel_key(None).secret.hex()
    again = rescore(full, Distilled(tiny, master, spec, "alice"), public_key=pem)
    assert again.matches, again.problems
    assert {c["kind"] for c in again.channel} == {"account", "provider"}

    forged = {
        **bundle,
        "channel_keys": [{"key_version": 1, "channel_key": master.channel_key("bob").secret.hex()}],
    }
    bad = rescore(forged, Distilled(tiny, master, spec, "alice"), public_key=pem)
    assert not bad.matches and any("does not open" in p for p in bad.problems)


def rows_p(out, account):
    return next(a.p_value for a in out.accounts if a.account == account)


def test_attach_channel_logs_the_provider_key_or_refuses_a_logged_version(master, engine, spec):
    issuer = SignatureIssuer(master=master, engine=engine, scheme=SignatureScheme(digits=4, contexts=SHORT))
    assert provider_entries(engine) == {}
    issuer.attach_channel(spec)
    assert issuer.scheme.channel == spec and 1 in provider_entries(engine)
    issuer.ensure_channel_account("erin")
    erin = next(e for e in find_entries(engine, kind="account-key") if e.body["account"] == "erin")
    assert open_channel_commitment(erin.body, master.channel_key("erin").secret, scope="account")
    with pytest.raises(SchemeMismatch):  # version 1 already logged under this channel: no change
        issuer.attach_channel(None)
    assert issuer.scheme.channel == spec


def test_attach_channel_refuses_when_accounts_were_logged_without_it(master, engine, spec):
    issuer = SignatureIssuer(master=master, engine=engine, scheme=SignatureScheme(digits=4, contexts=SHORT))
    issuer.ensure_channel_account("frank")  # committed under the pair-only scheme
    with pytest.raises(SchemeMismatch, match="rotate"):
        issuer.attach_channel(spec)
    assert issuer.scheme.channel is None and provider_entries(engine) == {}
