"""Fixtures for plugin tests: fake plugin distributions on disk, a fake signature issuer, scripted LLMs,
GSM8K reference solutions (when the shared data is present) and a procedural trace set."""

from __future__ import annotations

import hashlib
import importlib
import json
import random
import sys
import textwrap
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from tracemark.plugins.loader import entry_points_from_paths

GSM8K_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "train.jsonl"


# -- fake distributions -------------------------------------------------------------------------------
class FakeSite:
    """A folder on ``sys.path`` holding ``*.dist-info`` distributions and their modules."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex[:8]
        self.modules: list[str] = []
        monkeypatch.syspath_prepend(str(root))

    def module(self, stem: str, source: str) -> str:
        """Write a module with a unique name; returns that name."""
        name = f"tm_fake_{stem}_{self.tag}"
        (self.root / f"{name}.py").write_text(textwrap.dedent(source))
        self.modules.append(name)
        importlib.invalidate_caches()
        return name

    def dist(self, name: str, version: str, entry_points: dict[str, str]) -> Path:
        """Write ``<name>-<version>.dist-info`` with METADATA and a tracemark.rewriters entry_points.txt."""
        info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[tracemark.rewriters]\n{lines}")
        importlib.invalidate_caches()
        return info

    def entry_points(self):
        return entry_points_from_paths([self.root])

    def cleanup(self) -> None:
        for name in self.modules:
            sys.modules.pop(name, None)


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    for var in ("TRACEMARK_PLUGINS", "TRACEMARK_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    site = FakeSite(tmp_path / "site", monkeypatch)
    yield site
    site.cleanup()


def rewriter_source(class_name: str, name: str, body: str = "return trace", extra: str = "") -> str:
    """Source of a plugin module defining one Rewriter subclass."""
    return f"""
from tracemark.plugins.api import Rewriter

class {class_name}(Rewriter):
    name = {name!r}
    description = "fake plugin {name}"
{textwrap.indent(textwrap.dedent(extra), "    ")}
    def rewrite(self, trace, context):
        {body}
"""


# -- a fake signature issuer (a tracemark.plugins.api.SignatureService, like forensics' SignatureIssuer) -
@dataclass(frozen=True)
class FakePair:
    account: str
    key_version: int
    index: int
    trigger: str
    target: str

    @property
    def pair_id(self) -> str:
        return (
            "fp-"
            + hashlib.sha256(f"{self.account}|{self.key_version}|{self.index}".encode()).hexdigest()[:12]
        )

    @property
    def text(self) -> str:
        return f"{self.trigger} {self.target}"


class FakeIssuer:
    """Deterministic per-account pairs; records issues in memory (thread-safe)."""

    def __init__(self, pairs_per_account: int = 2, *, counts: bool = True) -> None:
        self.m = pairs_per_account
        self.issued: list[dict] = []
        self._lock = threading.Lock()
        if not counts:
            self.issued_counts = None  # type: ignore[assignment]

    def pairs_for(self, account: str) -> list[FakePair]:
        rng = random.Random(f"fake-issuer:{account}")
        return [
            FakePair(
                account,
                1,
                j,
                f"{rng.choice('abcdfgh')}{rng.randint(10, 999)} =",
                f"{rng.randrange(10_000):04d}",
            )
            for j in range(self.m)
        ]

    def record_issue(self, *, account, trace_id, pair, rewriter) -> None:
        with self._lock:
            self.issued.append(
                {"account": account, "trace_id": trace_id, "pair_id": pair.pair_id, "rewriter": rewriter}
            )

    def issued_counts(self, account: str) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for item in self.issued:
                if item["account"] == account:
                    counts[item["pair_id"]] = counts.get(item["pair_id"], 0) + 1
            return counts


@pytest.fixture
def fake_issuer() -> FakeIssuer:
    return FakeIssuer()


# -- scripted LLMs -------------------------------------------------------------------------------------
class ScriptedLLM:
    """An LLMBackend whose replies come from ``respond(messages, call_index)``; records every call."""

    model_id = "scripted"

    def __init__(self, respond) -> None:
        self.respond = respond
        self.calls: list[dict] = []
        self._lock = threading.Lock()

    def chat(self, messages, *, max_new_tokens=512, temperature=0.0, seed=None) -> str:
        with self._lock:
            index = len(self.calls)
            self.calls.append(
                {
                    "messages": messages,
                    "max_new_tokens": max_new_tokens,
                    "temperature": temperature,
                    "seed": seed,
                }
            )
        reply = self.respond(messages, index)
        if isinstance(reply, BaseException):
            raise reply
        return reply


def solution_of(messages) -> str:
    """The trace a rewriter put in its user message (after 'Solution:')."""
    user = messages[-1]["content"]
    body = user.split("Solution:\n", 1)[1]
    return body.split("\n\nFinish with this exact final line:", 1)[0]


# -- data ----------------------------------------------------------------------------------------------
def gsm8k_rows(n: int) -> list[dict]:
    """The first ``n`` GSM8K train rows (question/answer), or [] when the shared file is absent."""
    if not GSM8K_TRAIN.is_file():
        return []
    rows = []
    with GSM8K_TRAIN.open() as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def procedural_traces(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(problem, trace, answer) in three styles: GSM8K annotations + ####, narrative + \\boxed{}, last number."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        a, b, c = rng.randint(2, 99), rng.randint(2, 30), rng.randint(1, 50)
        prod, total = a * b, a * b + c
        share = rng.choice([2, 4, 5])
        per = total / share
        per_text = f"{per:g}"
        problem = (
            f"A shop sells {b} boxes with {a} pens each and gets {c} more pens. The pens are shared "
            f"equally among {share} classes. How many pens does each class get?"
        )
        style = i % 3
        if style == 0:
            trace = (
                f"The boxes hold {a} * {b} = <<{a}*{b}={prod}>>{prod} pens.\n"
                f"So there are {prod} + {c} = <<{prod}+{c}={total}>>{total} pens in total.\n"
                f"Each class gets {total} / {share} = <<{total}/{share}={per_text}>>{per_text} pens.\n"
                f"#### {per_text}"
            )
        elif style == 1:
            trace = (
                f"Okay, let's think step by step. First, we know that each box has {a} pens and there are "
                f"{b} boxes. So the boxes hold {a} \\times {b} = {prod} pens. Wait, we also get {c} more, "
                f"so {prod} + {c} = {total}. Hmm, let me double-check: yes. Now we share them: "
                f"{total} / {share} = {per_text}. So the answer is \\boxed{{{per_text}}}."
            )
        else:
            trace = (
                f"Let me compute the pens in the boxes: {a} x {b} = {prod}.\n"
                f"Adding the extra pens gives {prod} + {c} = {total}.\n"
                f"Shared among {share} classes, each class gets {total} / {share} = {per_text}"
            )
        items.append((problem, trace, per_text))
    return items


# -- helpers exposed as fixtures (test modules cannot import conftest under --import-mode=importlib) ------
class _Helpers:
    FakeIssuer = FakeIssuer
    FakePair = FakePair
    ScriptedLLM = ScriptedLLM
    rewriter_source = staticmethod(rewriter_source)
    solution_of = staticmethod(solution_of)
    gsm8k_rows = staticmethod(gsm8k_rows)
    procedural_traces = staticmethod(procedural_traces)


@pytest.fixture
def h() -> type[_Helpers]:
    return _Helpers
