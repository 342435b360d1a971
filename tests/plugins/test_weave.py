"""The keyed template weave (issue 13, item 4): no fixed label, no position rule, the trace's own words,
never on or after the answer line, every character of the trace kept."""

from __future__ import annotations

import re

import pytest
from tracemark.foundation.problems import generate_problems
from tracemark.plugins.answers import extract_final_answer
from tracemark.plugins.builtin.restructure import restructure
from tracemark.plugins.builtin.weave import insertion_points, quantity_nouns, weave_contexts, weave_keyed

PAIR = "k417 = 093812"
OLD_FORMAT = re.compile(r"\(aux\)|\(ref\)|Auxiliary constant|auxiliary tag|reference index|Let k417|∵ aux")


def _kept(original: str, woven: str) -> bool:
    rest = iter("".join(woven.split()))
    return all(ch in rest for ch in "".join(original.split()))


def _check(trace: str, woven: str) -> None:
    assert woven.count(PAIR) == 1
    assert _kept(trace, woven)  # only insertions
    assert extract_final_answer(woven) == extract_final_answer(trace)
    assert woven.rstrip().split("\n")[-1] == trace.rstrip().split("\n")[-1]  # the answer line untouched
    assert not OLD_FORMAT.search(woven)
    line = next(ln for ln in woven.split("\n") if PAIR in ln)
    following = woven.split("\n")[woven.split("\n").index(line) + 1 :]
    assert following, "never on the last line"
    if not any(ch.isdigit() for ch in line.replace(PAIR, "")):  # a line of its own
        assert not re.match(r"\s*(?:so|thus|therefore|=)\b", following[0], re.IGNORECASE)


def test_generated_problems_prose_and_formal():
    problems = generate_problems(150, seed=7, difficulty="medium")
    for i, p in enumerate(problems):
        for trace in (p.solution, restructure(p.solution)):
            _check(trace, weave_keyed(trace, PAIR, f"seed-{i}", problem=p.question))


def test_gsm8k_solutions(h):
    rows = h.gsm8k_rows(150)
    if not rows:
        pytest.skip("GSM8K data not present")
    for i, row in enumerate(rows):
        _check(row["answer"], weave_keyed(row["answer"], PAIR, i, problem=row["question"]))


def test_place_and_phrasing_vary_with_the_key():
    trace = (
        "Weng earns 12/60 = $0.2 per minute. Working 50 minutes, she earned 0.2 x 50 = $10.\n"
        "She also sells 3 cakes for $4 each, which is 12 dollars.\nIn total she earns 10 + 12 = 22.\n#### 22"
    )
    woven = [weave_keyed(trace, PAIR, seed) for seed in range(300)]
    places = {w.split(PAIR)[0].count("\n") + 100 * w.split(PAIR)[0].count(". ") for w in woven}
    phrasings = {next(ln for ln in w.split("\n") if PAIR in ln).replace(PAIR, "P") for w in woven}
    assert len(places) >= 5 and len(phrasings) >= 60
    assert woven == [weave_keyed(trace, PAIR, seed) for seed in range(300)]  # deterministic in the seed
    assert any(PAIR in w.split("\n")[0] for w in woven) and any(PAIR in w.split("\n")[2] for w in woven)


def test_the_trace_own_quantity_nouns_are_used():
    trace = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert quantity_nouns(trace) == ["clips"]
    assert sum("clips" in weave_keyed(trace, PAIR, s).replace(trace, "") for s in range(50)) > 0
    assert quantity_nouns("no numbers here")[0] == "items"  # a generic noun, never a name


def test_continuations_and_the_answer_line_are_never_split():
    trace = "Tom has 3 apples and 4 pears:\n3 + 4 = 7 fruits.\nSo he has 7.\n#### 7"
    points = insertion_points(trace)
    assert {(p.kind, p.line) for p in points} >= {("line", 0), ("line", 3)}  # before the answer line: fine
    for point in points:
        assert point.line < 3 or point.kind == "line"  # nothing inside the answer line
        assert not (point.kind == "line" and point.line in (1, 2))  # after a ':' line; before "So"


def test_single_line_and_answerless_traces():
    one = "First 2 + 3 = 5. Then 5 * 2 = 10. So the answer is 10."
    for seed in range(30):
        _check_single = weave_keyed(one, PAIR, seed)
        assert extract_final_answer(_check_single) == "10" and _check_single.count(PAIR) == 1
    assert weave_keyed("", PAIR, 1).startswith(PAIR) or PAIR in weave_keyed("", PAIR, 1)


def test_weave_contexts_mirror_the_weave_for_scoring():
    contexts = weave_contexts("3 + 4 = 7\n7 - 5 = 2\n#### 2", n=4)
    assert len(set(contexts)) == 4 and all(
        c.endswith("{trigger}") and c.count("{trigger}") == 1 for c in contexts
    )
    assert contexts == weave_contexts("3 + 4 = 7\n7 - 5 = 2\n#### 2", n=4)  # public and reproducible
    assert all("#### 2" not in c for c in contexts)  # the pair never follows the answer line
