"""The report's plots: success per evaluation, training curves and the world gate, written as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lerobot_policy_world_modality.memory_modes import MemoryMode
from world_modality.atomic_io import atomic_path
from world_modality.report.readcheck import GATE_OPEN, GATE_SHUT, GATE_TAG
from world_modality.report.results import Curves, natural_order


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any | None, path: Path) -> Path | None:
    """Write the figure atomically; None (nothing to plot) writes nothing."""
    if fig is None:
        return None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


# Fixed colours per memory mode, so the same mode reads the same in every report; "own": a record without a
# recorded mode (the checkpoint's own).
MODE_COLOURS = {
    "own": "tab:blue",
    MemoryMode.PRED: "tab:blue",
    MemoryMode.NONE: "tab:gray",
    MemoryMode.ZERO: "tab:red",
    MemoryMode.SHUFFLE: "tab:orange",
    MemoryMode.OTHER: "tab:purple",
    MemoryMode.RANDOM: "tab:brown",
    MemoryMode.SIGNFLIP: "tab:pink",
    MemoryMode.ORACLE: "tab:green",
}


def success_figure(overall: list[dict[str, Any]], mode: dict[str, str | None]) -> Any:
    """One horizontal bar per evaluation (report order, top to bottom), coloured by its rollout memory mode,
    with its Wilson interval and "rate (successes/episodes)": readable at 40+ evaluations."""
    plt = _pyplot()
    labels = [r["arm"] for r in overall]
    modes = [mode.get(label) or "own" for label in labels]
    fig, ax = plt.subplots(figsize=(8.0, 1.2 + 0.3 * len(labels)))
    y = list(range(len(labels)))
    err = [[r["rate"] - r["ci_low"] for r in overall], [r["ci_high"] - r["rate"] for r in overall]]
    ax.barh(y, [r["rate"] for r in overall], xerr=err, capsize=2, alpha=0.85, color=[MODE_COLOURS[m] for m in modes])
    for k, r in enumerate(overall):
        ax.text(r["ci_high"] + 0.015, k, f"{r['rate']:.1%} ({r['successes']}/{r['n']})", va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlim(0, 1.25)
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel("success rate (Wilson 95% CI)")
    ax.set_title("Closed-loop success per evaluation")
    ax.grid(axis="x", alpha=0.3)
    present = list(dict.fromkeys(modes))
    handles = [plt.Rectangle((0, 0), 1, 1, color=MODE_COLOURS[m], alpha=0.85) for m in present]
    ax.legend(
        handles,
        present,
        title="memory at rollout",
        fontsize=7,
        title_fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
    )  # beside the bars: inside it would cover their labels
    return fig


def _runs_by_arm(curves: Curves) -> dict[str, list[str]]:
    """``arm -> its runs`` ("<arm> seed <k>"), arms in natural order (E0 before E0-state, E2 before E10)."""
    arms: dict[str, list[str]] = {}
    for run in curves:
        arms.setdefault(run.rsplit(" seed ", 1)[0], []).append(run)
    return {arm: arms[arm] for arm in sorted(arms, key=natural_order)}


def curve_figure(curves: Curves, tags: Sequence[str], magnitude: bool = False) -> Any | None:
    """One panel per tag that some run logged; one colour per arm, its seeds alike, and one legend entry per arm
    beside the panels (dozens of runs stay legible). Log scale where every value is positive (losses span
    orders of magnitude); ``magnitude`` plots |value|, which the gate's read-check judges. None when no run
    logged any of the tags."""
    plt = _pyplot()
    present = [t for t in tags if any(t in c for c in curves.values())]
    if not present:
        return None
    arms = {
        arm: runs for arm, runs in _runs_by_arm(curves).items() if any(t in curves[r] for r in runs for t in present)
    }
    tab20 = plt.get_cmap("tab20").colors
    palette = tab20[0::2] + tab20[1::2]  # ten distinct hues first, then their light shades
    styles = {
        arm: {"color": palette[k % len(palette)], "linestyle": "-" if k < len(palette) else "--"}
        for k, arm in enumerate(arms)
    }
    fig, axes = plt.subplots(1, len(present), figsize=(max(6.5, 4.5 * len(present)), 3.6), squeeze=False)
    for ax, tag in zip(axes[0], present):
        values_seen: list[float] = []
        for arm, runs in arms.items():
            for run in (r for r in runs if tag in curves[r]):
                steps, values = curves[run][tag]
                values = [abs(v) for v in values] if magnitude else list(values)
                values_seen += values
                ax.plot(
                    steps, values, linewidth=1, marker="o" if len(steps) < 30 else None, markersize=3, **styles[arm]
                )
        if values_seen and (min(values_seen) > 0 or (magnitude and max(values_seen) > 0)):
            ax.set_yscale("log")  # a log axis leaves out non-positive points (a gate's exact 0 at step 0)
        ax.set_title(f"|{tag}|" if magnitude else tag)
        ax.set_xlabel("step")
    handles = [plt.Line2D([], [], linewidth=1, **style) for style in styles.values()]
    fig.legend(
        handles,
        list(styles),
        loc="upper left",
        bbox_to_anchor=(1.0, 0.95),
        fontsize=7,
        title="arm (all seeds)",
        title_fontsize=7,
        ncol=1 + len(styles) // 25,
    )
    fig.tight_layout()
    return fig


def gate_figure(curves: Curves) -> Any | None:
    """|tanh(gate)| over training on a log scale, with the read-check's open and shut thresholds marked."""
    fig = curve_figure(curves, (GATE_TAG,), magnitude=True)
    if fig is None:
        return None
    ax = fig.axes[0]
    ax.axhline(GATE_OPEN, color="black", linestyle=":", linewidth=1)
    ax.axhline(GATE_SHUT, color="black", linestyle="--", linewidth=1)
    for value, name, side in ((GATE_OPEN, "open", "bottom"), (GATE_SHUT, "shut", "top")):
        ax.text(1.0, value, f"{name} ({value:g})", transform=ax.get_yaxis_transform(), fontsize=7, va=side, ha="right")
    ax.set_ylabel("|tanh(gate)| (read-check thresholds)")
    return fig
