"""``report.json`` and ``report.md`` of an A/B test (arms, comparisons, srm_p_value; README.md, "Command line")."""

from __future__ import annotations

import json
import math
from typing import Any

from rayrec import storage
from rayrec.ab.analysis import AbAnalysis

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def _num(value: float | None) -> float | None:
    """JSON has no NaN: undefined numbers (a relative lift over a zero control mean) become null."""
    return None if value is None or not math.isfinite(value) else float(value)


def report_dict(analysis: AbAnalysis, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``report.json`` document.

    ``arms`` → {name: {users, policy, weight, means, ci95}}; ``comparisons`` → [{metric, control,
    treatment, lift, ci95, p_value, relative_lift, relative_ci95, method, sequential_p_value,
    significant}]; ``srm_p_value``; plus ``alpha``, ``control``, ``notes`` and ``extra``.
    """
    return {
        "control": analysis.control,
        "alpha": analysis.alpha,
        "arms": {
            arm.name: {
                "users": arm.users,
                "policy": arm.policy,
                "weight": arm.weight,
                "means": {m: _num(v) for m, v in arm.means.items()},
                "ci95": {m: [_num(lo), _num(hi)] for m, (lo, hi) in arm.ci95.items()},
            }
            for arm in analysis.arms
        },
        "comparisons": [
            {
                "metric": c.metric,
                "control": c.control,
                "treatment": c.treatment,
                "lift": _num(c.lift),
                "ci95": [_num(c.ci95[0]), _num(c.ci95[1])],
                "p_value": _num(c.p_value),
                "relative_lift": _num(c.relative_lift),
                "relative_ci95": [_num(c.relative_ci95[0]), _num(c.relative_ci95[1])],
                "method": c.method,
                "sequential_p_value": _num(c.sequential_p_value),
                "significant": c.p_value < analysis.alpha,
            }
            for c in analysis.comparisons
        ],
        "srm_p_value": _num(analysis.srm_p_value),
        "sequential_tau_sd": analysis.sequential_tau_sd,
        "notes": analysis.notes,
        **(extra or {}),
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def report_markdown(analysis: AbAnalysis, title: str = "A/B test", plots: list[str] | None = None) -> str:
    """A human-readable summary: arms, comparisons with CIs and p-values, the SRM check, plots."""
    level = f"{(1 - analysis.alpha) * 100:g}%"
    lines = [f"# {title}", ""]
    lines += [
        f"Control: **{analysis.control}**. Intervals are {level}; significant means p < {analysis.alpha:g}.",
        "",
    ]
    lines += ["## Arms", "", "| arm | policy | weight | users | " + " | ".join(analysis.arms[0].means) + " |"]
    lines += ["| --- " * (4 + len(analysis.arms[0].means)) + "|"]
    for arm in analysis.arms:
        cells = [f"{_fmt(arm.means[m])} [{_fmt(arm.ci95[m][0])}, {_fmt(arm.ci95[m][1])}]" for m in arm.means]
        lines.append(
            f"| {arm.name} | {arm.policy} | {arm.weight:g} | {arm.users} | " + " | ".join(cells) + " |"
        )
    lines += ["", "## Comparisons", ""]
    lines += [
        "| metric | treatment | lift | CI | relative lift | relative CI | p-value | always-valid p | method |"
    ]
    lines += ["| --- " * 9 + "|"]
    for c in analysis.comparisons:
        mark = " **significant**" if c.p_value < analysis.alpha else ""
        lines.append(
            f"| {c.metric} | {c.treatment} | {_fmt(c.lift)} | [{_fmt(c.ci95[0])}, {_fmt(c.ci95[1])}] | "
            f"{_fmt(100 * c.relative_lift, 3)}% | [{_fmt(100 * c.relative_ci95[0], 3)}%, "
            f"{_fmt(100 * c.relative_ci95[1], 3)}%] | {_fmt(c.p_value, 3)}{mark} | "
            f"{_fmt(c.sequential_p_value, 3)} | {c.method} |"
        )
    lines += ["", "## Checks", ""]
    lines.append(
        f"- Sample ratio mismatch: chi-square p = {_fmt(analysis.srm_p_value, 3)} "
        f"({'MISMATCH' if analysis.srm_p_value < 0.001 else 'ok'}; alarm below 0.001)."
    )
    if analysis.sequential_tau_sd is not None:
        lines.append(
            f"- Always-valid p-values: mSPRT with a normal mixture of sd {analysis.sequential_tau_sd:g} x the pooled "
            "per-user sd (valid however often the experiment was looked at)."
        )
    lines += [f"- {note}" for note in analysis.notes]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(
    analysis: AbAnalysis, out_dir: str, *, extra: dict[str, Any] | None = None, plots: list[str] | None = None
) -> tuple[str, str]:
    """Write ``report.json`` and ``report.md`` under ``out_dir``, and the Markdown with its plots embedded as
    one self-contained ``report.html`` (:mod:`rayrec.html_report`); returns the JSON's and Markdown's URIs."""
    from rayrec.html_report import write_html_report

    json_uri, md_uri = storage.join(out_dir, REPORT_JSON), storage.join(out_dir, REPORT_MD)
    storage.write_text(json_uri, json.dumps(report_dict(analysis, extra), indent=2) + "\n")
    markdown = report_markdown(analysis, plots=plots)
    storage.write_text(md_uri, markdown)
    write_html_report(markdown, storage.join(out_dir, REPORT_HTML), title="rayrec A/B test")
    return json_uri, md_uri
