"""Assemble ``tracemark bench distill`` stage files into ``results.json``, ``results.md`` and plots.

Every row of the anti-distillation table pools its students over the config's seeds; the statistics
(intervals, gain ratios, paired tests, Holm) are :mod:`tracemark.experiments.distill_stats`'s.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean, median
from typing import Any

from scipy.stats import beta
from tracemark.experiments.detectability import detectability
from tracemark.experiments.distill_config import BenchConfig
from tracemark.experiments.distill_stats import RowStats, table_stats

__all__ = ["assemble", "markdown", "write_report"]


def _meta(root: Path, name: str, seed: int) -> dict | None:
    path = root / "traces" / f"{name}-s{seed}.jsonl"
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as fh:
        return json.loads(fh.readline())["meta"]


def _traces(root: Path, name: str, seed: int) -> list[str] | None:
    path = root / "traces" / f"{name}-s{seed}.jsonl"
    if not path.exists():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [json.loads(line)["trace"] for line in lines if line.strip()]


def _student(root: Path, name: str, seed: int | None) -> dict | None:
    path = root / "students" / (f"{name}.json" if seed is None else f"{name}-s{seed}.json")
    return json.loads(path.read_text()) if path.exists() else None


def _reference(name: str) -> str:
    """The trace set a row's protection is measured against (ADS rows: the same teacher's plain decoding)."""
    source = name.split("+", 1)[0]
    return "teacher-standard" if source.startswith("ads-") else "clean"


def _detect(root: Path, name: str, seeds: list[int], bootstrap: int) -> dict | None:
    ref = _reference(name) if "+" not in name or not name.startswith("clean") else "clean"
    clean, protected, groups = [], [], []
    for k, seed in enumerate(seeds):
        a, b = _traces(root, ref, seed), _traces(root, name, seed)
        if a is None or b is None or len(a) != len(b):
            continue
        clean += a
        protected += b
        groups += [k * 1_000_000 + i for i in range(len(a))]
    if len(clean) < 10:
        return None
    d = detectability(clean, protected, bootstrap=bootstrap, groups=groups)
    return {k: d[k] for k in ("n_problems", "pooled_auc", "pooled_auc_bootstrap95", "identical_pairs")}


def _row_info(root: Path, name: str, seeds: list[int]) -> dict:
    metas = [m for s in seeds if (m := _meta(root, name, s))]
    info: dict[str, Any] = {"set": name, "trace_sets": len(metas)}
    if not metas:
        return info
    n = sum(m.get("n", 0) for m in metas)
    info["n_traces"] = n
    if any("rewritten" in m for m in metas):
        info["rewritten"] = sum(m.get("rewritten", 0) for m in metas)
        info["answer_preserved"] = sum(m.get("answer_preserved", 0) for m in metas)
        info["guards"] = {}
        for m in metas:
            for k, v in (m.get("guards") or {}).items():
                info["guards"][k] = info["guards"].get(k, 0) + v
    if any("changed" in m for m in metas):
        info["changed_by_countermeasure"] = sum(m["changed"] for m in metas)
        info["countermeasure_seconds_per_trace"] = mean(m["countermeasure_seconds_per_trace"] for m in metas)
    info["answer_correct"] = sum(m.get("answer_correct", 0) for m in metas)
    seconds = [m["seconds_per_trace"] for m in metas if m.get("seconds_per_trace") is not None]
    if seconds:
        info["seconds_per_trace"] = mean(seconds)
        info["seconds_per_trace_by_seed"] = seconds
    utility = next((m["teacher_utility"] for m in metas if m.get("teacher_utility")), None)
    if utility:
        info["teacher_utility"] = {k: v for k, v in utility.items() if k != "outcomes"}
    return info


def _stats_dict(st: RowStats | None) -> dict | None:
    if st is None:
        return None
    return {
        "seeds": st.seeds,
        "problems": st.problems,
        "accuracy": st.accuracy,
        "ci95": list(st.ci95),
        "per_seed": st.per_seed,
        "gain": st.gain,
        "gain_ci95": None if st.gain_ci95 is None else list(st.gain_ci95),
        "gain_ratio": st.gain_ratio,
        "gain_ratio_ci95": None if st.gain_ratio_ci95 is None else list(st.gain_ratio_ci95),
        "tests": [
            {
                "reference": t.reference,
                "difference": t.difference,
                "p": t.p_value,
                "p_holm": t.p_holm,
                "significant": t.significant,
                "wins": t.wins,
                "losses": t.losses,
            }
            for t in st.tests
        ],
    }


def _detection(root: Path, config: BenchConfig) -> list[dict]:
    folder = root / "watermark"
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("f*-s*.json"))] if folder.exists() else []
    by_fraction: dict[float, list[dict]] = {}
    for run in runs:
        by_fraction.setdefault(run["fraction"], []).append(run)
    out = []
    for fraction in sorted(by_fraction):
        group = by_fraction[fraction]
        distilled = [v for run in group for v in run["verdicts"] if v["student"] == "distilled"]
        controls = [v for run in group for v in run["verdicts"] if v["student"] == "control"]
        bystander_alarms = sum(v.get("false_alarms", 0) for v in distilled)
        bystander_tests = sum(v.get("accounts_tested", 0) - 1 for v in distilled)
        control_alarms = sum(v.get("false_alarms", 0) for v in controls)
        control_tests = sum(v.get("accounts_tested", 0) for v in controls)
        out.append(
            {
                "fraction": fraction,
                "runs": len(group),
                "watermarked_traces": [run["watermarked_traces"] for run in group],
                "traces": group[0]["traces"],
                "detected": sum(v["verdict"] == "detected" for v in distilled),
                "attributed": sum(v["attributed_account"] == "distiller" for v in distilled),
                "p_values": [v["p_value"] for v in distilled],
                "control_p_values": [v["p_value"] for v in controls],
                "control_false_alarms": sum(v["verdict"] == "detected" for v in controls),
                "controls": len(controls),
                # Bystanders (accounts never distilled) tested on the distilled students only; tests of
                # accounts on control students are counted apart.
                "bystander_false_alarms": bystander_alarms,
                "bystander_tests": bystander_tests,
                "control_account_false_alarms": control_alarms,
                "control_account_tests": control_tests,
                "seconds": [run["seconds"] for run in group],
            }
        )
    return out


def assemble(config: BenchConfig, root: Path) -> dict:
    """Everything the stage files hold, with the table's statistics (missing students are left out)."""
    root = Path(root)
    seeds = list(config.seeds)
    base = _student(root, "base", None)
    names = config.student_sets()
    outcomes: dict[str, list[list[bool]]] = {}
    students: dict[str, list[dict]] = {}
    for name in names:
        found = [st for s in seeds if (st := _student(root, name, s))]
        students[name] = found
        if len(found) == len(seeds):  # a row is scored only with all its seeds
            outcomes[name] = [st["outcomes_free"] for st in found]
    stats: dict[str, RowStats] = {}
    if base and "clean" in outcomes:
        outcomes_all = {"base": [base["outcomes_free"]], **outcomes}
        refs = {n: ["base"] + ([_reference(n)] if n != _reference(n) else []) for n in outcomes}
        if "clean" in outcomes:
            refs["clean"] = ["base"]
        s = config.stats
        stats = table_stats(
            outcomes_all,
            base="base",
            clean="clean",
            references=refs,
            alpha=s.alpha,
            bootstrap=s.bootstrap,
            permutations=s.permutations,
        )
        if "teacher-standard" in outcomes:  # ADS rows: gain ratio against the same teacher's plain traces
            ads = {
                k: v for k, v in outcomes_all.items() if _reference(k) == "teacher-standard" or k == "base"
            }
            ads_stats = table_stats(
                ads, base="base", clean="teacher-standard", references={}, bootstrap=s.bootstrap
            )
            for k, st in ads_stats.items():
                if k in stats and k not in ("base", "teacher-standard"):
                    stats[k].gain_ratio, stats[k].gain_ratio_ci95 = st.gain_ratio, st.gain_ratio_ci95
    rows = []
    for name in names:
        info = _row_info(root, name, seeds)
        info["reference"] = _reference(name)
        info["students"] = len(students[name])
        info["stats"] = _stats_dict(stats.get(name))
        if name != "clean" and name != "teacher-standard":
            info["detectability"] = _detect(root, name, seeds, config.stats.bootstrap)
        rows.append(info)
    log = root / "command.txt"
    commands = log.read_text().split("\n") if log.exists() else []
    return {
        "name": config.name,
        "commands": [c for c in commands if c.strip()],
        "config": config.model_dump(mode="json", by_alias=True),
        "base": None
        if base is None
        else {"accuracy": base["accuracy_free"], "stats": _stats_dict(stats.get("base"))},
        "rows": rows,
        "alpha": config.stats.alpha,
        "watermark_alpha": config.watermark.alpha,
        "detection": _detection(root, config),
    }


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _ci(ci: list[float] | None, scale: float = 100, fmt: str = ".1f") -> str:
    if not ci or any(c is None or math.isnan(c) for c in ci):
        return ""
    return f" [{scale * ci[0]:{fmt}}, {scale * ci[1]:{fmt}}]"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _significance(st: dict | None) -> str:
    """E.g. '< clean*, > untrained*' (``*``: significant after Holm; '≈': not significant)."""
    if not st:
        return "–"
    words = []
    for t in st["tests"]:
        ref = "untrained" if t["reference"] == "base" else t["reference"]
        if t["significant"]:
            words.append(f"{'<' if t['difference'] < 0 else '>'} {ref}*")
        else:
            words.append(f"≈ {ref}")
    return ", ".join(words) or "–"


