"""`tracemark optimize`: the OPRO-style instruction search, its run folder, install and the CLI.

The search runs end to end with a tiny random proxy student (real fine-tuning, real NLL) and a scripted
LLM double that implements ``chat`` (its rewrites depend on the instruction; its proposals are fixed
texts). One CLI test uses a real tiny random LLM (``--llm tiny``) instead of the double.
"""

from __future__ import annotations

import json
import logging
import re
import threading

import pytest
from tracemark.experiments.optimize import (
    META_SYSTEM,
    ConfigMismatch,
    OptimizeError,
    RunFolder,
    SearchConfig,
    SearchPlan,
    install_instruction,
    instruction_sha,
    meta_prompt,
    parse_proposal,
    run_search,
)
from tracemark.plugins.answers import extract_final_answer
from tracemark.plugins.api import RewriteContext
from tracemark.plugins.builtin.optimized import OPTIMIZED_INSTRUCTION, OptimizedRewriter
from typer.testing import CliRunner

TERSE = "Rewrite tersely: only equations, symbols for quantities, every number kept, final \\boxed{ANSWER}."
SABOTAGE = "Sabotage: restate the solution in prose but end with a different boxed answer than before."


class DoubleLLM:
    """Scripted chat model: rewrites follow the instruction's keywords; proposals come from a list."""

    model_id = "double"

    def __init__(self, proposals: list[str] | None = None) -> None:
        self.proposals = list(proposals or [])
        self.rewrites: list[str] = []  # system message of every rewrite call
        self.meta_calls = 0
        self._lock = threading.Lock()

    def chat(self, messages, *, max_new_tokens=512, temperature=0.0, seed=None) -> str:
        system, user = messages[0]["content"], messages[1]["content"]
        with self._lock:
            if system == META_SYSTEM:
                self.meta_calls += 1
                text = self.proposals.pop(0) if self.proposals else "too short"
                return f"Sure, here it is:\n<INS>{text}</INS>"
            self.rewrites.append(system)
        solution = user.split("Solution:\n", 1)[1].split("\n\nFinish with", 1)[0]
        answer = extract_final_answer(solution)
        plain = re.sub(r"<<[^>]*>>", "", solution)
        numbers = re.findall(r"\d+", plain)
        if "sabotage" in system.lower():
            return " ".join(numbers) + f"\nso \\boxed{{{int(answer) + 1}}}"
        if "terse" in system.lower():
            eqs = re.findall(r"[\d+\-*/ ]+=\s*\d+", plain)
            return "\n".join(e.strip() for e in eqs) + " " + " ".join(numbers) + f"\n\\boxed{{{answer}}}"
        return plain.rsplit("####", 1)[0].strip() + f"\n\\boxed{{{answer}}}"


def config(**changes) -> SearchConfig:
    base = dict(
        sample=4,
        heldout=3,
        proxy="tiny",
        proxy_method="full",
        proxy_epochs=1.0,
        proxy_lr=1e-3,
        proxy_batch_size=4,
        proxy_max_length=384,
        llm="double",
    )
    return SearchConfig(**{**base, **changes})


def lines(folder) -> list[dict]:
    return [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]


