"""Forensics: keyed signatures, the ledger, suspect investigations and signed evidence reports."""
