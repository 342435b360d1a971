"""Investigations of suspect models (see :mod:`tracemark.forensics.investigate.run`).

``params`` (:class:`InvestigationParams`, the one place parameters are validated), ``family`` (the accusable
accounts and their delivered pairs), ``registration`` (the pre-registration in the transparency log), ``run``
(orchestration: query, score, write the ledger), ``verdict`` (exact rank combination per account,
multiplicity correction, the decision) and ``report`` (the signed report body). The public names are
re-exported here.
"""

from tracemark.forensics.investigate.family import Family, resolve_family
from tracemark.forensics.investigate.params import (
    CORRECTIONS,
    DETECTOR_VERSION,
    MODES,
    InvestigationError,
    InvestigationParams,
)
from tracemark.forensics.investigate.registration import prior_registrations, suspect_key
from tracemark.forensics.investigate.report import InvestigationOutcome
from tracemark.forensics.investigate.run import (
    ProgressFn,
    make_scorer,
    run_investigation,
    run_investigations,
    score_registered_pair,
)
from tracemark.forensics.investigate.verdict import AccountResult, pvalue_text

__all__ = [
    "CORRECTIONS",
    "DETECTOR_VERSION",
    "MODES",
    "AccountResult",
    "Family",
    "InvestigationError",
    "InvestigationOutcome",
    "InvestigationParams",
    "ProgressFn",
    "make_scorer",
    "prior_registrations",
    "pvalue_text",
    "resolve_family",
    "run_investigation",
    "run_investigations",
    "score_registered_pair",
    "suspect_key",
]
