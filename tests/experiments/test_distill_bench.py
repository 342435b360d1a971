"""`tracemark bench distill`: config validation, report arithmetic, and one tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tracemark.cli.main import app
from tracemark.experiments.distill_bench import run_distill_bench
from tracemark.experiments.distill_config import BenchConfig, BenchConfigError, load_bench_config
from tracemark.experiments.distill_report import assemble, markdown
from tracemark.experiments.distill_setup import (
    BenchPaths,
    load_problems,
    read_trace_set,
    write_json,
    write_trace_set,
)
from tracemark.experiments.distill_traces import TeacherForcer, stage_clean
from tracemark.foundation.models.tiny import build_tiny_model
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]


def test_shipped_configs_load():
    cpu = load_bench_config(REPO / "benchmarks" / "distill-cpu.toml")
    gpu = load_bench_config(REPO / "benchmarks" / "distill-gpu.toml")
    assert cpu.student.model == "embedded" and cpu.problems.source == "generated"
    assert gpu.teacher.kind == "openai" and gpu.problems.source == "gsm8k"
    assert cpu.rewrite.options["hotflip"]["time_budget_s"] == 4.0
    assert cpu.ads.set_names() == [f"ads-{lam:g}" for lam in cpu.ads.lambdas]
    assert cpu.fingerprint() != gpu.fingerprint()
    assert load_bench_config(None) == BenchConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[student]\nepochz = 2\n", "student.epochz"),
        ("[problems]\nsource = 'gsm8k'\n", "problems.path is required"),
        ("[watermark]\nfractions = [0.0]\n", "(0, 1]"),
        ("[ads]\nlambda = [-1]\n", "ads.lambda"),
        ("[student]\ndevice = 'gpu'\n", "student.device"),
        ("[problems\n", "not valid TOML"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(BenchConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        load_bench_config(path)
    result = CliRunner().invoke(
        app, ["bench", "distill", "--config", str(path), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert result.output.strip().startswith("tracemark: error:")
    assert len(result.output.strip().splitlines()) == 1


def test_cli_rejects_missing_config_and_unknown_stage(tmp_path):
    runner = CliRunner()
    config = tmp_path / "gsm.toml"
    config.write_text(f"[problems]\nsource = 'gsm8k'\npath = '{tmp_path / 'absent.jsonl'}'\n")
    absent = runner.invoke(app, ["bench", "distill", "--config", str(config), "--out", str(tmp_path / "g")])
    assert absent.exit_code == 2 and "no such file" in absent.output
    assert len(absent.output.strip().splitlines()) == 1
    missing = runner.invoke(app, ["bench", "distill", "--config", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and "cannot read config" in missing.output
    stage = runner.invoke(app, ["bench", "distill", "--only", "train", "--out", str(tmp_path / "o")])
    assert stage.exit_code == 2 and "unknown stage" in stage.output


def _fake_set(paths: BenchPaths, name: str, seconds: float, **meta) -> None:
    rows = [{"question": "q", "trace": "t #### 1", "answer": "1"}]
    write_trace_set(
        paths.trace_set(name), rows, {"method": name, "n": 1, "seconds_per_trace": seconds, **meta}
    )


def test_assemble_computes_gains_ratios_and_costs(tmp_path):
    config = BenchConfig.model_validate(
        {"rewrite": {"methods": ["restructure", "semantic"]}, "watermark": {"fractions": [0.1], "seeds": [0]}}
    )
    paths = BenchPaths(tmp_path)
    paths.make()
    for name, acc in [("base", 0.2), ("clean", 0.6), ("restructure", 0.3), ("semantic", 0.5)]:
        write_json(paths.student(name), {"accuracy_forced": acc, "accuracy_free": acc, "heldout_nll": 1.0})
    for name, acc in [("teacher-standard", 0.5), ("ads-0.5", 0.3)]:
        write_json(paths.student(name), {"accuracy_forced": acc, "accuracy_free": acc, "heldout_nll": 1.0})
    _fake_set(paths, "clean", 0.0)
    _fake_set(paths, "restructure", 0.01, rewritten=1, answer_preserved=1)
    _fake_set(paths, "semantic", 2.0, rewritten=0, answer_preserved=1)
    _fake_set(paths, "teacher-standard", 3.0)
    _fake_set(paths, "ads-0.5", 9.0)
    verdict = {"verdict": "detected", "attributed_account": "distiller", "p_value": 1e-6}
    run = {
        "fraction": 0.1,
        "seed": 0,
        "traces": 100,
        "watermarked_traces": 10,
        "seconds": 5.0,
        "verdicts": [
            {**verdict, "student": "distilled", "false_alarms": 0, "accounts_tested": 20},
            {
                "student": "control",
                "verdict": "not_detected",
                "attributed_account": "",
                "p_value": 0.4,
                "false_alarms": 1,
                "accounts_tested": 20,
            },
        ],
    }
    write_json(paths.watermark / "f0.1-s0.json", run)
    results = assemble(config, tmp_path)
    rows = {r["set"]: r for r in results["rows"]}
    assert rows["clean"]["gain"] == pytest.approx(0.4)
    assert rows["restructure"]["gain_ratio"] == pytest.approx(0.25)
    assert rows["semantic"]["gain_ratio"] == pytest.approx(0.75)
    assert rows["ads-0.5"]["gain_ratio"] == pytest.approx(0.1 / 0.3)  # relative to the same teacher's traces
    assert rows["ads-0.5"]["protection_seconds_per_trace"] == pytest.approx(6.0)
    assert rows["ads-0.5"]["cost_vs_semantic"] == pytest.approx(3.0)
    assert rows["restructure"]["cost_vs_semantic"] == pytest.approx(0.005)
    (detection,) = results["detection"]
    assert detection["detected"] == 1 and detection["control_false_alarms"] == 0
    assert detection["bystander_false_alarms"] == 1 and detection["bystander_tests"] == 39
    table = markdown(results)
    assert "| restructure | 1/1 | 1/1 |" in table and "0.25" in table
    assert "| 0.1 | 10 of 100 | 1 | 1/1 | 1/1 |" in table


@pytest.mark.slow
def test_tiny_end_to_end_run_resumes(tmp_path):
    proxy = build_tiny_model(tmp_path / "proxy", hidden_size=32, layers=1, heads=2, seed=3)
    config = BenchConfig.model_validate(
        {
            "name": "tiny-test",
            "problems": {"train": 12, "test": 4},
            "teacher": {"forcing_model": "tiny"},
            "rewrite": {
                "methods": ["restructure", "hotflip"],
                "llm": "none",
                "workers": 2,
                "options": {"hotflip": {"proxy_model": str(proxy), "time_budget_s": 0.5}},
            },
            "ads": {"proxy": str(proxy), "heldout": 2, "lambda": [0.5, 0.1]},
            "student": {
                "model": "tiny",
                "method": "full",
                "epochs": 1,
                "batch_size": 6,
                "eval_max_new_tokens": 16,
            },
            "watermark": {"fractions": [0.2], "seeds": [0], "train": 30, "bystanders": 2, "epochs": 1},
        }
    )
    out = tmp_path / "out"
    results = run_distill_bench(config, out, command="test")
    rows = {r["set"]: r for r in results["rows"]}
    assert set(rows) == {"clean", "restructure", "hotflip", "teacher-standard", "ads-0.5", "ads-0.1"}
    assert rows["restructure"]["traces"]["answer_preserved"] == 12
    assert rows["restructure"]["traces"]["teacher_forced"]["model"] == "tiny"
    assert all(r["student"]["examples"] == 12 for r in rows.values())
    assert rows["ads-0.5"]["traces"]["decoding"] == "ads(lambda=0.5, epsilon=0.01)"
    assert rows["ads-0.1"]["traces"]["decoding"] == "ads(lambda=0.1, epsilon=0.01)"
    (detection,) = results["detection"]
    assert detection["runs"] == 1 and detection["bystander_tests"] == 2 * 3 - 1
    for name in ("results.json", "results.md", "plots/student_accuracy.png", "plots/detection_pvalues.png"):
        assert (out / name).stat().st_size > 0
    stamp = (out / "students" / "restructure.json").stat().st_mtime_ns
    again = run_distill_bench(config, out, only=["students", "report"])
    assert (out / "students" / "restructure.json").stat().st_mtime_ns == stamp  # resumed, not retrained
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(json.dumps(again["rows"]))
    changed = config.model_copy(update={"seed": 1})
    with pytest.raises(BenchConfigError, match="different config"):
        run_distill_bench(changed, out, only=["report"])


def test_local_teacher_writes_the_clean_traces(tmp_path):
    from rich.console import Console

    teacher = build_tiny_model(tmp_path / "teacher", hidden_size=32, layers=1, heads=2, seed=1)
    config = BenchConfig.model_validate(
        {
            "problems": {"train": 3, "test": 2},
            "teacher": {"kind": "local", "model": str(teacher), "max_new_tokens": 16, "forcing_model": ""},
        }
    )
    paths = BenchPaths(tmp_path / "out")
    paths.make()
    train, test = load_problems(config)
    assert len(train) == 3 and len(test) == 2 and not {p.question for p in train} & {p.question for p in test}
    stage_clean(config, paths, train, TeacherForcer(config, paths.models), Console(quiet=True))
    meta, rows = read_trace_set(paths.trace_set("clean"))
    assert meta["teacher"] == str(teacher) and meta["teacher_forced"] is None
    assert [r["question"] for r in rows] == [p.question for p in train]
    assert all(isinstance(r["trace"], str) for r in rows)