def test_search_scores_logs_and_resumes_without_rescoring(tmp_path):
    out = tmp_path / "run"
    llm = DoubleLLM([TERSE, SABOTAGE])
    summary = run_search(out, config(), SearchPlan(rounds=1, proposals=2, workers=4), llm)
    logged = lines(out)
    assert [r["origin"] for r in logged] == ["built-in", "proposed", "proposed"]
    assert logged[0]["instruction"] == OPTIMIZED_INSTRUCTION
    assert logged[0]["sha"] == instruction_sha(OPTIMIZED_INSTRUCTION)
    by_text = {r["instruction"]: r for r in logged}
    terse, bad = by_text[TERSE], by_text[SABOTAGE]
    assert terse["kept"] == 4 and terse["fell_back"] == 0 and terse["preservation"] == 1.0
    assert terse["score"] == pytest.approx(terse["gain"]) and not terse["disqualified"]
    assert "\\boxed{" in terse["example"]
    # the guard rejected every sabotaged rewrite (answer changed), retried once, then fell back
    assert bad["kept"] == 0 and bad["fell_back"] == 4 and bad["answers_preserved"] == 4
    assert bad["disqualified"] and bad["score"] is None and "kept 0/4" in bad["reason"]
    ref = json.loads((out / "reference.json").read_text())
    for r in logged:
        assert r["nll_base"] == pytest.approx(ref["nll_base"])
        assert r["gain"] == pytest.approx(ref["nll_base"] - r["nll_after"])
    # a fallback-only candidate trains on the clean traces: same gain as the clean reference
    assert bad["gain"] == pytest.approx(ref["clean_gain"], abs=1e-5)
    assert summary.best is not None and summary.best.score == min(
        r["score"] for r in logged if r["score"] is not None
    )
    state = json.loads((out / "state.json").read_text())
    assert state["status"] == "finished" and state["best"]["sha"] == summary.best.sha
    assert llm.meta_calls == 2 and len(llm.rewrites) == 4 + 4 + 8  # sabotage: 4 traces x 2 attempts

    again = DoubleLLM(["never asked for anything at all, this proposal must not be requested"])
    second = run_search(out, config(), SearchPlan(rounds=1, proposals=2, workers=4), again)
    assert second.scored_now == 0 and second.reused == 3
    assert again.rewrites == [] and again.meta_calls == 0
    assert lines(out) == logged

    more = DoubleLLM([TERSE.replace("tersely", "tersely and compactly") + " Round two.", TERSE, "x" * 50])
    third = run_search(out, config(), SearchPlan(rounds=2, proposals=2, workers=4), more)
    assert third.scored_now == 1 and third.reused == 3  # the duplicate TERSE proposal was dropped
    assert set(more.rewrites) == {TERSE.replace("tersely", "tersely and compactly") + " Round two."}
    assert [r["round"] for r in lines(out)] == [0, 1, 1, 2]
    proposals = [json.loads(x) for x in (out / "proposals.jsonl").read_text().splitlines()]
    assert [p["round"] for p in proposals] == [1, 2] and len(proposals[1]["candidates"]) == 1


def test_interrupt_keeps_a_consistent_log_and_the_rerun_finishes(tmp_path):
    out = tmp_path / "run"
    seen: list[str] = []

    def interrupt_second(kind, info):
        if kind == "candidate_start":
            seen.append(info["sha"])
        if kind == "train" and len(seen) == 2:
            raise KeyboardInterrupt

    plan = SearchPlan(rounds=0, seeds=(TERSE,), workers=4)
    with pytest.raises(KeyboardInterrupt):
        run_search(out, config(), plan, DoubleLLM(), on_event=interrupt_second)
    assert [r["origin"] for r in lines(out)] == ["built-in"]
    # a torn last line (crash in the middle of a write) is dropped and cut off on the next read
    with (out / "results.jsonl").open("a") as fh:
        fh.write('{"sha": "abc", "instr')
    assert len(RunFolder(out).results()) == 1
    assert (out / "results.jsonl").read_text().endswith("}\n")

    llm = DoubleLLM()
    summary = run_search(out, config(), plan, llm)
    assert summary.scored_now == 1 and summary.reused == 1
    assert set(llm.rewrites) == {TERSE}
    assert [r["origin"] for r in lines(out)] == ["built-in", "seed"]


def test_config_mismatch_is_refused_unless_forced(tmp_path):
    out = tmp_path / "run"
    run_search(out, config(), SearchPlan(rounds=0, workers=4), DoubleLLM())
    with pytest.raises(ConfigMismatch, match=r"sample: 4 -> 5"):
        run_search(out, config(sample=5), SearchPlan(rounds=0), DoubleLLM())
    # the plan (rounds, proposals, seeds) may change freely; only the scoring config is pinned
    run_search(out, config(), SearchPlan(rounds=0, top_k=2), DoubleLLM())
    summary = run_search(out, config(sample=5), SearchPlan(rounds=0, workers=4), DoubleLLM(), force=True)
    assert summary.scored_now == 1 and lines(out)[0]["n"] == 5
    archived = [p for p in out.iterdir() if p.name.startswith("previous-")]
    assert len(archived) == 1 and json.loads((archived[0] / "results.jsonl").read_text())["n"] == 4


def test_bad_config_and_empty_sample_raise_one_line_errors(tmp_path):
    with pytest.raises(OptimizeError, match="sample is empty"):
        config(sample=0)
    with pytest.raises(OptimizeError, match="min preservation"):
        config(min_preservation=1.5)
    with pytest.raises(OptimizeError, match="no such run folder"):
        install_instruction(tmp_path / "missing")


