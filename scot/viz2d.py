"""Match visualisation: two images side by side, matches as lines, keypoints numbered.

Uses matplotlib's object API on the Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure

from .io import atomic_write_bytes

GAP = 10  # pixels between the two images


def _to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        arr = image.detach().float().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3):
            arr = arr.transpose(1, 2, 0)
    else:
        arr = np.asarray(image, dtype=np.float32)
        if arr.max(initial=0) > 1.0:
            arr = arr / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.clip(arr, 0.0, 1.0)


def position_colours(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """Colour each source point by where it is: hue follows x, brightness follows y.

    Correct matches then form smooth colour fields in the target; wrong ones stand out.
    """
    if len(points) == 0:
        return np.zeros((0, 3))
    hue = np.clip(points[:, 0] / max(width, 1.0), 0, 1) * 0.85
    val = 0.55 + 0.45 * (1 - np.clip(points[:, 1] / max(height, 1.0), 0, 1))
    hsv = np.stack([hue, np.full_like(hue, 0.85), val], axis=1)
    return hsv_to_rgb(hsv)


KEYPOINT_COLOURS = np.array([
    [0.90, 0.10, 0.29], [0.24, 0.71, 0.29], [1.00, 0.88, 0.10], [0.00, 0.51, 0.78], [0.96, 0.51, 0.19],
    [0.57, 0.12, 0.71], [0.27, 0.94, 0.94], [0.94, 0.20, 0.90], [0.82, 0.96, 0.24], [0.98, 0.75, 0.83],
    [0.00, 0.50, 0.50], [0.86, 0.75, 1.00], [0.67, 0.43, 0.16], [1.00, 0.98, 0.78], [0.50, 0.00, 0.00],
    [0.67, 1.00, 0.76], [0.50, 0.50, 0.00], [1.00, 0.84, 0.71], [0.00, 0.00, 0.50], [0.50, 0.50, 0.50],
])


def plot_matches(
    src_image: torch.Tensor | np.ndarray,
    trg_image: torch.Tensor | np.ndarray,
    matches: np.ndarray | torch.Tensor | None = None,
    src_keypoints: np.ndarray | torch.Tensor | None = None,
    trg_keypoints: np.ndarray | torch.Tensor | None = None,
    gt_keypoints: np.ndarray | torch.Tensor | None = None,
    title: str | None = None,
    subtitle: str | None = None,
    path: str | Path | None = None,
    dpi: int = 120,
) -> Figure:
    """Draw ``matches`` (k, ≥4: src_x, src_y, trg_x, trg_y[, conf]) between two images.

    Keypoints ``src_keypoints[k]`` and ``trg_keypoints[k]`` are drawn as numbered dots in
    the same colour; optional ``gt_keypoints`` are drawn as hollow circles joined to the
    prediction.  All coordinates are in the images' own pixels.  Saves to ``path`` if given.
    """
    a, b = _to_hwc(src_image), _to_hwc(trg_image)
    ha, wa = a.shape[:2]
    hb, wb = b.shape[:2]
    # Show both at the same height.
    scale_b = ha / hb
    wb_s = wb * scale_b
    canvas_w = wa + GAP + wb_s
    fig_h = 5.0
    fig = Figure(figsize=(fig_h * canvas_w / ha, fig_h + (0.45 if title or subtitle else 0.0)), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, fig_h / (fig_h + (0.45 if title or subtitle else 0.0))))
    ax.imshow(a, extent=(0, wa, ha, 0), interpolation="bilinear")
    ax.imshow(b, extent=(wa + GAP, wa + GAP + wb_s, ha, 0), interpolation="bilinear")
    ax.set_xlim(0, canvas_w)
    ax.set_ylim(ha, 0)
    ax.axis("off")

    def to_b(xy: np.ndarray) -> np.ndarray:
        return np.stack([wa + GAP + xy[:, 0] * scale_b, xy[:, 1] * scale_b], axis=1)

    if matches is not None and len(matches):
        m = np.asarray(matches.cpu() if isinstance(matches, torch.Tensor) else matches, dtype=np.float64)
        colours = position_colours(m[:, :2], wa, ha)
        conf = m[:, 4] if m.shape[1] > 4 else np.ones(len(m))
        alpha = 0.35 + 0.6 * (conf - conf.min()) / max(np.ptp(conf), 1e-12)
        tb = to_b(m[:, 2:4])
        for (sx, sy), (tx, ty), c, al in zip(m[:, :2], tb, colours, alpha):
            ax.plot([sx, tx], [sy, ty], color=c, lw=0.9, alpha=float(al), solid_capstyle="round")
        ax.scatter(m[:, 0], m[:, 1], s=7, c=colours, linewidths=0, zorder=3)
        ax.scatter(tb[:, 0], tb[:, 1], s=7, c=colours, linewidths=0, zorder=3)

    if src_keypoints is not None and trg_keypoints is not None and len(src_keypoints):
        sk = np.asarray(src_keypoints.cpu() if isinstance(src_keypoints, torch.Tensor) else src_keypoints, dtype=np.float64)
        tk = to_b(np.asarray(trg_keypoints.cpu() if isinstance(trg_keypoints, torch.Tensor) else trg_keypoints, dtype=np.float64))
        gk = None
        if gt_keypoints is not None:
            gk = to_b(np.asarray(gt_keypoints.cpu() if isinstance(gt_keypoints, torch.Tensor) else gt_keypoints, dtype=np.float64))
        for k, ((sx, sy), (tx, ty)) in enumerate(zip(sk, tk)):
            col = KEYPOINT_COLOURS[k % len(KEYPOINT_COLOURS)]
            if gk is not None:
                ax.plot([tx, gk[k, 0]], [ty, gk[k, 1]], color=col, lw=1.2, ls=":", zorder=4)
                ax.scatter([gk[k, 0]], [gk[k, 1]], s=60, facecolors="none", edgecolors=[col], linewidths=1.6, zorder=5)
            for x, y in ((sx, sy), (tx, ty)):
                ax.scatter([x], [y], s=70, c=[col], edgecolors="black", linewidths=0.8, zorder=6)
                ax.annotate(str(k), (x, y), xytext=(5, -5), textcoords="offset points", fontsize=8, fontweight="bold",
                            color="white", zorder=7,
                            bbox=dict(boxstyle="round,pad=0.15", fc=col * 0.6, ec="none", alpha=0.85))

    if title or subtitle:
        text = title or ""
        if subtitle:
            text = f"{text}\n{subtitle}" if text else subtitle
        fig.text(0.005, 0.995, text, ha="left", va="top", fontsize=9, family="monospace")
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int | None = None) -> None:
    """Save a figure as PNG atomically (never a half-written file)."""
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    atomic_write_bytes(path, buf.getvalue())


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str, path: str | Path) -> None:
    """A simple labelled bar chart (per-class PCK)."""
    fig = Figure(figsize=(max(5.0, 0.55 * len(labels) + 1.5), 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.bar(range(len(labels)), values, color="#3b7dd8")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    for rect, v in zip(bars, values):
        ax.text(rect.get_x() + rect.get_width() / 2, rect.get_height() + 1, f"{v:.1f}", ha="center", fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def line_chart(x: Sequence[float], series: dict[str, Sequence[float]], title: str, xlabel: str, ylabel: str, path: str | Path) -> None:
    """Curves such as PCK against the threshold α."""
    fig = Figure(figsize=(5.0, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, ys in series.items():
        ax.plot(list(x), list(ys), label=name, lw=1.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.set_xlim(min(x), max(x))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
