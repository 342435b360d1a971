"""The embedded SmolLM2 as a white-box suspect: its tokenizer keeps digits as single tokens (so exact
full-space ranks work), loaded from the converted folder and straight from the .gguf file."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.embedded]


def _embedded():
    try:
        from tracemark.foundation.models.embedded import embedded_gguf_path, ensure_embedded_model

        return ensure_embedded_model(), embedded_gguf_path()
    except Exception as exc:  # package missing on this machine
        pytest.skip(f"embedded model unavailable: {exc}")


def test_smollm2_digits_are_single_tokens_and_ranks_are_exact():
    import numpy as np
    from tracemark.forensics.adapters import parse_suspect
    from tracemark.forensics.scoring import WhiteBoxScorer
    from tracemark.forensics.signatures import CandidateSpace, SignaturePair

    folder, _ = _embedded()
    s = parse_suspect(f"hf:{folder}")
    sc = WhiteBoxScorer(s, CandidateSpace(4), contexts=("{chat}Let {trigger}",), log_queries=False)
    layouts = sc.layouts("x137 =")  # verified on all 10,000 candidates
    assert layouts is not None
    tok = s.tokenizer
    assert [tok.decode([i]) for i in layouts[0].digit_ids] == [str(d) for d in range(10)]
    assert tok.decode(list(layouts[0].sep_ids)) == " "
    table = sc.table("x137 =")
    assert table.shape == (10_000,) and np.isfinite(table).all()
    # the packed one-pass table agrees with direct scoring of a few candidates
    some = ["0000", "4821", "9999"]
    direct = sc.full_scores("x137 =", some)
    sep = direct[0] - table[0]
    assert np.allclose(direct - sep, table[[0, 4821, 9999]], atol=1e-3)
    res = sc.score_pair(SignaturePair("a", 1, 0, "x137 =", "4821"))
    assert res.method == "table" and res.rank == int(np.count_nonzero(table >= table[4821]))  # ties count against


def test_gguf_spec_loads_white_box_with_file_identity():
    import hashlib

    from tracemark.forensics.adapters import parse_suspect

    _, gguf = _embedded()
    s = parse_suspect(f"gguf:{gguf}")
    ident = s.identity()
    h = hashlib.sha256()
    with open(gguf, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    assert ident["kind"] == "gguf" and ident["weights_sha256"] == h.hexdigest()
    ids = s.encode("x137 = 4821")
    assert len(ids) >= 10  # digits split
    lp = s.next_token_logprobs([s.encode("x137 = 48")], columns=[s.encode("2")[0]])
    assert lp.shape == (1, 1) and lp[0, 0] < 0
