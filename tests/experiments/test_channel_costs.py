"""Channel costs bench: answer stripping, paired statistics, detectability and a tiny-model run."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tracemark.experiments.channel_costs import (
    TEST_ACCOUNT,
    CostConfig,
    costs_keyring,
    decode,
    detectability,
    load_gsm8k_tail,
    main,
    paired_accuracy,
    render_markdown,
    run_costs,
    strip_final_answer,
)
from tracemark.foundation.errors import InvalidInput
from tracemark.foundation.models.tiny import build_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return path, model, tokenizer


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        ("Step 1: 3 * 4 = 12\nSo the answer is 12.", "Step 1: 3 * 4 = 12"),
        ("a = 2\nb = 3\nThe total is \\boxed{5} apples", "a = 2\nb = 3"),
        ("3 + 4 = 7\n#### 7\n", "3 + 4 = 7"),
        ("Only line with 42", ""),
        ("no numbers here", "no numbers here"),
        ("3 bags of 4. 3 * 4 = 12. So Tom has 12 apples.", "3 bags of 4. 3 * 4 = 12."),  # sentence cut
        ("Each is $2.50, so 10 in total.", ""),  # a decimal point ends no sentence
        ("a = 1\nx = \\boxed{5}\nthen 9 more words 10", "a = 1"),  # boxed wins, later lines dropped
    ],
)
def test_strip_final_answer(trace, expected):
    assert strip_final_answer(trace) == expected


def test_paired_accuracy_counts_discordant_pairs():
    clean = [True, True, True, False] + [True] * 6
    channel = [True, False, False, False] + [True] * 6
    result = paired_accuracy(clean, channel)
    assert result["clean"]["correct"] == 9 and result["channel"]["correct"] == 7
    assert result["difference_points"] == pytest.approx(-20.0)
    assert (result["only_clean_correct"], result["only_channel_correct"]) == (2, 0)
    assert result["mcnemar_exact_p"] == pytest.approx(0.5)  # 2 of 2 discordant, two-sided exact
    low, high = result["channel"]["wilson95"]
    assert 0.39 < low < 0.40 and 0.89 < high < 0.90  # Wilson interval of 7/10
    assert paired_accuracy([True, False], [True, False])["mcnemar_exact_p"] == 1.0
    with pytest.raises(InvalidInput):
        paired_accuracy([True], [True, False])


def _words(rng: random.Random, alphabet: str, n: int = 30) -> str:
    return " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 6))) for _ in range(n))


def test_detectability_separates_marked_text_and_not_identical_sources():
    rng = random.Random(1)
    clean = [_words(rng, "abcdefgh") for _ in range(40)]
    marked = [_words(rng, "abcdefghxyz") for _ in range(40)]
    same = [_words(rng, "abcdefgh") for _ in range(40)]
    high = detectability(clean, marked, folds=5, bootstrap=50)
    assert high["pooled_auc"] > 0.9 and len(high["fold_auc"]) == 5
    assert high["pooled_auc_bootstrap95"][0] <= high["pooled_auc"] <= high["pooled_auc_bootstrap95"][1]
    null = detectability(clean, same, folds=5, bootstrap=50)
    assert 0.25 < null["pooled_auc"] < 0.75
    with pytest.raises(InvalidInput):
        detectability(clean[:3], marked[:3], folds=5)


def test_costs_keyring_is_fixed_and_keys_both_rows():
    a, b = costs_keyring(1.5), costs_keyring(1.5)
    rows = a.lists_for(TEST_ACCOUNT)
    assert [delta for _, delta in rows] == [1.5, 1.5]
    assert (a.provider.row(7, 500) == b.provider.row(7, 500)).all()
    assert not (rows[0][0].row(7, 500) == rows[1][0].row(7, 500)).all()


def test_load_gsm8k_tail_reads_last_rows(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"question": f"q{i}", "answer": f"work\n#### {i},000"} for i in range(5)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    problems = load_gsm8k_tail(path, 2)
    assert [p.question for p in problems] == ["q3", "q4"] and problems[1].answer == "4,000"
    path.write_text("{not json}\n")
    with pytest.raises(InvalidInput, match="not a GSM8K row"):
        load_gsm8k_tail(path, 2)


def test_decode_applies_channel_per_row(tiny):
    _, model, tokenizer = tiny
    keyring = costs_keyring(12.0)
    prompt = tokenizer("Tom has 3 apples.", add_special_tokens=False)["input_ids"]
    rows = [None, keyring.lists_for(TEST_ACCOUNT)]
    texts, lengths = decode(model, tokenizer, [prompt, prompt], rows, max_new_tokens=24, batch_size=2)
    assert len(texts) == 2 and all(0 < k <= 24 for k in lengths)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    green = [keyring.provider.green(p, [t])[0] for p, t in zip(ids[1][:-1], ids[1][1:])]
    assert sum(green) / len(green) > 0.8  # delta 12 on a random model: nearly every step green
    with pytest.raises(InvalidInput):
        decode(model, tokenizer, [prompt], [], max_new_tokens=2, batch_size=1)


def test_run_costs_tiny_model(tiny):
    _, model, tokenizer = tiny
    config = CostConfig(
        n_generated=6, deltas=(8.0,), max_new_tokens=16, forced_tokens=3, batch_size=4, folds=2, bootstrap=20
    )
    result = run_costs(model, tokenizer, config)
    (block,) = result["sets"].values()
    (cond,) = block["conditions"]
    assert block["n"] == 6 and cond["delta"] == 8.0
    assert cond["forced"]["n"] == cond["free"]["n"] == 6
    green = cond["green_provider"]
    assert green["channel"]["fraction"] > green["clean"]["fraction"] + 0.2
    assert green["channel"]["z"] > 3
    assert 0.0 <= cond["detectability_sampled"]["pooled_auc"] <= 1.0
    trace = block["traces"][0]
    assert set(trace) == {"question", "answer", "clean", "channel 8.0"}
    assert trace["channel 8.0"]["cut"] == strip_final_answer(trace["channel 8.0"]["trace"])
    report = render_markdown(result)
    assert "answer-forced" in report and "McNemar" in report
    with pytest.raises(InvalidInput):
        CostConfig(deltas=())


def test_main_writes_json_and_markdown(tiny, tmp_path):
    path, _, _ = tiny
    out = tmp_path / "costs"
    args = ["--out", str(out), "--model", str(path), "--n-generated", "5", "--n-gsm8k", "0"]
    args += ["--max-new-tokens", "8", "--batch-size", "5", "--threads", "1", "--deltas", "2.5"]
    assert main([*args, "--traces", str(tmp_path / "traces.jsonl")]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert "traces" not in json.dumps(data["sets"])  # problem texts stay out of the report
    assert len((tmp_path / "traces.jsonl").read_text().splitlines()) == 5
    assert data["config"]["deltas"] == [2.5] and "--deltas 2.5" in data["command"]
    assert "Detectability" in out.with_suffix(".md").read_text()
    both = tmp_path / "both"
    assert (
        main(["--out", str(both), "--combine", str(out.with_suffix(".json")), str(out.with_suffix(".json"))])
        == 0
    )
    assert len(json.loads(both.with_suffix(".json").read_text())["runs"]) == 2
    assert both.with_suffix(".md").read_text().count("## Accuracy") == 2