def test_meta_prompt_lists_best_last_and_parses_proposals():
    from tracemark.experiments.optimize import CandidateResult

    def result(text, score, kept=4):
        return CandidateResult(
            instruction_sha(text), text, 0, "seed", score, score or 0.0, 1.0, 1.0, None,
            kept / 4, 4, kept, 4 - kept, 0, 4, score is None, "" if score is not None else "kept 0/4", 1.0,
            0.5, 0.5, 0.0,
        )  # fmt: skip

    messages = meta_prompt(
        [result("A good one.", 0.1), result("A bad one.", 0.5), result("Broken.", None, 0)]
    )
    user = messages[1]["content"]
    assert user.index("A bad one.") < user.index("A good one.")  # OPRO: ascending quality, best last
    assert "gain: 0.1000" in user and "rejected: kept 0/4" in user and "<INS>" in user
    assert parse_proposal("<INS>Write only equations; keep all numbers; end with \\boxed{ANSWER}.</INS>")
    assert parse_proposal("x$%^ 12 ~~ 7& *(&^ qq zz") is None
    assert parse_proposal("Be terse.") is None  # too short to be an instruction
    # fluent but off-topic (what a 135M model produced in a real run): no boxed answer line asked for
    assert (
        parse_proposal("Stew last now revised in modern technical French mathematical language, as it is")
        is None
    )


def test_install_makes_the_rewriter_use_the_best_instruction(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TRACEMARK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRACEMARK_OPTIMIZED_INSTRUCTION", raising=False)
    out = tmp_path / "run"
    run_search(out, config(), SearchPlan(rounds=1, proposals=1, workers=4), DoubleLLM([TERSE]))
    path, best = install_instruction(out)
    assert path == tmp_path / "home" / "optimized-instruction.json"
    stored = json.loads(path.read_text())
    assert stored["instruction"] == best.instruction and stored["sha"] == best.sha

    trace = "Tom has 3 * 4 = <<3*4=12>>12 apples.\nHe gets 5 more: 12 + 5 = <<12+5=17>>17.\n#### 17"
    recorder = DoubleLLM()
    ctx = RewriteContext(llm=recorder)
    OptimizedRewriter().rewrite(trace, ctx)
    assert recorder.rewrites == [best.instruction]
    assert ctx.notes == [f"installed instruction {best.sha[:12]}"]
    # an explicit option still wins
    OptimizedRewriter(OptimizedRewriter.parse_options({"instruction": "Be brief please."})).rewrite(
        trace, RewriteContext(llm=recorder)
    )
    assert recorder.rewrites[-1] == "Be brief please."
    # an unreadable installed file falls back to the built-in, with a warning
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="tracemark.plugins.builtin.optimized"):
        OptimizedRewriter().rewrite(trace, RewriteContext(llm=recorder))
    assert recorder.rewrites[-1] == OPTIMIZED_INSTRUCTION
    assert "ignoring the installed instruction" in caplog.text
    path.unlink()  # missing: the built-in, silently
    OptimizedRewriter().rewrite(trace, RewriteContext(llm=recorder))
    assert recorder.rewrites[-1] == OPTIMIZED_INSTRUCTION
    # the env var points the rewriter at another file (plain text accepted)
    other = tmp_path / "mine.txt"
    other.write_text("Use symbols only and keep every number; end with the boxed answer.\n")
    monkeypatch.setenv("TRACEMARK_OPTIMIZED_INSTRUCTION", str(other))
    OptimizedRewriter().rewrite(trace, RewriteContext(llm=recorder))
    assert recorder.rewrites[-1] == other.read_text().strip()


# -- CLI ---------------------------------------------------------------------------------------------
@pytest.fixture
def runner():
    return CliRunner()


def cli(runner, *args):
    from tracemark.cli.main import app

    return runner.invoke(app, ["optimize", *args])


def one_line_error(result, fragment):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tracemark: error:") and fragment in err[0], err


