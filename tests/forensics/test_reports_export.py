"""HTML/PDF exports and the null-distribution plot data."""

from __future__ import annotations

import base64
import math
import re

import pytest
from scipy import stats
from tracemark.forensics.reports import (
    ExportError,
    build_report,
    export_html,
    export_pdf,
    null_plot_png,
    plot_data,
    sign_report,
    verify_envelope,
)


def _report(**extra) -> dict:
    data = {
        "suspect_identity": {"endpoint": "http://x/v1", "model": "<script>alert(1)</script>"},
        "decision": {"verdict": "detected", "alpha": 0.001, "p_value": 2e-9, "attributed_account": "acme"},
        "statistics": {
            "accounts": [
                {"account": "beta", "fisher_statistic": 3.1, "df": 4, "p_value": 0.54},
                {"account": "acme", "fisher_statistic": 47.0, "df": 4, "p_value": 2e-9},
            ]
        },
    }
    data.update(extra)
    return build_report(data)


def test_plot_data_rules():
    acme = plot_data(_report())
    assert acme.kind == "chi2" and acme.df == 4 and acme.observed == 47.0 and "acme" in acme.label
    from_ps = plot_data(build_report({"statistics": {"pair_p_values": [0.01, 0.2, 0.5]}}))
    assert from_ps.df == 6
    assert from_ps.observed == pytest.approx(-2 * sum(math.log(p) for p in [0.01, 0.2, 0.5]))
    samples = plot_data(build_report({"statistics": {"null_samples": [1, 2, 3], "observed": 2.5}}))
    assert samples.kind == "samples" and samples.samples == [1, 2, 3]
    spec = plot_data(
        build_report({"statistics": {"plot": {"observed": 9, "null": {"kind": "chi2", "df": 2}}}})
    )
    assert spec.df == 2 and spec.observed == 9
    by_name = plot_data(build_report({"statistics": {"accounts": {"z": {"statistic": 5, "n_pairs": 3}}}}))
    assert by_name.df == 6 and "z" in by_name.label
    assert plot_data(build_report({"statistics": "garbage"})) is None
    assert plot_data(build_report({})) is None


@pytest.mark.parametrize(
    "report",
    [
        _report(),
        build_report({}),
        build_report({"statistics": {"fisher_statistic": "Infinity", "df": 4}}),
        build_report({"statistics": {"null_samples": [0.1] * 50, "observed": 0.1}}),
        build_report({"statistics": {"fisher_statistic": 1e6, "df": 2}}),
    ],
)
def test_plot_png_robust(report):
    png = null_plot_png(report)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000


def test_export_html_self_contained(tmp_path, master):
    env = sign_report(_report(), master)
    res = verify_envelope(env, public_key=master)
    out = export_html(env, tmp_path / "r.html", verification=res)
    page = out.read_text()
    assert env["payload"] in page  # the envelope is embedded for third-party verification
    assert "DETECTED" in page and "VALID" in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert not re.search(r"(src|href)=['\"]https?:", page)  # nothing loaded from outside
    img = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert img and base64.b64decode(img.group(1)).startswith(b"\x89PNG")
    assert "acme" in page and "beta" in page


def test_export_html_without_statistics(tmp_path, master):
    page = export_html(sign_report(build_report({"note": "empty"}), master), tmp_path / "e.html").read_text()
    assert "not performed at export" in page and "data:image/png;base64," in page


def test_export_pdf(tmp_path, master):
    env = sign_report(_report(), master)
    out = export_pdf(env, tmp_path / "r.pdf")
    data = out.read_bytes()
    assert data.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) >= 2  # a text page and the plot


def test_export_bad_paths(tmp_path, master):
    env = sign_report(_report(), master)
    with pytest.raises(ExportError, match="does not exist"):
        export_html(env, tmp_path / "missing" / "r.html")
    with pytest.raises(ExportError, match="directory"):
        export_pdf(env, tmp_path)
    with pytest.raises(ExportError, match="cannot read the envelope"):
        export_html("{not json", tmp_path / "x.html")


def test_plot_marks_fisher_tail_consistently():
    data = plot_data(_report())
    assert stats.chi2.sf(data.observed, data.df) == pytest.approx(1.9e-9, rel=0.2)
