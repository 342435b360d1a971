"""HTML/PDF exports: readable sections for a new-format report and an old one, escaping, the null figure."""

from __future__ import annotations

import base64
import html
import math
import re
from html.parser import HTMLParser

import pytest
from scipy import stats as sps
from tracemark.forensics import stats
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
from tracemark.forensics.reports.export import render_html, sections
from tracemark.forensics.reports.report_plots import null_caption, rank_product_data
from tracemark.forensics.reports.report_sections import NOT_RECORDED, fmt_p

EVIL = "<script>alert(1)</script>"
HEADINGS = (
    "Decision",
    "Pre-registration",
    "Per-account results",
    "Per-pair results",
    "Null distribution of the statistic used",
    "Re-derivation procedure",
    "Signature and verification",
)


def _account(name: str, ranks: list[int], ns: list[int], adjusted: float, rejected: bool) -> dict:
    comb = stats.combine_ranks(ranks, ns)
    return {
        "account": name,
        "suspect": "hf:/models/suspect",
        "p_value": comb.p_value,
        "log10_p": comb.log10_p,
        "adjusted_p_value": adjusted,
        "rejected": rejected,
        "pairs": len(ranks),
        "pairs_total": len(ranks) + 1,
        "statistic": comb.statistic,
        "combination": comb.method,
        "pair_ranks": ranks,
        "pair_p_values": [r / n for r, n in zip(ranks, ns, strict=True)],
        "pair_n_candidates": ns,
    }


def new_report(extra_accounts: int = 0) -> dict:
    """A report shaped like tracemark.forensics.investigate.report builds it (format /2 + new sections)."""
    ns = [999_990, 999_987]
    acme = _account("acme", [1, 2], ns, 4.0e-10, True)
    accounts = [
        acme,
        _account(EVIL, [400_000, 812_000], ns, 1.0, False),
        _account("beta", [70_000, 3_000], ns, 0.62, False),
    ]
    accounts += [
        _account(f"filler{i:03d}", [500_000 + i, 600_000], ns, 1.0, False) for i in range(extra_accounts)
    ]
    return build_report(
        {
            "kind": "tracemark-investigation",
            "investigation_id": "inv-2",
            "suspect": "hf:/models/suspect",
            "suspect_identity": {"kind": "local", "weights_sha256": "ab" * 32},
            "registration": {
                "log_seq": 41,
                "entry_hash": "c3" * 32,
                "logged_at": "2025-05-01T10:00:00Z",
                "suspect_identity": {
                    "weights_sha256": "ab" * 32,
                    "tokenizer_sha256": "cd" * 32,
                    "chat_template_sha256": "ef" * 32,
                },
                "parameters": {
                    "alpha": 0.001,
                    "correction": "holm",
                    "contexts": ["{trigger}"],
                    "seedless": True,
                },
                "accounts": ["acme", "beta", EVIL],
                "family": {"accounts": 3, "suspects": 1, "size": 3},
                "prior": [
                    {
                        "seq": 7,
                        "logged_at": "2025-04-02T09:00:00Z",
                        "investigation_id": "inv-0",
                        "mode": "white-box",
                    },
                    {
                        "seq": 19,
                        "logged_at": "2025-04-20T15:30:00Z",
                        "investigation_id": "inv-1",
                        "mode": "black-box",
                    },
                ],
            },
            "statistics": {
                "combination": {
                    "statistic": "product of the pair p-values rank/N (sum of ln(rank/N))",
                    "method": acme["combination"],
                    "observed": acme["statistic"],
                    "ranks": acme["pair_ranks"],
                    "ns": ns,
                    "account": "acme",
                    "log10_p_value": acme["log10_p"],
                },
                "accounts": accounts,
                "p_value": acme["p_value"],
                "log10_p_value": acme["log10_p"],
                "pairs": [
                    {
                        "pair_id": "pair-acme-1",
                        "account": "acme",
                        "key_version": 1,
                        "rank": 1,
                        "n_candidates": ns[0],
                        "p_value": 1 / ns[0],
                        "method": "exact-search",
                    },
                    {
                        "pair_id": "pair-acme-2",
                        "account": "acme",
                        "key_version": 1,
                        "rank": 2,
                        "n_candidates": ns[1],
                        "p_value": 2 / ns[1],
                        "method": "exact-search",
                    },
                    {"pair_id": "pair-beta-1", "account": "beta", "rank": 70_000, "n_candidates": ns[0]},
                ],
            },
            "decision": {
                "verdict": "detected",
                "attributed_account": "acme",
                "p_value": acme["p_value"],
                "log10_p_value": acme["log10_p"],
                "adjusted_p_value": 4.0e-10,
                "alpha": 0.001,
                "correction": "holm",
                "correction_meaning": stats.correction_meaning("holm"),
                "family_size": 3,
                "accounts_scored": 3,
                "rule": "detected when the Holm-adjusted p-value of an account is <= alpha",
            },
            "rederivation": {
                "steps": ["Obtain the disclosure bundle.", "Check the checkpoint.", "Re-score the suspect."],
                "commands": [
                    "tracemark report reveal inv-2 --account ACCOUNT -o bundle.json",
                    "tracemark rescore bundle.json --suspect hf:PATH --public-key operator.pem",
                ],
            },
        }
    )


