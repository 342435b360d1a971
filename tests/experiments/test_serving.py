"""The serving bench: served vs raw as one-run ratios, and the per-quantization speed table."""

from __future__ import annotations

import time

from tracemark.experiments.serving import (
    compare_served_raw,
    measure_served_vs_raw,
    measure_speed,
    ratio_markdown,
)
from tracemark.server.config import TeacherSection, load_settings
from tracemark.server.teacher.factory import build_teacher


def test_ratio_is_served_rate_over_raw_rate_in_one_run():
    calls = {"raw": 0, "served": 0}

    def raw(problems: list[str]) -> int:
        calls["raw"] += 1
        time.sleep(0.05)
        return 10 * len(problems)  # 10 tokens per row in 0.05 s for the whole batch

    def served(problem: str) -> int:
        calls["served"] += 1
        time.sleep(0.1)
        return 10  # each request alone takes twice the raw batch: half the raw rate at concurrency 2

    row = measure_served_vs_raw(raw, served, concurrency=2, rounds=2, per_client=1)
    assert calls == {"raw": 3, "served": 4}  # one untimed raw warm-up, then 2 rounds
    assert row.served_requests == 4 and row.raw_batches == 2
    assert 0.35 < row.ratio < 0.55
    assert row.served_p50_latency_s >= 0.1
    assert "| 2 |" in ratio_markdown([row], [])


def test_compare_served_raw_through_a_real_server(tmp_path):
    settings = load_settings(
        overrides={
            "server": {"address": "127.0.0.1:0"},
            "teacher": {"backend": "tiny", "max_new_tokens": 4, "max_batch_size": 3, "batch_window_ms": 50},
            "ledger": {"url": f"sqlite:///{tmp_path / 'l.db'}", "master_key_file": tmp_path / "m.key"},
        }
    )
    rows, info = compare_served_raw(settings, levels=[1, 3], rounds=1, per_client=1)
    assert [r.concurrency for r in rows] == [1, 3]
    assert all(r.raw_tokens_per_s > 0 and r.served_tokens_per_s > 0 and r.ratio > 0 for r in rows)
    assert rows[0].batch_sizes == {1: 1}
    assert sum(size * n for size, n in rows[1].batch_sizes.items()) == 3
    assert info["quantization"] == "int8-dynamic" and info["quantization_note"].startswith("auto on cpu")


def test_speed_table_has_one_row_per_mode_and_batch(tmp_path):
    section = TeacherSection(backend="tiny")

    def load(q: str):
        mode, dtype = ("none", "bfloat16") if q == "bf16" else (q, "auto")
        return build_teacher(section.model_copy(update={"quantization": mode}), dtype=dtype)

    rows = measure_speed(load, ["none", "bf16", "int8-dynamic"], batches=(1, 2), max_new_tokens=3)
    assert [(r.quantization, r.batch) for r in rows] == [
        (q, b) for q in ("none", "bf16", "int8-dynamic") for b in (1, 2)
    ]
    assert all(r.tokens_per_s > 0 for r in rows)
    assert [r.in_effect for r in rows if r.quantization == "int8-dynamic"] == ["int8-dynamic"] * 2
