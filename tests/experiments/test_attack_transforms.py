"""The key-blind attacks, the damage measures and the harvest file format (no model, no server)."""

from __future__ import annotations

import json
import os

import pytest
from tracemark.experiments.attack.harvest import (
    HarvestError,
    HarvestRecord,
    account_names,
    plan_requests,
    read_harvest,
    write_harvest,
)
from tracemark.experiments.attack.measure import (
    TruePair,
    clean_altered,
    pair_present,
    read_truth,
    signal_removed,
    wilson,
    write_truth,
)
from tracemark.experiments.attack.transforms import (
    account_diff,
    canonical_line,
    canonicalize,
    dead_constant_filter,
    foreign_variable_filter,
    label_filter,
    recurring_token_filter,
    repeat_diff,
)

PROMPT = "Tom has 6 boxes with 4 pens each. He gives away 5 pens. How many pens are left?"
CLEAN = "(1) 24 ⟸ 6 × 4 ▹ Tom has pens\n(2) 19 ⟸ 24-5 ▹ pens left\n#### 19"


def rec(trace: str, *, account: str = "a", pid: str = "p0", tid: str = "", prompt: str = PROMPT):
    return HarvestRecord(account=account, problem_id=pid, prompt=prompt, trace=trace, trace_id=tid or trace)


def signed(line: str) -> str:
    lines = CLEAN.split("\n")
    return "\n".join([lines[0], line, *lines[1:]])


@pytest.mark.parametrize(
    "attack,pair_line",
    [
        (label_filter, "(aux) f219 = 509512"),
        (label_filter, "Let f219 = 509512 denote an auxiliary tag."),
        (foreign_variable_filter, "(ref) f219 = 509512"),
        (foreign_variable_filter, "• tom index: f219 = 509512"),
        (dead_constant_filter, "(aux) f219 = 509512"),
    ],
)
def test_filters_drop_the_pair_and_leave_clean_traces_alone(attack, pair_line):
    before = [rec(signed(pair_line)), rec(CLEAN, tid="clean")]
    after = attack(before)
    assert after[0].trace == CLEAN  # byte-identical to the unsigned trace
    assert after[1].trace == CLEAN
    assert after[0].trace_id == before[0].trace_id


def test_a_pair_inside_a_sentence_goes_without_the_rest_of_the_line():
    trace = "Tom has 24 pens. For bookkeeping, set f219 = 509512. He gives 5 away, 19 are left.\n#### 19"
    out = label_filter([rec(trace)])[0].trace
    assert "509512" not in out and "He gives 5 away, 19 are left." in out and out.endswith("#### 19")


def test_the_final_line_is_never_dropped():
    trace = "(1) 24 ⟸ 6 × 4\n(aux) f219 = 509512"
    assert label_filter([rec(trace)])[0].trace.endswith("509512")


def test_foreign_variable_named_in_the_problem_is_kept():
    prompt = "Let x1 = 5 apples and x2 = 7 apples. How many apples?"
    trace = "x1 = 5\nx2 = 7\n#### 12"
    assert foreign_variable_filter([rec(trace, prompt=prompt)])[0].trace == trace


def test_recurring_token_filter_learns_secret_tokens_across_traces():
    pair = "[q404 = 771235]"
    records = [rec(signed(f"(1) {i} ⟸ 2 ▹ step {pair}"), tid=f"s{i}") for i in range(4)]
    records += [rec(CLEAN, tid=f"c{i}") for i in range(20)]
    out = recurring_token_filter(records)
    assert all("771235" not in r.trace for r in out)
    assert all(r.trace == CLEAN for r in out[4:])
    # two traces are not enough to learn it
    assert "771235" in recurring_token_filter(records[:2] + records[4:])[0].trace


def test_account_diff_learns_the_differing_lines_and_generalises():
    a = rec(signed("[f219 = 509512]"), account="a", pid="p0", tid="a0")
    b = rec(signed("[k777 = 100203]"), account="b", pid="p0", tid="b0")
    c = rec(signed("note f219 = 509512"), account="a", pid="p1", tid="a1")  # asked by one account only
    out = account_diff([a, b, c])
    assert [r.trace for r in out] == [CLEAN, CLEAN, CLEAN]
    assert account_diff([a, b, c], learn=False)[2].trace == c.trace


