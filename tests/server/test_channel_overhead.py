"""The channel-overhead benchmark runs end to end (tiny model; the embedded-model figure is in README)."""

from __future__ import annotations

import pytest
from tracemark.experiments.channel_overhead import measure_channel_overhead


def test_overhead_benchmark_interleaves_and_measures_the_processor(tiny_model_dir):
    result = measure_channel_overhead(tiny_model_dir, batch=2, new_tokens=8, repetitions=2)
    assert len(result.ratios) == len(result.processor_shares) == 2
    assert all(r > 0 for r in result.plain_tokens_per_s + result.channel_tokens_per_s)
    assert all(0.0 < share < 1.0 for share in result.processor_shares)  # the processor ran, and took time
    summary = result.summary()
    assert summary["ratio_min"] <= summary["ratio_median"] <= summary["ratio_max"]
    assert result.spec["tokenizer"] and result.spec["context_width"] == 1
    with pytest.raises(ValueError, match="positive"):
        measure_channel_overhead(tiny_model_dir, repetitions=0)
