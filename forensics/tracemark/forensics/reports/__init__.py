"""Signed, hash-chained evidence reports: canonical JSON in a DSSE envelope (Ed25519), HTML/PDF export.

Typical use::

    stored = issue_report(engine, data=findings, master=master, investigation_id=inv_id)
    result = verify_stored_report(engine, stored.report_id, public_key=master)  # all key versions trusted
    export_html(stored.envelope, "report.html", verification=result)
"""

from tracemark.forensics.ledger.db import ReportNotFound
from tracemark.forensics.reports.canonical import CanonicalJSONError, canonical_json, is_canonical, to_plain
from tracemark.forensics.reports.core import (
    GENESIS_HASH,
    REPORT_FORMAT,
    ChainConflict,
    ReportError,
    StoredReport,
    build_report,
    decode_report,
    issue_report,
    list_reports,
    load_report,
    report_hash,
    sign_report,
    software_version,
    store_report,
)
from tracemark.forensics.reports.dsse import PAYLOAD_TYPE, EnvelopeError, pae, trusted_keys
from tracemark.forensics.reports.export import ExportError, export_html, export_pdf, null_plot_png, plot_data
from tracemark.forensics.reports.verify import (
    VerificationResult,
    verify_chain,
    verify_envelope,
    verify_stored_report,
)

__all__ = [
    "GENESIS_HASH",
    "PAYLOAD_TYPE",
    "REPORT_FORMAT",
    "CanonicalJSONError",
    "ChainConflict",
    "EnvelopeError",
    "ExportError",
    "ReportError",
    "ReportNotFound",
    "StoredReport",
    "VerificationResult",
    "build_report",
    "canonical_json",
    "decode_report",
    "export_html",
    "export_pdf",
    "is_canonical",
    "issue_report",
    "list_reports",
    "load_report",
    "null_plot_png",
    "pae",
    "plot_data",
    "report_hash",
    "sign_report",
    "software_version",
    "store_report",
    "to_plain",
    "trusted_keys",
    "verify_chain",
    "verify_envelope",
    "verify_stored_report",
]
