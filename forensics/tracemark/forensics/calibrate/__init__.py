"""Calibration: the detection test's false-alarm rate measured on null models (H0 true by construction).

``run_calibration(CalibrationParams(...))`` tests fresh random-key accounts against tiny random models,
students trained on other accounts' traces, optional clean models and the embedded model, with the
investigation's own scoring procedure, and builds salient-target accounts from each model's favourites.
The verdict (:func:`~tracemark.forensics.calibrate.summary.rule_text`): PASS only if the one-sided 95%
Clopper-Pearson upper bound of the false-alarm rate at alpha is <= 2 x alpha.
"""

from tracemark.forensics.calibrate.core import run_calibration
from tracemark.forensics.calibrate.params import (
    LEVELS,
    CalibrationError,
    CalibrationParams,
    StudentRecipe,
    min_runs,
)
from tracemark.forensics.calibrate.result import CalibrationResult
from tracemark.forensics.calibrate.summary import RateCheck, rate_check, rule_text

__all__ = [
    "LEVELS",
    "CalibrationError",
    "CalibrationParams",
    "CalibrationResult",
    "RateCheck",
    "StudentRecipe",
    "min_runs",
    "rate_check",
    "rule_text",
    "run_calibration",
]
