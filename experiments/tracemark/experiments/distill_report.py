"""Assemble ``tracemark bench distill`` stage files into ``results.json``, ``results.md`` and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import median
from typing import Any

from tracemark.experiments.distill_config import BenchConfig

__all__ = ["assemble", "markdown", "write_report"]


def _meta(root: Path, name: str) -> dict | None:
    path = root / "traces" / f"{name}.jsonl"
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as fh:
        return json.loads(fh.readline())["meta"]


def _student(root: Path, name: str) -> dict | None:
    path = root / "students" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _row(root: Path, name: str, base: dict | None, reference: str) -> dict:
    meta = _meta(root, name) or {}
    student = _student(root, name)
    row: dict[str, Any] = {"set": name, "reference": reference, "traces": meta or None, "student": student}
    if student and base:
        row["gain"] = student["accuracy_forced"] - base["accuracy_forced"]
    return row


def assemble(config: BenchConfig, root: Path) -> dict:
    """Everything the stage files hold, with gains and ratios computed (missing stages are left out)."""
    root = Path(root)
    base = _student(root, "base")
    rows = [_row(root, "clean", base, "clean")]
    rows += [_row(root, m, base, "clean") for m in config.rewrite.methods]
    if config.ads.enabled:
        rows += [
            _row(root, "teacher-standard", base, "teacher-standard"),
            *[_row(root, name, base, "teacher-standard") for name in config.ads.set_names()],
        ]
    gains = {r["set"]: r.get("gain") for r in rows}
    seconds = {r["set"]: (r["traces"] or {}).get("seconds_per_trace") for r in rows}
    semantic_s = seconds.get("semantic")
    standard_s = seconds.get("teacher-standard")
    for r in rows:
        ref_gain = gains.get(r["reference"])
        if r["set"] != r["reference"] and r.get("gain") is not None and ref_gain:
            r["gain_ratio"] = r["gain"] / ref_gain
        cost = seconds.get(r["set"])
        if r["set"].startswith("ads-") and cost is not None and standard_s is not None:
            cost = cost - standard_s  # what the protection adds to generating the trace
            r["protection_seconds_per_trace"] = cost
        elif r["set"] not in ("clean", "teacher-standard"):
            r["protection_seconds_per_trace"] = cost
        if semantic_s and cost is not None and r["set"] not in ("clean", "teacher-standard"):
            r["cost_vs_semantic"] = cost / semantic_s
    watermark = []
    folder = root / "watermark"
    for path in sorted(folder.glob("f*-s*.json")) if folder.exists() else []:
        watermark.append(json.loads(path.read_text()))
    by_fraction: dict[float, list[dict]] = {}
    for run in watermark:
        by_fraction.setdefault(run["fraction"], []).append(run)
    detection = []
    for fraction in sorted(by_fraction):
        runs = by_fraction[fraction]
        distilled = [v for run in runs for v in run["verdicts"] if v["student"] == "distilled"]
        controls = [v for run in runs for v in run["verdicts"] if v["student"] == "control"]
        detection.append(
            {
                "fraction": fraction,
                "runs": len(runs),
                "watermarked_traces": [run["watermarked_traces"] for run in runs],
                "traces": runs[0]["traces"],
                "detected": sum(v["verdict"] == "detected" for v in distilled),
                "attributed": sum(v["attributed_account"] == "distiller" for v in distilled),
                "p_values": [v["p_value"] for v in distilled],
                "control_p_values": [v["p_value"] for v in controls],
                "control_false_alarms": sum(v["verdict"] == "detected" for v in controls),
                "controls": len(controls),
                "bystander_false_alarms": sum(v.get("false_alarms", 0) for v in distilled + controls),
                "bystander_tests": sum(
                    v.get("accounts_tested", 0) - (1 if v["student"] == "distilled" else 0)
                    for v in distilled + controls
                ),
                "seconds": [run["seconds"] for run in runs],
            }
        )
    log = root / "command.txt"
    commands = log.read_text().split("\n") if log.exists() else []
    return {
        "name": config.name,
        "commands": [c for c in commands if c.strip()],
        "config": config.model_dump(mode="json", by_alias=True),
        "base": base,
        "rows": rows,
        "watermark_alpha": config.watermark.alpha,
        "detection": detection,
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def markdown(results: dict) -> str:
    """The README-ready tables."""
    cfg = results["config"]
    s, p = cfg["student"], cfg["problems"]
    base = results.get("base") or {}
    lines = [
        f"### Anti-distillation ({results['name']}: {p['train']} training / {p['test']} held-out "
        f"{p['source']} problems; student {s['model']} {s['method']}, {s['epochs']:g} epoch(s), "
        f"lr {s['lr']:g})",
        "",
        f"Untrained student: answer-forced accuracy {_pct(base.get('accuracy_forced'))}, free "
        f"{_pct(base.get('accuracy_free'))}, held-out clean NLL {_num(base.get('heldout_nll'), '.3f')}.",
        "",
        "| trace set | rewritten / kept by guard | answers preserved | teacher acc. (forced) "
        "| protection s/trace | cost vs semantic | student acc. (forced) | student acc. (free) | clean NLL "
        "| gain (points) "
        "| gain ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        t, st = r["traces"] or {}, r["student"] or {}
        if not t and not st:
            continue
        n = t.get("n", 0)
        rewritten = f"{t['rewritten']}/{n}" if "rewritten" in t else "–"
        preserved = t.get("answer_preserved", t.get("answer_correct"))
        forced = (t.get("teacher_forced") or {}).get("accuracy")
        ratio = r.get("gain_ratio")
        ratio_text = (
            "–"
            if ratio is None
            else f"{ratio:.2f}" + (" (vs teacher-standard)" if r["reference"] != "clean" else "")
        )
        gain_points = None if r.get("gain") is None else 100 * r["gain"]
        lines.append(
            f"| {r['set']} | {rewritten} | {'–' if preserved is None else f'{preserved}/{n}'} "
            f"| {_pct(forced)} "
            f"| {_num(r.get('protection_seconds_per_trace'))} | {_num(r.get('cost_vs_semantic'))} "
            f"| {_pct(st.get('accuracy_forced'))} | {_pct(st.get('accuracy_free'))} "
            f"| {_num(st.get('heldout_nll'), '.3f')} | {_num(gain_points, '+.1f')} "
            f"| {ratio_text} |"
        )
    if results["detection"]:
        w = cfg["watermark"]
        lines += [
            "",
            f"### Watermark detection (tiny students, {w['train']} harvested traces per run, "
            f"{w['pairs_per_account']} pairs × {w['target_digits']} digits per account, "
            f"{w['bystanders'] + 1} accounts, alpha "
            f"{results['watermark_alpha']:g})",
            "",
            "| fraction | watermarked traces | runs | detected (TPR) | attributed | distiller p-values "
            "| control students flagged | bystander false alarms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for d in results["detection"]:
            pv = ", ".join(f"{x:.2g}" for x in d["p_values"])
            lines.append(
                f"| {d['fraction']:g} | {median(d['watermarked_traces']):g} of {d['traces']} | {d['runs']} "
                f"| {d['detected']}/{d['runs']} | {d['attributed']}/{d['runs']} | {pv} "
                f"| {d['control_false_alarms']}/{d['controls']} "
                f"| {d['bystander_false_alarms']}/{d['bystander_tests']} |"
            )
    if results.get("commands"):
        lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in results["commands"])]
    return "\n".join(lines) + "\n"


def _plots(results: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    rows = [r for r in results["rows"] if r["student"]]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = ["untrained"] + [r["set"] for r in rows]
        base = (results.get("base") or {}).get("accuracy_forced", 0.0)
        values = [100 * base] + [100 * r["student"]["accuracy_forced"] for r in rows]
        ax.bar(
            names,
            values,
            color=["#999"] + ["#2a7" if r["set"] in ("clean", "teacher-standard") else "#c54" for r in rows],
        )
        ax.set_ylabel("held-out accuracy, answer-forced (%)")
        ax.set_title("Student accuracy by training trace set")
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        path = folder / "student_accuracy.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    if results["detection"]:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for d in results["detection"]:
            ax.scatter([d["fraction"]] * len(d["p_values"]), d["p_values"], color="#c54", label="distilled")
            ax.scatter(
                [d["fraction"]] * len(d["control_p_values"]),
                d["control_p_values"],
                color="#2a7",
                marker="x",
                label="control",
            )
        ax.axhline(results["watermark_alpha"], color="k", linestyle="--", linewidth=1, label="alpha")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("watermark fraction")
        ax.set_ylabel("investigation p-value")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=8)
        fig.tight_layout()
        path = folder / "detection_pvalues.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def write_report(results: dict, root: Path) -> dict[str, Path]:
    """Write results.json, results.md and the plots; return their paths."""
    root = Path(root)
    (root / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    (root / "results.md").write_text(markdown(results))
    plots = _plots(results, root / "plots")
    return {"json": root / "results.json", "markdown": root / "results.md", **{p.stem: p for p in plots}}
