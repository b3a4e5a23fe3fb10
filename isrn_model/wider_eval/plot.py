"""PR curves of a WIDER FACE result, one panel per setting, saved to a file.

Matplotlib is imported here only, and drawn with the Agg canvas directly (no pyplot, no global
backend switch), so this works headless and `import isrn_model.wider_eval` stays light.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
