"""Experiments: serving and distillation benchmarks, evaluation, preservation measurement, the instruction
optimizer and the demo scenario. Built on the runtime and domain layers; never imported by them."""
