"""`tracemark bench preservation`: bad input is one line on stderr with exit 2; a tiny run prints the
JSON report (rule-based rewriters only, no model)."""

from __future__ import annotations

import json

import pytest
from tracemark.cli.main import app
from typer.testing import CliRunner

ROWS = [
    {
        "question": "Tom has 3 apples and buys 4 more. How many?",
        "answer": "3 + 4 = <<3+4=7>>7 apples.\n#### 7",
    },
    {"question": "A box holds 5 pens. How many in 2 boxes?", "answer": "2 * 5 = <<2*5=10>>10 pens.\n#### 10"},
]


@pytest.fixture
def gsm8k(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def bench(*args):
    return CliRunner().invoke(app, ["bench", "preservation", *args])


def one_line_error(result, fragment):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tracemark: error:") and fragment in err[0], err


def test_bad_input_exits_2_with_one_line(gsm8k, tmp_path):
    one_line_error(bench(), "--gsm8k FILE is required")
    one_line_error(bench("--gsm8k", str(tmp_path / "missing.jsonl")), "is not a file")
    not_gsm8k = tmp_path / "other.jsonl"
    not_gsm8k.write_text('{"prompt": "no question here"}\n')
    one_line_error(bench("--gsm8k", str(not_gsm8k)), "line 1 is not a GSM8K row")
    one_line_error(bench("--gsm8k", str(gsm8k), "--rewriters", "no-such-rewriter"), "unknown rewriter")
    one_line_error(bench("--gsm8k", str(gsm8k), "--options", "{broken"), "--options is not valid JSON")
    one_line_error(bench("--gsm8k", str(gsm8k), "--options", "[1]"), "must be a JSON object")
    one_line_error(
        bench("--gsm8k", str(gsm8k), "--options", '{"watermark": {"bogus": 1}}'), "invalid options"
    )
    one_line_error(bench("--gsm8k", str(gsm8k), "--llm", "gpt"), "--llm must be one of")
    one_line_error(bench("--gsm8k", str(gsm8k), "--n", "0"), "--n and --workers must be >= 1")


def test_reports_preservation_per_step(gsm8k, tmp_path):
    dump = tmp_path / "dump.jsonl"
    result = bench("--gsm8k", str(gsm8k), "--n", "2", "--dump", str(dump))
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 2 and report["final_answer_preserved"] == 2
    assert set(report["steps"]) == {"restructure", "watermark"}
    assert report["steps"]["restructure"]["kept_first_try_rate"] == 1.0
    assert report["config"]["rewriters"] == "restructure,watermark"
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert [row["index"] for row in rows] == [0, 1] and all(row["final_answer"] for row in rows)
