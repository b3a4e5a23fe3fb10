"""Pictures of WIDER FACE results: PR curves per setting, and AP by face subset against a previous run.

Matplotlib is imported here only, and drawn with the Agg canvas directly (no pyplot, no global
backend switch), so this works headless and `import isrn_model.wider_eval` stays light.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from isrn_model.wider_eval.breakdown import WiderBreakdown
from isrn_model.wider_eval.evaluate import WiderResult


def plot_pr_curves(result: WiderResult, path: str | Path, *, label: str = "ISRN") -> Path:
    """Draw precision against recall per setting, AP in the legend, and save to `path` (PNG, PDF, SVG…).

    Thresholds with no detection (precision NaN) are left out of the line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    settings = list(result.pr_curves)
    figure = Figure(figsize=(4.5 * len(settings), 4.2))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(settings), squeeze=False)[0]
    variant = "float IoU" if result.float_iou else "official"
    for ax, setting in zip(axes, settings):
        curve = result.pr_curves[setting]
        keep = np.isfinite(curve[:, 0])
        ax.plot(curve[keep, 1], curve[keep, 0], lw=2, label=f"{label}: {result.ap[setting]:.3f}")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall", ylabel="Precision", title=f"{setting.capitalize()} ({variant})")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def plot_breakdown(
    breakdown: WiderBreakdown,
    path: str | Path,
    *,
    previous: WiderBreakdown | None = None,
    setting: str = "hard",
    label: str = "this evaluation",
    previous_label: str = "previous",
) -> Path:
    """A horizontal bar per face subset: AP of `setting`, beside `previous`'s, saved to `path` (PNG, ...).

    Each row is labelled with its subset and face count; a subset without a face says so instead of
    drawing a bar (its AP is None, not 0). `previous` may come from `WiderBreakdown.from_json`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(breakdown.subsets[setting])
    figure = Figure(figsize=(8.0, 0.32 * len(rows) + 1.4))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    positions = np.arange(len(rows))[::-1]  # first subset on top
    height = 0.38 if previous is not None else 0.7
    current = [breakdown.ap(setting, row) for row in rows]
    ax.barh(positions + (height / 2 if previous is not None else 0), [ap or 0.0 for ap in current], height,
            color="tab:blue", label=label)
    if previous is not None:
        before = [previous.subsets.get(setting, {}).get(row) for row in rows]
        ax.barh(positions - height / 2, [b.ap if b is not None and b.ap is not None else 0.0 for b in before], height,
                color="tab:gray", alpha=0.6, label=previous_label)
    for y, ap in zip(positions, current):
        text = "no face" if ap is None else f"{ap:.3f}"
        ax.text((ap or 0.0) + 0.01, y + (height / 2 if previous is not None else 0), text, va="center", fontsize=7)
    counts = [breakdown.faces(setting, row) for row in rows]
    ax.set_yticks(positions, [f"{row} ({n:,} face{'' if n == 1 else 's'})" for row, n in zip(rows, counts)], fontsize=8)
    ax.set(xlim=(0, 1.12), xlabel=f"{setting.capitalize()} AP",
           title=f"{setting.capitalize()} AP by face subset (a face outside the subset is ignored)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
