"""Re-derivation of a report by a third party (the accused's expert): the operator discloses one account's
keys with the proofs they rest on (:mod:`~tracemark.forensics.rederive.disclosure`), and anyone holding the
suspect model and the operator's public key re-scores it (:mod:`~tracemark.forensics.rederive.rescore`),
with no master secret and no ledger. The offline checks are in :mod:`~tracemark.forensics.rederive.checks`.

Typical use::

    bundle = build_disclosure(engine, master, report_id="tmr-...", account="acme")   # the operator
    result = rescore(bundle, parse_suspect("hf:./model"), public_key=pem_text)         # the expert
    assert result.matches, result.problems
"""

from tracemark.forensics.rederive.disclosure import (
    DISCLOSURE_FORMAT,
    DisclosureError,
    DisclosureInconsistent,
    build_disclosure,
)
from tracemark.forensics.rederive.rescore import PairRow, RescoreResult, rescore

__all__ = [
    "DISCLOSURE_FORMAT",
    "DisclosureError",
    "DisclosureInconsistent",
    "PairRow",
    "RescoreResult",
    "build_disclosure",
    "rescore",
]
