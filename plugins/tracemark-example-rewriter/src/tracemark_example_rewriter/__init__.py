"""Example tracemark rewriter plugin (``numbered-steps``)."""

from tracemark_example_rewriter.rewriter import NumberedStepsOptions, NumberedStepsRewriter, number_steps

__all__ = ["NumberedStepsOptions", "NumberedStepsRewriter", "number_steps"]
__version__ = "0.1.0"
