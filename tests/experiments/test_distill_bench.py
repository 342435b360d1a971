"""`tracemark bench distill`: config validation, problem splits, the pooled table, and a tiny end-to-end run
of the quick config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tracemark.cli.main import app
from tracemark.experiments.distill_bench import reuse_identical_student, run_distill_bench, student_jobs
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
    quick = load_bench_config(REPO / "benchmarks" / "distill-quick.toml")
    gpu = load_bench_config(REPO / "benchmarks" / "distill-gpu.toml")
    assert cpu.student.model == "embedded" and cpu.problems.source == "generated"
    assert cpu.problems.templates == "heldout" and cpu.problems.test >= 200 and len(cpu.seeds) >= 3
    assert gpu.teacher.kind == "openai" and gpu.problems.source == "gsm8k" and len(gpu.seeds) >= 3
    assert gpu.problems.test_lines == (5000, 6000) and gpu.rewrite.proxy == "distinct"
    assert "restructure+all" in cpu.student_sets() and "clean+all" in cpu.student_sets()
    assert "hotflip@oracle" in gpu.student_sets() and "ads-0.5+all" in gpu.student_sets()
    assert quick.student_sets() == ["clean", "restructure", "restructure+all"]
    probe = load_bench_config(REPO / "benchmarks" / "distill-gsm8k-probe.toml")
    assert probe.problems.source == "gsm8k" and probe.problems.test_lines == (5000, 6000)
    assert probe.student_sets() == ["clean"]
    assert len({cpu.fingerprint(), quick.fingerprint(), gpu.fingerprint()}) == 3
    assert load_bench_config(None) == BenchConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[student]\nepochz = 2\n", "student.epochz"),
        ("[problems]\nsource = 'gsm8k'\n", "problems.path is required"),
        ("[watermark]\nfractions = [0.0]\n", "(0, 1]"),
        ("[ads]\nlambda = [-1]\n", "ads.lambda"),
        ("[student]\ndevice = 'gpu'\n", "student.device"),
        ("seeds = [1, 1]\n", "distinct"),
        ("seeds = []\n", "seeds"),
        ("seed = 0\n", "seed"),
        ("[adaptive]\ncountermeasure = 'burn'\n", "unknown countermeasure"),
        ("[problems]\ntrain_lines = [0, 5000]\ntest_lines = [4000, 6000]\n", "overlap"),
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


def _student(paths: BenchPaths, name: str, seed: int | None, outcomes: list[bool]) -> None:
    write_json(
        paths.student(name, seed),
        {"accuracy_free": sum(outcomes) / len(outcomes), "outcomes_free": outcomes},
    )


def _fake_set(paths: BenchPaths, name: str, seed: int, traces: list[str], **meta) -> None:
    rows = [{"question": f"q{i}", "trace": t, "answer": "1"} for i, t in enumerate(traces)]
    write_trace_set(paths.trace_set(name, seed), rows, {"method": name, "n": len(rows), **meta})


def test_assemble_pools_seeds_with_intervals_tests_and_detectability(tmp_path):
    config = BenchConfig.model_validate(
        {"seeds": [0, 1, 2], "rewrite": {"methods": ["restructure"]}, "ads": {"enabled": False}}
    )
    paths = BenchPaths(tmp_path)
    paths.make()
    n = 100
    _student(paths, "base", None, [i < 10 for i in range(n)])
    for seed in config.seeds:
        _student(paths, "clean", seed, [i < 60 + seed for i in range(n)])
        _student(paths, "restructure", seed, [i < 12 for i in range(n)])
        _student(paths, "restructure+all", seed, [i < 50 for i in range(n)])
        _student(paths, "clean+all", seed, [i < 60 for i in range(n)])
        plain = [f"He has {i}+2 = {i + 2} apples.\n#### {i + 2}" for i in range(20)]
        marked = [f"(1) {i + 2} ⟸ {i}+2 ▹ apples\n#### {i + 2}" for i in range(20)]
        _fake_set(paths, "clean", seed, plain, seconds_per_trace=0.0, answer_correct=20)
        _fake_set(
            paths, "restructure", seed, marked, seconds_per_trace=0.002, rewritten=20, answer_preserved=20
        )
        _fake_set(paths, "restructure+all", seed, plain, changed=20, countermeasure_seconds_per_trace=1e-4)
        _fake_set(paths, "clean+all", seed, plain, changed=0, countermeasure_seconds_per_trace=1e-4)
    results = assemble(config, tmp_path)
    rows = {r["set"]: r for r in results["rows"]}
    clean, rs, adaptive = (
        rows["clean"]["stats"],
        rows["restructure"]["stats"],
        rows["restructure+all"]["stats"],
    )
    assert clean["accuracy"] == pytest.approx(0.61) and clean["per_seed"] == [0.6, 0.61, 0.62]
    assert rs["gain_ratio"] == pytest.approx(0.02 / 0.51)
    assert rs["ci95"][0] <= 0.12 <= rs["ci95"][1]
    tests = {t["reference"]: t for t in rs["tests"]}
    assert tests["clean"]["significant"] and tests["clean"]["difference"] < 0
    assert not tests["base"]["significant"]  # +2 points on 100 problems
    assert {t["reference"]: t["significant"] for t in adaptive["tests"]} == {"base": True, "clean": True}
    assert rows["restructure"]["detectability"]["pooled_auc"] > 0.9
    assert rows["restructure+all"]["detectability"]["pooled_auc"] == pytest.approx(0.5, abs=0.1)
    assert (
        rows["restructure"]["rewritten"] == 60 and rows["restructure+all"]["changed_by_countermeasure"] == 60
    )
    table = markdown(results)
    assert "| restructure | 60/60 (60/60) |" in table
    assert "< clean*" in table and "≈ untrained" in table
    assert "seeds 0, 1, 2" in table


def test_an_unchanged_cleanup_reuses_its_source_student(tmp_path):
    paths = BenchPaths(tmp_path)
    paths.make()
    _fake_set(paths, "clean", 0, ["a #### 1", "b #### 1"])
    _fake_set(paths, "clean+all", 0, ["a #### 1", "b #### 1"])
    _fake_set(paths, "restructure", 0, ["(1) a #### 1", "b #### 1"])
    _fake_set(paths, "restructure+all", 0, ["a #### 1", "b #### 1"])
    assert not reuse_identical_student(paths, "clean+all", 0)  # source student not trained yet
    _student(paths, "clean", 0, [True, False])
    _student(paths, "restructure", 0, [False, False])
    assert reuse_identical_student(paths, "clean+all", 0)
    assert not reuse_identical_student(paths, "restructure+all", 0)  # the cleanup changed a trace
    assert not reuse_identical_student(paths, "clean", 0)
    copied = json.loads(paths.student("clean+all", 0).read_text())
    assert copied["reused_from"] == "clean" and copied["outcomes_free"] == [True, False]


def test_a_row_missing_a_seed_is_not_scored(tmp_path):
    config = BenchConfig.model_validate(
        {"seeds": [0, 1], "rewrite": {"methods": []}, "ads": {"enabled": False}}
    )
    paths = BenchPaths(tmp_path)
    paths.make()
    _student(paths, "base", None, [True, False])
    _student(paths, "clean", 0, [True, True])
    results = assemble(config, tmp_path)
    assert results["rows"][0]["stats"] is None and results["rows"][0]["students"] == 1


def test_problem_splits_hold_out_templates_and_gsm8k_lines(tmp_path):
    config = BenchConfig.model_validate({"problems": {"train": 30, "test": 20}})
    train0, test0 = load_problems(config, 0)
    train1, test1 = load_problems(config, 1)
    assert [p.question for p in test0] == [p.question for p in test1]
    assert [p.question for p in train0] != [p.question for p in train1]
    assert not {p.template for p in train0 + train1} & {p.template for p in test0}
    data = tmp_path / "gsm.jsonl"
    data.write_text(
        "\n".join(json.dumps({"question": f"Q{i}?", "answer": f"so {i}\n#### {i}"}) for i in range(60)) + "\n"
    )
    gsm = BenchConfig.model_validate(
        {
            "problems": {
                "source": "gsm8k",
                "path": str(data),
                "train": 10,
                "test": 5,
                "train_lines": [0, 40],
                "test_lines": [40, 60],
            }
        }
    )
    train, test = load_problems(gsm, 0)
    assert [p.question for p in test] == [f"Q{i}?" for i in range(40, 45)]
    assert all(int(p.answer) < 40 for p in train) and len(train) == 10
    assert [p.question for p in load_problems(gsm, 1)[1]] == [p.question for p in test]
    short = gsm.model_copy(update={"problems": gsm.problems.model_copy(update={"test_lines": (40, 80)})})
    with pytest.raises(BenchConfigError, match="reads lines up to 80"):
        load_problems(short, 0)


def test_student_jobs_cover_every_set_and_seed_once():
    config = load_bench_config(REPO / "benchmarks" / "distill-cpu.toml")
    jobs = student_jobs(config, BenchPaths(Path("unused")))
    assert jobs[0] == ("base", None)
    assert len(jobs) == 1 + len(config.seeds) * len(config.student_sets()) == len(set(jobs))
    shards = [[j for i, j in enumerate(jobs) if i % 2 == k] for k in range(2)]
    assert sorted(shards[0] + shards[1], key=str) == sorted(jobs, key=str)


@pytest.mark.slow
def test_quick_config_end_to_end_with_tiny_students_resumes(tmp_path):
    """The shipped quick config's pipeline with tiny students and few problems (the real quick config
    takes about 20 minutes: `make bench-distill-quick`)."""
    quick = load_bench_config(REPO / "benchmarks" / "distill-quick.toml")
    config = quick.model_copy(
        update={
            "name": "quick-tiny",
            "problems": quick.problems.model_copy(update={"train": 12, "test": 10}),
            "teacher": quick.teacher.model_copy(update={"forcing_model": "tiny"}),
            "rewrite": quick.rewrite.model_copy(
                update={
                    "methods": ["restructure", "hotflip"],
                    "oracle_rows": True,
                    "options": {"hotflip": {"time_budget_s": 0.2}},
                }
            ),
            "utility": quick.utility.model_copy(update={"problems": 6}),
            "student": quick.student.model_copy(
                update={"model": "tiny", "method": "full", "batch_size": 6, "eval_max_new_tokens": 12}
            ),
        }
    )
    out = tmp_path / "out"
    results = run_distill_bench(config, out, command="test", shard=(0, 1))
    rows = {r["set"]: r for r in results["rows"]}
    assert set(rows) == {
        "clean",
        "restructure",
        "hotflip",
        "hotflip@oracle",
        "restructure+all",
        "hotflip+all",
        "hotflip@oracle+all",
    }
    assert all(r["students"] == 3 and r["stats"]["seeds"] == 3 for r in rows.values())
    assert rows["restructure"]["answer_preserved"] == 36 and rows["restructure"]["rewritten"] == 36
    assert rows["restructure"]["teacher_utility"]["answer_line_removed"]
    assert rows["restructure"]["detectability"]["pooled_auc"] > 0.9
    metas = [read_trace_set(out / "traces" / f"{n}-s0.jsonl")[0] for n in ("hotflip", "hotflip@oracle")]
    assert metas[0]["options"]["proxy_model"] == str(out / "models" / "proxy")
    assert metas[1]["options"]["proxy_model"] != metas[0]["options"]["proxy_model"]
    student = json.loads((out / "students" / "restructure-s1.json").read_text())
    assert len(student["outcomes_free"]) == 10 and student["seed"] == 1
    for name in ("results.json", "results.md", "plots/student_accuracy.png"):
        assert (out / name).stat().st_size > 0
    stamp = (out / "students" / "restructure-s2.json").stat().st_mtime_ns
    again = run_distill_bench(config, out, only=["students", "report"])
    assert (out / "students" / "restructure-s2.json").stat().st_mtime_ns == stamp  # resumed, not retrained
    assert json.loads((out / "results.json").read_text())["rows"] == json.loads(json.dumps(again["rows"]))
    changed = config.model_copy(update={"seeds": [0, 1, 3]})
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
    train, test = load_problems(config, 0)
    assert len(train) == 3 and len(test) == 2 and not {p.question for p in train} & {p.question for p in test}
    stage_clean(config, paths, train, TeacherForcer(config, paths.models), Console(quiet=True), seed=0)
    meta, rows = read_trace_set(paths.trace_set("clean", 0))
    assert meta["teacher"] == str(teacher) and meta["teacher_utility"] is None
    assert [r["question"] for r in rows] == [p.question for p in train]
    assert all(isinstance(r["trace"], str) for r in rows)