def old_report() -> dict:
    """An older report: Fisher statistics with a chi-square plot, no registration or re-derivation."""
    return build_report(
        {
            "suspect_identity": {"endpoint": "http://x/v1", "model": EVIL},
            "decision": {
                "verdict": "detected",
                "alpha": 0.001,
                "p_value": 2e-9,
                "attributed_account": "acme",
            },
            "statistics": {
                "plot": {"observed": 47.0, "null": {"kind": "chi2", "df": 4}},
                "accounts": [
                    {"account": "beta", "fisher_statistic": 3.1, "df": 4, "p_value": 0.54},
                    {"account": "acme", "fisher_statistic": 47.0, "df": 4, "p_value": 2e-9},
                ],
            },
        }
    )


class _Text(HTMLParser):
    """Visible text (outside <style>) and whether the markup parses with balanced tags."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.stack: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in {"meta", "img", "br"}:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()

    def handle_data(self, data):
        if not self.stack or self.stack[-1] != "style":
            self.text.append(data)


def _parse(page: str) -> _Text:
    p = _Text()
    p.feed(page)
    p.close()
    assert not p.stack  # every tag closed
    return p


def test_new_format_html_has_readable_sections(tmp_path, master):
    env = sign_report(new_report(), master)
    res = verify_envelope(env, public_key=master)
    page = export_html(env, tmp_path / "r.html", verification=res).read_text()
    assert page.startswith("<!DOCTYPE html>")
    parsed = _parse(page)
    text = " ".join(parsed.text)
    for h in HEADINGS:
        assert re.search(rf"<h2 id='\w+'>[A-G]\. {re.escape(html.escape(h))}</h2>", page), h
    body = page.split("<body>", 1)[1]
    assert '{"' not in body and "{&quot;" not in body  # no JSON dump anywhere
    # decision in words, with the correction's meaning
    assert "DETECTED. The suspect model ranks the secret signature targets of account acme" in text
    assert "family-wise error rate" in text and "Holm (step-down)" in text
    # the attributed account's row in the per-account table (highlighted), with ranks, N and both p-values
    row = re.search(r"<tr class='focus'>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert cells[0] == "acme" and cells[1] == "2 of 3" and cells[2] == "1, 2"
    assert cells[3] == "999,987–999,990" and cells[6] == "yes"
    assert cells[5] == html.escape(fmt_p(4.0e-10)) == "4 × 10⁻¹⁰"
    # accounts sorted by adjusted p: acme first
    first_row = re.search(
        r"Combined p</th><th>Adjusted p</th><th>Rejected</th></tr><tr[^>]*><td>(.*?)</td>", page
    )
    assert first_row.group(1) == "acme"
    # pre-registration: hashes, and every prior registration with the re-run sentence
    assert "cd" * 32 in text and "ef" * 32 in text
    assert "inv-0" in text and "inv-1" in text and "2025-04-20T15:30:00Z" in text
    assert "re-run of an investigation against this model" in text
    # per-pair table of the attributed account only
    assert "pair-acme-1" in text and "pair-acme-2" in text and "pair-beta-1" not in text
    # re-derivation steps in order, commands verbatim
    assert re.search(r"<ol><li>Obtain the disclosure bundle\.</li><li>Check the checkpoint\.</li>", page)
    assert (
        "<pre><code>tracemark rescore bundle.json --suspect hf:PATH --public-key operator.pem</code></pre>"
        in page
    )
    # signature: key id, report hash and the verification result; the payload for third parties
    assert env["signatures"][0]["keyid"] in text and "VALID" in text
    assert env["payload"] in page
    # the malicious account name is escaped, never markup
    assert EVIL not in page and html.escape(EVIL) in page
    assert "script" not in parsed.tags
    assert not re.search(r"(src|href)=['\"]https?:", page)  # nothing loaded from outside
    img = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert img and base64.b64decode(img.group(1)).startswith(b"\x89PNG")


def test_new_format_plot_is_the_exact_rank_product_null():
    report = new_report()
    rp = rank_product_data(report)
    assert rp is not None and rp.method == "exact" and rp.ns == [999_990, 999_987] and rp.account == "acme"
    # the observed point lies on the exact null curve: log10 P0(product <= observed) = the report's log10 p
    exact = stats.combine_ranks([1, 2], rp.ns)
    assert rp.log10_p == pytest.approx(exact.log10_p)
    caption = null_caption(report)
    assert "exact probability" in caption and "acme" in caption
    png = null_plot_png(report)
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_many_accounts_show_the_top_fifty_and_a_count(master):
    page = render_html(sign_report(new_report(extra_accounts=60), master))
    table = page.split("id='accounts'", 1)[1].split("<h2", 1)[0]
    assert table.count("<tr") == 1 + 50
    assert "… and 13 more accounts" in table


def test_old_format_report_renders_with_not_recorded(tmp_path, master):
    env = sign_report(old_report(), master)
    page = export_html(env, tmp_path / "old.html").read_text()
    text = " ".join(_parse(page).text)
    for h in HEADINGS:
        assert html.escape(h) in page
    assert "Pre-registration: not recorded" in text
    assert "Re-derivation steps: not recorded" in text and "Commands: not recorded" in text
    assert "not performed at export" in text
    assert EVIL not in page and html.escape(EVIL) in page
    assert '{"' not in page.split("<body>", 1)[1]
    assert "chi-square with 4 degrees of freedom" in text  # the old statistic's null
    # the correction's meaning is explained even though the old report did not record it... when known
    report, secs = sections(env)
    decision = dict(secs[0].blocks[1].rows)
    assert decision["What the correction controls"] == NOT_RECORDED  # no correction recorded at all
    assert decision["Attributed account"] == "acme"


def test_empty_report_still_exports(tmp_path, master):
    env = sign_report(build_report({"note": "empty"}), master)
    page = export_html(env, tmp_path / "e.html").read_text()
    _parse(page)
    assert page.count(NOT_RECORDED) >= 8 and "data:image/png;base64," in page
    assert export_pdf(env, tmp_path / "e.pdf").read_bytes().startswith(b"%PDF")


def test_export_pdf_has_text_pages_and_the_figure(tmp_path, master):
    for report in (new_report(extra_accounts=60), old_report()):
        out = export_pdf(sign_report(report, master), tmp_path / "r.pdf")
        data = out.read_bytes()
        assert data.startswith(b"%PDF-")
        assert (
            len(re.findall(rb"/Type\s*/Page\b", data)) >= 3
        )  # text before the figure, the figure, text after


def test_export_bad_paths(tmp_path, master):
    env = sign_report(old_report(), master)
    with pytest.raises(ExportError, match="does not exist"):
        export_html(env, tmp_path / "missing" / "r.html")
    with pytest.raises(ExportError, match="directory"):
        export_pdf(env, tmp_path)
    with pytest.raises(ExportError, match="cannot read the envelope"):
        export_html("{not json", tmp_path / "x.html")


def test_fmt_p_reads_like_a_number():
    assert fmt_p(0.034) == "0.034"
    assert fmt_p(2.1e-9) == "2.1 × 10⁻⁹"
    assert fmt_p(0.0, -3000.5) == "3.2 × 10⁻³⁰⁰¹"  # below the float range: from log10 p
    assert fmt_p(None) == NOT_RECORDED


# --- older reports: the chi-square plot data --------------------------------------------------------
def test_plot_data_rules():
    acme = plot_data(
        build_report(
            {
                "decision": {"attributed_account": "acme"},
                "statistics": {
                    "accounts": [
                        {"account": "beta", "fisher_statistic": 3.1, "df": 4, "p_value": 0.54},
                        {"account": "acme", "fisher_statistic": 47.0, "df": 4, "p_value": 2e-9},
                    ]
                },
            }
        )
    )
    assert acme.kind == "chi2" and acme.df == 4 and acme.observed == 47.0 and "acme" in acme.label
    assert sps.chi2.sf(acme.observed, acme.df) == pytest.approx(1.9e-9, rel=0.2)
    from_ps = plot_data(build_report({"statistics": {"pair_p_values": [0.01, 0.2, 0.5]}}))
    assert from_ps.df == 6
    assert from_ps.observed == pytest.approx(-2 * sum(math.log(p) for p in [0.01, 0.2, 0.5]))
    samples = plot_data(build_report({"statistics": {"null_samples": [1, 2, 3], "observed": 2.5}}))
    assert samples.kind == "samples" and samples.samples == [1, 2, 3]
    spec = plot_data(old_report())
    assert spec.df == 4 and spec.observed == 47
    assert plot_data(build_report({"statistics": "garbage"})) is None
    assert plot_data(build_report({})) is None


@pytest.mark.parametrize(
    "report",
    [
        old_report(),
        build_report({}),
        build_report({"statistics": {"fisher_statistic": "Infinity", "df": 4}}),
        build_report({"statistics": {"null_samples": [0.1] * 50, "observed": 0.1}}),
        build_report({"statistics": {"combination": {"method": "exact", "ns": [10, "x"], "observed": -1}}}),
        build_report(
            {"statistics": {"combination": {"method": "fisher-bound", "ns": [10**6] * 40, "observed": -300}}}
        ),
    ],
)
def test_plot_png_robust(report):
    png = null_plot_png(report)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
