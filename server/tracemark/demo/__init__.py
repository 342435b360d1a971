"""The end-to-end demo: protected serving, distillation by a thief, forensics and signed reports."""
