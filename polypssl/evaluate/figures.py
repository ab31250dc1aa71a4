"""The paper's Fig. 1 (per-image Dice distributions) and Fig. 2 (relative mDice drop).

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly, never
through pyplot, so the report works headless and leaves the caller's matplotlib state alone.
Each figure is written as PNG and PDF, atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from polypssl import runs

IN_COLOUR = "tab:blue"
CROSS_COLOUR = "tab:red"
FAMILY_COLOURS = {"RN": "tab:blue", "VT": "tab:red"}
OTHER_COLOUR = "tab:gray"


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf``; return both paths."""
    paths = []
    for fmt in ("png", "pdf"):
        path = Path(f"{stem}.{fmt}")
        with runs.atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
        paths.append(path)
    return paths


def _violin(ax, values: np.ndarray, position: float, colour: str, width: float) -> None:
    values = np.asarray(values, dtype=float)
    if len(values) >= 2 and np.ptp(values) > 0:
        parts = ax.violinplot([values], positions=[position], widths=width, showextrema=False)
        for body in parts["bodies"]:
            body.set_facecolor(colour)
            body.set_edgecolor(colour)
            body.set_alpha(0.45)
    elif len(values):  # a density needs spread; a single value is a line
        ax.hlines(values[0], position - width / 2, position + width / 2, colors=colour, lw=2)
    if len(values):
        ax.scatter([position], [values.mean()], marker="o", s=14, color=colour, zorder=3)
        ax.vlines(position, values.min(), values.max(), colors=colour, lw=0.8)


def dice_distributions(
    labels: Sequence[str],
    in_dist: Sequence[np.ndarray],
    cross: Sequence[np.ndarray],
    in_name: str,
    cross_name: str,
    stem: str | Path,
) -> list[Path]:
    """Fig. 1: per model, the per-image Dice on the in-distribution set (blue) and the cross set (red)."""
    n = len(labels)
    fig = _new_figure(max(4.0, 0.75 * n + 1.5), 4.2)
    ax = fig.add_subplot()
    for i in range(n):
        _violin(ax, in_dist[i], i - 0.2, IN_COLOUR, 0.38)
        _violin(ax, cross[i], i + 0.2, CROSS_COLOUR, 0.38)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("per-image Dice")
    ax.grid(axis="y", alpha=0.3)
    handles = [
        ax.scatter([], [], color=IN_COLOUR, marker="s", label=in_name),
        ax.scatter([], [], color=CROSS_COLOUR, marker="s", label=cross_name),
    ]
    ax.legend(handles=handles, loc="lower left", fontsize="small")
    return save_figure(fig, stem)


def relative_drop(
    labels: Sequence[str],
    drops: Sequence[float],
    families: Sequence[str],
    in_name: str,
    cross_name: str,
    stem: str | Path,
    intervals: Sequence[Sequence[float]] | None = None,
) -> list[Path]:
    """Fig. 2: relative mDice drop ``1 - cross/in`` per model (in %), ResNet rows blue, ViT rows red."""
    n = len(labels)
    fig = _new_figure(6.0, max(2.5, 0.35 * n + 1.2))
    ax = fig.add_subplot()
    y = np.arange(n)
    values = 100 * np.asarray(drops, dtype=float)
    colours = [FAMILY_COLOURS.get(f, OTHER_COLOUR) for f in families]
    xerr = None
    if intervals is not None:
        ci = 100 * np.asarray(intervals, dtype=float).reshape(n, 2)
        xerr = np.abs(np.stack([values - ci[:, 0], ci[:, 1] - values]))
    ax.barh(y, values, color=colours, xerr=xerr, error_kw={"lw": 0.8, "capsize": 2})
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"relative mDice drop, {in_name} -> {cross_name} (%)")
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, stem)
