"""Detection of the distributional watermark channel (:mod:`tracemark.foundation.channel`).

``score`` (exact binomial tests over distinct tuples), ``detect`` (collecting a suspect's tuples black-box
from sampled completions or white-box from its argmax next tokens; the tokenizer check), ``calibrate``
(the decoy-key check) and ``prompts`` (the default public held-out prompts). Typical use::

    evidence = collect_evidence(suspect, prompts, spec=spec, mode="black-box", tokenizer=tok, beacon=b)
    tests = score_keys(evidence, [provider_key, account_key], spec=spec)
    check = decoy_check(evidence.tuples, spec=spec, seed=b)
"""

from tracemark.forensics.channel.calibrate import DecoyCheck, decoy_check, decoy_keys
from tracemark.forensics.channel.detect import (
    ChannelDetectionError,
    ChannelEvidence,
    blackbox_evidence,
    check_tokenizer,
    collect_evidence,
    sample_completions,
    score_keys,
    whitebox_evidence,
)
from tracemark.forensics.channel.score import ChannelTest, binomial_p, score_texts, score_tuples

__all__ = [
    "ChannelDetectionError",
    "ChannelEvidence",
    "ChannelTest",
    "DecoyCheck",
    "binomial_p",
    "blackbox_evidence",
    "check_tokenizer",
    "collect_evidence",
    "decoy_check",
    "decoy_keys",
    "sample_completions",
    "score_keys",
    "score_texts",
    "score_tuples",
    "whitebox_evidence",
]
