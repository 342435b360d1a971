"""Investigations of suspect models (see :mod:`tracemark.forensics.investigate.run`).

``params`` (:class:`InvestigationParams`, the one place parameters are validated), ``run`` (orchestration:
query, score, write the ledger), ``verdict`` (Fisher per account, multiplicity correction, the decision) and
``report`` (the signed report body). The public names are re-exported here.
"""

from tracemark.forensics.investigate.params import (
    CORRECTIONS,
    MODES,
    InvestigationError,
    InvestigationParams,
)
from tracemark.forensics.investigate.report import (
    DETECTOR_VERSION,
    SEED_COMMITMENT_LABEL,
    InvestigationOutcome,
    seed_commitment,
)
from tracemark.forensics.investigate.run import ProgressFn, run_investigation, run_investigations
from tracemark.forensics.investigate.verdict import AccountResult, pvalue_text

__all__ = [
    "CORRECTIONS",
    "DETECTOR_VERSION",
    "MODES",
    "SEED_COMMITMENT_LABEL",
    "AccountResult",
    "InvestigationError",
    "InvestigationOutcome",
    "InvestigationParams",
    "ProgressFn",
    "pvalue_text",
    "run_investigation",
    "run_investigations",
    "seed_commitment",
]
