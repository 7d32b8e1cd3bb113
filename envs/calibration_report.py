"""The calibration report as text (Markdown tables) and as a figure (PNG)."""

from __future__ import annotations

import math


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def format_report(report: dict) -> str:
    """Markdown: fitted and held parameters, held-out validation, the recovery check, the messages."""
    lines = []
    users = report["users"]["counts"]
    data = report["data"]
    lines.append(
        f"Calibrated to {data['kind']} ({data.get('exposure') or ''}); users: {users['train']} train (fit), "
        f"{users['validation']} validation (held out), {users['test']} test (unused)."
    )
    lines += ["", "| parameter | value | s.e. | preset | how |", "| --- | --- | --- | --- | --- |"]
    for name, p in report["parameters"].items():
        how = p["method"] if p["status"] == "fitted" else f"held: {p['reason']}"
        lines.append(
            f"| {name} | {_number(p['value'])} | {_number(p.get('std_error'), 2)} | {_number(p['preset'])} | {how} |"
        )
    validation = report["validation"]
    lines += [
        "",
        f"Held-out validation: {validation['held_out_users']} users, {validation['choices']} choices.",
    ]
    if "log_likelihood" in validation:
        lines += ["", "| model | log-likelihood per choice | total |", "| --- | --- | --- |"]
        for name, ll in validation["log_likelihood"].items():
            lines.append(f"| {name} | {ll['per_choice']:.4f} | {ll['total']:.1f} |")
    ks = validation["ks"]
    notes = validation.get("ks_notes", {})
    lines.append("")
    lines.append(
        f"KS distance, simulated vs held-out ({validation['simulated_users']} simulated users, "
        f"{validation['policy']} policy): session length {_number(ks['session_length'], 3)}"
        + (f" ({notes['session_length']})" if "session_length" in notes else "")
        + f"; click position {_number(ks['click_position'], 3)}"
        + (f" ({notes['click_position']})" if "click_position" in notes else "")
    )
    recovery = report.get("recovery")
    if recovery:
        lines += [
            "",
            f"Sim-to-sim recovery: {recovery['users']} users ({recovery['requests']} requests) on a "
            f"{recovery['world']['items']}-item synthetic world, {recovery['policy']} logging policy, "
            f"truth = the calibrated values; all within ±{recovery['tolerance']:.0%}: {recovery['all_within_10pct']}.",
            "",
            "| parameter | true | fitted | s.e. | relative error | within ±10% |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, p in recovery["parameters"].items():
            lines.append(
                f"| {name} | {_number(p['true'])} | {_number(p['fitted'])} | {_number(p['std_error'], 2)} | "
                + (
                    f"{p['relative_error']:+.1%} | {'yes' if p['within_10pct'] else 'no'} |"
                    if p["within_10pct"] is not None
                    else f"(truth ≈ 0: absolute error {p['absolute_error']:+.3g}) | n/a |"
                )
            )
    if report["messages"]:
        lines += ["", "Parameters kept at their preset value:"]
        lines += [f"- {m}" for m in report["messages"]]
    return "\n".join(lines)


def plot_report(report: dict, path: str) -> None:
    """Three panels: session lengths and click rates by position (simulated vs held-out), recovery."""
    import matplotlib  # plotting only when a figure is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    validation, recovery = report["validation"], report.get("recovery")
    panels = 3 if recovery else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.0))
    lengths = validation["session_length"]
    x = range(len(lengths["held_out"]))
    ax = axes[0]
    ax.bar([i - 0.2 for i in x], lengths["held_out"], width=0.4, label="held-out users", color="#4c72b0")
    ax.bar([i + 0.2 for i in x], lengths["simulated"], width=0.4, label="simulated", color="#dd8452")
    ax.set_xlabel(f"{lengths['unit']}\n(the last bar: {len(lengths['held_out']) - 1} or more)")
    ax.set_ylabel("share of sessions")
    ax.set_title(f"session length (KS {_number(validation['ks']['session_length'], 3)})")
    ax.legend()
    ax = axes[1]
    if "position_ctr" in validation:
        ctr = validation["position_ctr"]
        pos = range(len(ctr["held_out"]))
        ax.bar([p - 0.2 for p in pos], ctr["held_out"], width=0.4, label="held-out users", color="#4c72b0")
        ax.bar([p + 0.2 for p in pos], ctr["simulated"], width=0.4, label="simulated", color="#dd8452")
        ax.set_xlabel("slate position")
        ax.set_ylabel("clicks per impression")
        ax.set_title(f"click rate by position (KS {_number(validation['ks']['click_position'], 3)})")
        ax.legend()
    elif "log_likelihood" in validation:
        names = list(validation["log_likelihood"])
        values = [validation["log_likelihood"][n]["per_choice"] for n in names]
        ax.barh(names, values, color=["#55a868" if n == "model" else "#8c8c8c" for n in names])
        ax.set_xlabel("held-out log-likelihood per choice (higher is better)")
        ax.set_title("held-out choices (no positions logged)")
    if recovery:
        ax = axes[2]
        names = list(recovery["parameters"])
        names = [n for n in names if recovery["parameters"][n]["within_10pct"] is not None]
        ratio = [recovery["parameters"][n]["fitted"] / recovery["parameters"][n]["true"] for n in names]
        err = [
            recovery["parameters"][n]["std_error"] / abs(recovery["parameters"][n]["true"])
            if recovery["parameters"][n]["std_error"] == recovery["parameters"][n]["std_error"]
            else 0.0
            for n in names
        ]
        ax.axvspan(0.9, 1.1, color="#c7e9c0", label="±10%")
        ax.errorbar(
            ratio, range(len(names)), xerr=err, fmt="o", color="#333333", label="fitted / true (±1 s.e.)"
        )
        ax.set_yticks(range(len(names)), names)
        ax.axvline(1.0, color="#2ca02c", lw=1)
        ax.set_xlabel("fitted / true")
        ax.set_title("sim-to-sim recovery")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
