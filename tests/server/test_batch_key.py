"""Which requests may share one batched generate call."""

from tracemark.server.teacher.base import GenerationParams


def test_unseeded_sampled_requests_share_a_batch_and_seeded_ones_run_alone():
    a, b = GenerationParams(temperature=0.7), GenerationParams(temperature=0.7, max_new_tokens=64)
    assert a.batch_key() == b.batch_key()
    assert a.batch_key() != GenerationParams(temperature=1.0).batch_key()
    seeded = GenerationParams(temperature=0.7, seed=3)
    assert seeded.batch_key() != GenerationParams(temperature=0.7, seed=3).batch_key()
    assert GenerationParams().batch_key() == GenerationParams().batch_key() != a.batch_key()