def test_cli_bad_input_exits_2_with_one_line(runner, tmp_path):
    one_line_error(cli(runner, "run", "--out", str(tmp_path / "r"), "--sample", "0"), "sample is empty")
    one_line_error(cli(runner, "run", "--out", str(tmp_path / "r"), "--llm", "gpt"), "--llm must be")
    one_line_error(cli(runner, "run", "--data", str(tmp_path / "none.jsonl")), "does not exist")
    empty = tmp_path / "seeds.txt"
    empty.write_text("# only a comment\n\n")
    one_line_error(
        cli(runner, "run", "--out", str(tmp_path / "r"), "--proxy", "tiny", "--seeds", str(empty)),
        "holds no instructions",
    )
    one_line_error(cli(runner, "install", str(tmp_path / "missing")), "no such run folder")
    one_line_error(cli(runner, "show", str(tmp_path / "missing")), "not a `tracemark optimize run` folder")
    # a folder made with another configuration: refused before any model is loaded
    out = tmp_path / "run"
    run_search(out, config(), SearchPlan(rounds=0, workers=4), DoubleLLM())
    one_line_error(
        cli(runner, "run", "--out", str(out), "--proxy", "tiny", "--llm", "tiny", "--sample", "4"),
        "was created with another configuration",
    )
    (out / "config.json").write_text("{broken")
    one_line_error(cli(runner, "run", "--out", str(out), "--proxy", "tiny", "--llm", "tiny"), "unreadable")


def test_cli_install_and_show(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEMARK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRACEMARK_OPTIMIZED_INSTRUCTION", raising=False)
    shown = cli(runner, "show")
    assert shown.exit_code == 0 and "source: built-in" in shown.stdout
    out = tmp_path / "run"
    run_search(out, config(), SearchPlan(rounds=1, proposals=2, workers=4), DoubleLLM([TERSE, SABOTAGE]))
    board = cli(runner, "show", str(out), "--json")
    assert board.exit_code == 0
    data = json.loads(board.stdout)
    assert len(data["results"]) == 3 and data["results"][-1]["disqualified"]
    installed = cli(runner, "install", str(out))
    assert installed.exit_code == 0, installed.stderr
    assert "optimized-instruction.json" in installed.stdout
    shown = cli(runner, "show", "--json")
    info = json.loads(shown.stdout)
    assert info["source"].startswith("installed:") and info["sha"] == data["best"]
    target = tmp_path / "elsewhere.json"
    assert cli(runner, "install", str(out), "--to", str(target)).exit_code == 0 and target.is_file()


def test_cli_run_with_a_real_tiny_llm(runner, tmp_path):
    """--llm tiny: a random tiny model rewrites (its output is noise, so the guard falls back and every
    candidate is disqualified) and proposes (noise is rejected as a proposal)."""
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--llm", "tiny", "--proxy", "tiny", "--sample", "2", "--heldout", "2"]
    args += ["--rounds", "1", "--proposals", "1", "--rewrite-max-tokens", "24", "--propose-max-tokens", "48"]
    args += ["--proxy-max-length", "384", "--workers", "2"]
    result = cli(runner, *args)
    assert result.exit_code == 0, result.stderr
    logged = lines(out)
    assert logged[0]["origin"] == "built-in" and logged[0]["fell_back"] == 2 and logged[0]["disqualified"]
    assert "no qualified candidate" in result.stderr
    rerun = cli(runner, *args, "--install")
    assert rerun.exit_code == 2 and "nothing to install" in rerun.stderr
    assert "0 candidates scored now" in rerun.stderr and lines(out) == logged


def test_install_requires_a_margin_over_the_built_in(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEMARK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRACEMARK_OPTIMIZED_INSTRUCTION", raising=False)
    out = tmp_path / "run"
    run_search(out, config(), SearchPlan(rounds=0, proposals=1, workers=4), DoubleLLM())
    (builtin,) = [r for r in RunFolder(out).results() if r.origin == "built-in"]
    assert builtin.score is not None and builtin.score > 0
    # a proposal that is 1% better than the built-in: within the noise of a small sample
    line = json.loads(RunFolder(out).results_file.read_text().splitlines()[0])
    line.update(
        sha="0" * 16,
        instruction="Write it as equations only, end with \\boxed{ANSWER}.",
        origin="proposed",
        round=1,
        score=builtin.score * 0.99,
    )
    with RunFolder(out).results_file.open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    with pytest.raises(OptimizeError, match="lowers the proxy's gain by 1.0%.*nothing installed"):
        install_instruction(out, min_improvement=0.05)
    path, best = install_instruction(out, min_improvement=0.0)
    assert best.sha == "0" * 16 and json.loads(path.read_text())["sha"] == "0" * 16
