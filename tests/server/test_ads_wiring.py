"""`teacher.decoding = ads` reaches generation: the teacher's output moves, the info says so."""

from __future__ import annotations

import torch
from tracemark.server.teacher.base import GenerationParams
from tracemark.server.teacher.local import LocalTeacher

MSG = [{"role": "user", "content": "Tom has 3 apples and buys 5 more. How many?"}]


def test_ads_decoding_changes_greedy_output(tiny_model_dir, tmp_path):
    from tracemark.foundation.problems import generate_problems
    from tracemark.server.teacher.ads import AntidistillationSampler

    torch.set_num_threads(1)
    heldout = [(p.question, p.solution) for p in generate_problems(4, seed=3)]
    sampler = AntidistillationSampler(str(tiny_model_dir), heldout, epsilon=0.05, cache_dir=tmp_path)
    plain = LocalTeacher(tiny_model_dir, device="cpu")
    ads = LocalTeacher(tiny_model_dir, device="cpu", ads=sampler, ads_lambda=50.0)
    assert plain.info.decoding == "standard" and ads.info.decoding.startswith("ads(lambda=50")
    params = GenerationParams(max_new_tokens=16)
    assert plain.generate_batch([MSG], params)[0].text != ads.generate_batch([MSG], params)[0].text
