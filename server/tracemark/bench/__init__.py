"""Distillation benchmark building blocks: problem generator, student distillation, evaluation."""