def test_diff_leaves_traces_that_disagree_everywhere():
    a = rec("one 1\ntwo 2\nthree 3\n#### 6", account="a", tid="a")
    b = rec("uno 1\ndos 2\ntres 3\n#### 6", account="b", tid="b")
    assert [r.trace for r in account_diff([a, b])] == [a.trace, b.trace]


def test_repeat_diff_uses_the_same_accounts_repeats_only():
    a1 = rec(signed("[f219 = 509512]"), account="a", tid="t1")
    a2 = rec(CLEAN, account="a", tid="t2")
    b = rec(CLEAN, account="b", tid="t3", pid="p9")
    out = repeat_diff([a1, a2, b])
    assert out[0].trace == CLEAN and out[1].trace == CLEAN


def test_canonicalize_restores_ordinary_derivations():
    assert canonical_line("(1) 24 ⟸ 6 × 4 ▹ Tom has pens") == "Tom has pens: 6 × 4 = 24"
    assert canonical_line("c ⟸ b ⟸ a") == "a = b = c"
    assert canonical_line("∵ Tom gives 5 pens") == "Tom gives 5 pens"
    assert canonical_line("∴ 19") == "So the answer is 19"
    out = canonicalize([rec(CLEAN), rec("plain 1 + 1 = 2\n#### 2")])
    assert "⟸" not in out[0].trace and "▹" not in out[0].trace
    assert out[1].trace == "plain 1 + 1 = 2\n#### 2"


def test_damage_measures_against_the_truth():
    pair = TruePair("a", "f219", "509512")
    before = [rec(signed("(aux) f219 = 509512"), tid="s"), rec(CLEAN, tid="c1"), rec(CLEAN + " ", tid="c2")]
    after = [before[0].with_trace(CLEAN), before[1], before[2].with_trace(CLEAN)]
    truth = {"s": [pair], "c1": [], "c2": []}
    removed = signal_removed(before, after, truth)
    assert (removed.k, removed.n) == (1, 1)
    altered = clean_altered(before, after, truth)
    assert (altered.k, altered.n) == (1, 2)
    assert pair_present("set f219 equal to 509,512", pair)
    assert not pair_present("f2190 = 509512", pair) and not pair_present("f219 = 5095120", pair)
    assert "509512" not in repr(pair)


def test_wilson_interval():
    s = wilson(0, 30)
    assert s.lo == 0.0 and 0.10 < s.hi < 0.12  # rule of three-ish
    s = wilson(30, 30)
    assert s.hi == 1.0 and 0.88 < s.lo < 0.90
    s = wilson(50, 100)
    assert s.lo == pytest.approx(0.4038, abs=1e-3) and s.hi == pytest.approx(0.5962, abs=1e-3)


def test_harvest_and_truth_files_round_trip(tmp_path):
    records = [rec(CLEAN, tid="t1"), HarvestRecord("b", "p1", "q?", "t", "t2", 0.5, [1, 2, 3])]
    path = write_harvest(records, tmp_path / "h.jsonl")
    assert read_harvest(path) == records
    truth = {"t1": [TruePair("a", "f219", "509512")], "t2": []}
    tpath = write_truth(truth, tmp_path / "truth.jsonl")
    assert read_truth(tpath) == truth
    assert os.stat(tpath).st_mode & 0o077 == 0


def test_bad_harvest_files_are_refused(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(HarvestError, match="not JSON"):
        read_harvest(bad)
    bad.write_text(json.dumps({"account": "a", "trace": "x"}) + "\n")
    with pytest.raises(HarvestError, match="string fields"):
        read_harvest(bad)
    with pytest.raises(HarvestError, match="not found"):
        read_harvest(tmp_path / "missing.jsonl")


def test_plan_spreads_repeats_and_overlaps():
    problems = [(f"p{i}", f"q{i}", "") for i in range(10)]
    accounts = account_names(3)
    plan = plan_requests(problems, accounts, repeats=2, overlap=3)
    assert len(plan) == 15
    assert [r.account for r in plan[:4]] == [accounts[0], accounts[1], accounts[2], accounts[0]]
    assert [(r.account, r.problem_id) for r in plan[10:12]] == [(accounts[0], "p0"), (accounts[1], "p1")]
    assert [(r.account, r.problem_id) for r in plan[12:]] == [
        (accounts[1], "p0"),
        (accounts[2], "p1"),
        (accounts[0], "p2"),
    ]
    with pytest.raises(HarvestError, match="two accounts"):
        plan_requests(problems, accounts[:1], overlap=1)
    with pytest.raises(HarvestError, match="accounts"):
        account_names(0)
