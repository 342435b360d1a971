"""Every per-trace parser that sees caller input runs in linear time (issue 11): a 64,000-character
adversarial trace is parsed well under the bound, and the linear rewrites agree with the old (quadratic)
definitions on random small inputs."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tracemark.plugins import answers, protected
from tracemark.plugins.builtin import llm_base, restructure, watermark

N = 64_000
# CI-robust bound (shared 2-core runners); measured on an idle core: see the README's Security section.
BOUND_S = 0.5


def _fill(unit: str) -> str:
    return (unit * (N // len(unit) + 1))[:N]


ADVERSARIAL = {
    "boxed_open": _fill("\\boxed{"),
    "boxed_nested": "\\boxed{" * 4000 + "1" + "}" * 4000,
    "boxed_space": _fill("\\boxed" + " " * 50),
    "braces": _fill("{"),
    "close_braces": _fill("}"),
    "digits": _fill("1234567890"),
    "digit_commas": _fill("1,"),
    "hashes": _fill("#"),
    "hash_lines": _fill("#### \n\n  "),
    "lt": _fill("<"),
    "annotation_open": _fill("<<1+"),
    "unicode_digits": _fill("١٢٣٤٥٦٧٨٩"),
    "one_line": _fill("a"),
    "newlines": _fill("\n"),
    "tiny_lines": _fill("x\n"),
    "spaces": _fill(" "),
    "digit_spaces": _fill("1" + " " * 100),
    "text_open": "\\boxed{" + _fill("\\text{")[:-10] + "}",
    "equations": _fill("1 = "),
    "operators": _fill("1 x "),
    "fence": "```\n" + _fill("\n")[:-8] + "```",
    "header_spaces": "#" + _fill(" ") + "y\n1",
    "sentences": _fill("So. "),
    "commas": _fill(", "),
    "minus": _fill("-1"),
    "latex": _fill("\\times"),
    "mixed": _fill("Natalia sold 48/2 = <<48/2=24>>24 clips. \\boxed{1{2} #### 3\n"),
}

PARSERS = {
    "extract_final_answer": answers.extract_final_answer,
    "normalize_answer": answers.normalize_answer,
    "protected_spans": protected.protected_spans,
    "protected_mask": lambda t: protected.protected_mask(t, [(i, i + 4) for i in range(0, len(t), 4)]),
    "strip_preamble": llm_base.strip_preamble,
    "final_line_of": llm_base.final_line_of,
    "weave_template": lambda t: watermark.weave_template(t, "x137 = 4821"),
    "llm_weave_ok": lambda t: watermark.llm_weave_ok(t, "x137 = 4821\n" + t, "x137 = 4821"),
}
# restructure is a whole rewriter (tokenizer, equation chains, gloss compression): linear, but heavier
REWRITERS = {"restructure": restructure.restructure}


def _worst(fn) -> tuple[float, str]:
    """The slowest adversarial trace for ``fn``: (best of 3 runs in seconds, its name)."""
    worst, worst_name = 0.0, ""
    for name, text in ADVERSARIAL.items():
        runs = []
        for _ in range(3):  # best of 3: other processes on a shared runner only ever add time
            started = time.perf_counter()
            fn(text)
            runs.append(time.perf_counter() - started)
        if min(runs) > worst:
            worst, worst_name = min(runs), name
    return worst, worst_name


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_adversarial_64k_traces_parse_in_linear_time(parser):
    worst, worst_name = _worst(PARSERS[parser])
    print(f"\n{parser}: worst {worst * 1000:.1f} ms ({worst_name})")
    assert worst < BOUND_S, f"{parser} took {worst:.2f} s on {worst_name}"


@pytest.mark.parametrize("rewriter", sorted(REWRITERS))
def test_adversarial_64k_traces_rewrite_in_linear_time(rewriter):
    worst, worst_name = _worst(REWRITERS[rewriter])
    print(f"\n{rewriter}: worst {worst * 1000:.1f} ms ({worst_name})")
    assert worst < 4 * BOUND_S, f"{rewriter} took {worst:.2f} s on {worst_name}"


# -- the old definitions (quadratic on adversarial input, fine on small) ----------------------------
def _old_boxed_contents(text: str) -> list[str]:
    found = []
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:i])
                    break
    return found


def _old_extract(text: str) -> str | None:
    boxed = _old_boxed_contents(text)
    if boxed:
        return boxed[-1].strip()
    hashes = re.findall(r"####\s*([^\n]+)", text)
    if hashes:
        return hashes[-1].strip()
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+", text)
    return numbers[-1] if numbers else None


def _old_unwrap(text: str) -> str:
    out, pos = [], 0
    for match in re.finditer(r"\\boxed\s*\{", text):
        if match.start() < pos:
            continue
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth:
            break
        out.append(text[pos : match.start()])
        out.append(text[match.end() : i - 1])
        pos = i
    out.append(text[pos:])
    return "".join(out)


def _old_boxed_protected(text: str) -> list[tuple[int, int]]:
    spans = []
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth, end = 1, len(text)
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                end = i + 1
                break
        spans.append((match.start(), end))
    return spans


_OLD_FENCE = re.compile(r"^\s*```[\w-]*\s*\n(?P<body>.*?)\n\s*```\s*$", re.DOTALL)

PIECES = [
    "\\boxed{",
    "\\boxed {",
    "{",
    "}",
    "####",
    "#### 7",
    "\n",
    " ",
    "12",
    "3.5",
    "-4",
    "x",
    "\\text{",
    "<<2*3=6>>",
    "```",
    "```py\n",
    "Sure! Here it is:",
    "five",
    "1,000",
    "\\frac{1}{2}",
    "=",
    ".",
]
texts = st.lists(st.sampled_from(PIECES), max_size=30).map("".join)


@settings(max_examples=400, deadline=None)
@given(texts)
def test_linear_answer_extraction_agrees_with_the_old_definition(text):
    assert answers.extract_final_answer(text) == _old_extract(text)
    contents = _old_boxed_contents(text)
    assert answers.last_boxed(text) == (contents[-1] if contents else None)
    assert restructure._unwrap_boxed(text) == _old_unwrap(text)
    new = [(s, len(text) if e < 0 else e + 1) for s, _, e in answers.boxed_spans(text)]
    assert new == _old_boxed_protected(text)
    old_norm = re.sub(r"\\text\{[^}]*\}", "", text)
    assert answers._drop_text_commands(text) == old_norm


@settings(max_examples=300, deadline=None)
@given(texts)
def test_unfencing_agrees_with_the_old_pattern(text):
    text = text.strip()
    old = _OLD_FENCE.match(text)
    new = llm_base._unfence(text)
    assert (old.group("body").strip() if old else None) == (new.strip() if new is not None else None)


@settings(max_examples=300, deadline=None)
@given(texts, st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=20))
def test_protected_mask_agrees_with_a_direct_definition(text, offsets):
    marked = bytearray(len(text) + 1)  # the old definition: mark every span, then look at each token
    for a, b in protected.protected_spans(text):
        marked[a:b] = b"\x01" * (b - a)
    expected = [e <= s or any(marked[s:e]) for s, e in offsets]
    assert protected.protected_mask(text, offsets) == expected