def _p(st: dict | None, reference: str) -> str:
    for t in (st or {}).get("tests", []):
        if t["reference"] == reference:
            return f"{100 * t['difference']:+.1f} (p={t['p_holm']:.2g})"
    return "–"


def _upper_rate(k: int, n: int) -> float:
    return 1.0 if n == 0 else float(beta.ppf(0.975, k + 1, n - k)) if k < n else 1.0


def markdown(results: dict) -> str:
    """The README-ready tables."""
    cfg = results["config"]
    s, p = cfg["student"], cfg["problems"]
    seeds = cfg["seeds"]
    split = (
        f"held-out templates ({p['difficulty']})"
        if p["source"] == "generated" and p["templates"] == "heldout"
        else (
            f"GSM8K train lines {p['test_lines'][0]}–{p['test_lines'][1] - 1}"
            if p["source"] == "gsm8k"
            else p["source"]
        )
    )
    base = results.get("base") or {}
    base_ci = ((base.get("stats") or {}).get("ci95")) if base else None
    lines = [
        f"### Anti-distillation ({results['name']}: {p['train']} training problems per seed, {p['test']} "
        f"held-out problems, {split}; student {s['model']} {s['method']}, {s['epochs']:g} epoch(s), lr "
        f"{s['lr']:g}; seeds {', '.join(map(str, seeds))})",
        "",
        f"Untrained student: accuracy {_pct(base.get('accuracy'))}%{_ci(base_ci)}. Accuracy = the student's "
        "own final answer (free generation), mean over seeds, 95% two-level bootstrap interval (problems, "
        "seeds). "
        f"Paired sign-flip tests per problem, Holm-corrected over the table (alpha {results['alpha']:g}); "
        "`*` = significant.",
        "",
        "| trace set | rewritten (answers kept) | s/trace | teacher utility, answer line removed | "
        "readability NLL | detect AUC | student acc. % [95% CI] | per seed | gain pts [95% CI] | "
        "gain ratio [95% CI] | Δ vs clean (p Holm) | Δ vs untrained (p Holm) | significant |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        st = r.get("stats")
        if not r.get("trace_sets") and not st:
            continue
        n = r.get("n_traces", 0)
        if "rewritten" in r:
            kept = f"{r['rewritten']}/{n} ({r['answer_preserved']}/{n})"
        elif "changed_by_countermeasure" in r:
            kept = f"cleanup changed {r['changed_by_countermeasure']}/{n} ({r['answer_correct']}/{n})"
        else:
            kept = f"– ({r.get('answer_correct', 0)}/{n})"
        cost = r.get("countermeasure_seconds_per_trace", r.get("seconds_per_trace"))
        u = r.get("teacher_utility") or {}
        utility = f"{_pct(u.get('accuracy'))}%{_ci(u.get('ci95'))}" if u else "–"
        d = r.get("detectability") or {}
        auc = f"{d['pooled_auc']:.2f}{_ci(d['pooled_auc_bootstrap95'], 1, '.2f')}" if d else "–"
        acc = f"{_pct(st['accuracy'])}{_ci(st['ci95'])}" if st else "–"
        per_seed = ", ".join(_pct(x) for x in st["per_seed"]) if st else "–"
        gain = f"{100 * st['gain']:+.1f}{_ci(st['gain_ci95'])}" if st and st["gain"] is not None else "–"
        ratio = (
            f"{st['gain_ratio']:.2f}{_ci(st['gain_ratio_ci95'], 1, '.2f')}"
            if st and st["gain_ratio"] is not None
            else "–"
        )
        lines.append(
            f"| {r['set']} | {kept} | {_num(cost, '.4f')} | {utility} "
            f"| {_num(u.get('readability_nll'), '.3f')} "
            f"| {auc} | {acc} | {per_seed} | {gain} | {ratio} | {_p(st, r['reference'])} | {_p(st, 'base')} "
            f"| {_significance(st)} |"
        )
    if results["detection"]:
        w = cfg["watermark"]
        lines += [
            "",
            f"### Watermark detection (tiny students, {w['train']} harvested traces per run, "
            f"{w['pairs_per_account']} pairs × {w['target_digits']} digits per account, "
            f"{w['bystanders'] + 1} accounts, alpha {results['watermark_alpha']:g})",
            "",
            "| fraction | watermarked traces | runs | detected (TPR) | attributed | distiller p-values "
            "| control students flagged | bystander false alarms (95% upper bound) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for d in results["detection"]:
            pv = ", ".join(f"{x:.2g}" for x in d["p_values"])
            k, n = d["bystander_false_alarms"], d["bystander_tests"]
            lines.append(
                f"| {d['fraction']:g} | {median(d['watermarked_traces']):g} of {d['traces']} | {d['runs']} "
                f"| {d['detected']}/{d['runs']} | {d['attributed']}/{d['runs']} | {pv} "
                f"| {d['control_false_alarms']}/{d['controls']} "
                f"| {k}/{n} (≤ {100 * _upper_rate(k, n):.1f}%) |"
            )
    if results.get("commands"):
        lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in results["commands"])]
    return "\n".join(lines) + "\n"


def _plots(results: dict, folder: Path) -> list[Path]:
    import matplotlib  # deferred: matplotlib is only needed for the report's plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after choosing the Agg backend

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    rows = [r for r in results["rows"] if r.get("stats")]
    base = results.get("base") or {}
    if rows and base.get("stats"):
        fig, ax = plt.subplots(figsize=(8, 3.8))
        entries = [("untrained", base["stats"])] + [(r["set"], r["stats"]) for r in rows]
        xs = range(len(entries))
        values = [100 * st["accuracy"] for _, st in entries]
        low = [100 * (st["accuracy"] - st["ci95"][0]) for _, st in entries]
        high = [100 * (st["ci95"][1] - st["accuracy"]) for _, st in entries]
        colours = ["#999"] + [
            "#2a7" if n in ("clean", "teacher-standard") else ("#d94" if "+" in n else "#c54")
            for n, _ in entries[1:]
        ]
        ax.bar(xs, values, yerr=[low, high], color=colours, capsize=3)
        ax.set_xticks(list(xs), [n for n, _ in entries], rotation=30, ha="right")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title("Student accuracy by training trace set (95% CI)")
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
        unique = dict(zip(labels, handles, strict=True))
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
