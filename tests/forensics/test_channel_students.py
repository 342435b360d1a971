"""Students actually trained on text: a student of channel-decoded text is flagged under the key it
learnt, a student of the same process without the channel is not (nor under any decoy key)."""

from __future__ import annotations

import hashlib
import string

import numpy as np
import pytest
import torch
from tracemark.forensics.adapters import parse_suspect
from tracemark.forensics.channel import collect_evidence, decoy_check, score_keys
from tracemark.foundation.channel import ChannelKey, ChannelSpec, GreenLists, tokenizer_fingerprint

ALPHABET = string.ascii_lowercase + " "
PROMPTS = [f"{w} " for w in ("the", "a", "one", "so", "we", "it", "in", "on", "at", "by", "up", "my")]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _key(name: str, scope: str = "provider") -> ChannelKey:
    return ChannelKey(secret=hashlib.sha256(name.encode()).digest(), scope=scope)


def _teacher_texts(
    tok, spec: ChannelSpec, key: ChannelKey | None, *, n: int, length: int, seed: int
) -> list[str]:
    """A character-bigram "teacher" over a small alphabet: uniform next character, plus ``delta`` on the
    key's green list when ``key`` is given (what a decoder with the channel's logits processor emits)."""
    rng = np.random.default_rng(seed)
    ids = np.array([tok.convert_tokens_to_ids(c) for c in ALPHABET])
    lists = GreenLists(key, spec.gamma) if key is not None else None
    texts = []
    for _ in range(n):
        prev = int(rng.choice(ids))
        out = [prev]
        for _ in range(length - 1):
            logits = np.zeros(len(ids))
            if lists is not None:
                logits += spec.provider_delta * lists.green(prev, ids.astype(np.uint64))
            p = np.exp(logits - logits.max())
            prev = int(rng.choice(ids, p=p / p.sum()))
            out.append(prev)
        texts.append(tok.decode(out))
    return texts


def _train(base, texts, out, *, steps: int, seed: int = 0):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rows = torch.tensor([tok(t, add_special_tokens=False)["input_ids"] for t in texts])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = rows[torch.randint(0, len(rows), (32,), generator=g)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, float(loss.detach())


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    from tracemark.foundation.models.tiny import build_tiny_model
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("students")
    base = build_tiny_model(root / "base", hidden_size=48, layers=1, heads=2, seed=1)
    tok = AutoTokenizer.from_pretrained(base)
    spec = ChannelSpec(tokenizer=tokenizer_fingerprint(tok), provider_delta=2.0)
    key = _key("provider-of-record")
    marked, _ = _train(
        base, _teacher_texts(tok, spec, key, n=300, length=40, seed=1), root / "marked", steps=120
    )
    clean, _ = _train(
        base, _teacher_texts(tok, spec, None, n=300, length=40, seed=2), root / "clean", steps=120
    )
    return {"spec": spec, "key": key, "marked": marked, "clean": clean}


def _evidence(path, spec, mode):
    suspect = parse_suspect(f"hf:{path}")
    suspect.device = "cpu"
    return collect_evidence(suspect, PROMPTS, spec=spec, mode=mode, max_new_tokens=40, beacon="students")


@pytest.mark.slow  # two tiny students trained for 120 steps each (~15 s of CPU)
@pytest.mark.parametrize("mode", ["black-box", "white-box"])
def test_student_of_channel_text_is_flagged_and_clean_student_is_not(students, mode):
    spec, key = students["spec"], students["key"]
    marked = _evidence(students["marked"], spec, mode)
    clean = _evidence(students["clean"], spec, mode)
    (hit,) = score_keys(marked, [key], spec=spec)
    (miss,) = score_keys(clean, [key], spec=spec)
    assert hit.p_value <= 1e-6, hit
    assert miss.p_value > 1e-3, miss
    (other,) = score_keys(marked, [_key("someone-else")], spec=spec)
    assert other.p_value > 1e-3, other
    print(mode, "marked", hit.green, "/", hit.n, hit.p_value, "clean", miss.green, "/", miss.n, miss.p_value)
    assert decoy_check(clean.tuples, spec=spec, seed=mode, k=200, levels=(0.1,)).passed
