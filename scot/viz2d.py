"""Match visualisation: two images side by side, matches as lines, keypoints numbered.

Uses matplotlib's object API on the Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure

from .writing import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image

GAP = 10  # pixels between the two images
LABELLED_KEYPOINTS = 40  # keypoints beyond this are drawn as small dots without numbers
DISPLAY_SIDE = 1200  # images are drawn from a decode at about this size, never from the full photo


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


def _uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 of an image in [0, 1] (see :func:`_to_hwc`), rounded to nearest."""
    return (_to_hwc(image) * 255 + 0.5).astype(np.uint8)


def _save_png(img: Image.Image, path: str | Path) -> None:
    """Encode a PIL image as PNG and write it atomically."""
    import io as _io

    buf = _io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _points(points: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.asarray(points.cpu() if isinstance(points, torch.Tensor) else points, dtype=np.float64).reshape(-1, 2)


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
        rgba = np.concatenate([colours, alpha[:, None]], 1)
        segments = np.stack([m[:, :2], tb], 1)  # (N, 2, 2): matplotlib takes the array; its stubs want a Sequence
        ax.add_collection(LineCollection(segments, colors=rgba, linewidths=0.9,  # type: ignore[arg-type]
                                         capstyle="round"))
        ax.scatter(m[:, 0], m[:, 1], s=7, c=colours, linewidths=0, zorder=3)
        ax.scatter(tb[:, 0], tb[:, 1], s=7, c=colours, linewidths=0, zorder=3)

    if src_keypoints is not None and trg_keypoints is not None and len(src_keypoints):
        sk = _points(src_keypoints)
        tk = to_b(_points(trg_keypoints))
        cols = KEYPOINT_COLOURS[np.arange(len(sk)) % len(KEYPOINT_COLOURS)]
        labelled = len(sk) <= LABELLED_KEYPOINTS  # numbers and outlines only where they stay readable
        if gt_keypoints is not None:
            gk = to_b(_points(gt_keypoints))
            ax.add_collection(LineCollection(np.stack([tk, gk], 1),  # type: ignore[arg-type]
                                             colors=cols, linewidths=1.2, linestyles=":", zorder=4))
            ax.scatter(gk[:, 0], gk[:, 1], s=60 if labelled else 12, facecolors="none",
                       edgecolors=cols, linewidths=1.6, zorder=5)  # type: ignore[arg-type]
        size, edge = (70, 0.8) if labelled else (10, 0.0)
        for pts in (sk, tk):
            ax.scatter(pts[:, 0], pts[:, 1], s=size, c=cols, edgecolors="black", linewidths=edge, zorder=6)
        if labelled:
            for k, ((sx, sy), (tx, ty)) in enumerate(zip(sk, tk)):
                for x, y in ((sx, sy), (tx, ty)):
                    ax.annotate(str(k), (x, y), xytext=(5, -5), textcoords="offset points", fontsize=8,
                                fontweight="bold", color="white", zorder=7,
                                bbox=dict(boxstyle="round,pad=0.15", fc=cols[k] * 0.6, ec="none", alpha=0.85))

    if title or subtitle:
        text = title or ""
        if subtitle:
            text = f"{text}\n{subtitle}" if text else subtitle
        fig.text(0.005, 0.995, text, ha="left", va="top", fontsize=9, family="monospace")
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


def draw_match_result(result, src_path: str | Path, trg_path: str | Path, path: str | Path, *, top_k: int = 100,
                      foreground: bool = True, subtitle_prefix: str = "", cam: bool = True) -> None:
    """The picture ``scot match`` writes: the ``top_k`` most confident matches and the keypoints.

    The images are decoded at display size (at most about :data:`DISPLAY_SIDE` pixels),
    and every coordinate is scaled to that decode.
    """
    from .image import load_image

    src, trg = load_image(src_path, max_side=DISPLAY_SIDE), load_image(trg_path, max_side=DISPLAY_SIDE)
    matches = result.matches(top_k, foreground_only=foreground).clone()
    matches[:, 0:2] *= src.scale
    matches[:, 2:4] *= trg.scale
    kps = None if result.keypoints is None else result.keypoints * src.scale
    moved = None if result.transferred is None else result.transferred * trg.scale
    n_kp = 0 if kps is None else len(kps)
    where = " on the object" if foreground and cam else ""
    subtitle = (f"{subtitle_prefix} | {len(matches)} most confident of {result.src.n} matches{where}"
                + (f" | {n_kp} keypoint{'s' if n_kp != 1 else ''}" if n_kp else ""))
    plot_matches(src.tensor, trg.tensor, matches, kps, moved, title=f"{Path(src_path).name}  ->  {Path(trg_path).name}",
                 subtitle=subtitle, path=path)


def save_image(image: torch.Tensor, path: str | Path, labels: bool = False, palette: list[int] | None = None) -> None:
    """Write a (3, H, W) image in [0, 1] as PNG, or with ``labels`` an (H, W) integer label map
    (8-bit grey when the labels fit, else 16-bit; an 8-bit map with a ``palette``, the flat
    [r, g, b, ...] list of a palette image, is written as a palette image), atomically."""
    from PIL import Image

    if labels:
        arr = image.cpu().numpy()
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError("label values must lie in 0..65535 to be written as PNG")
        img = Image.fromarray(arr.astype(np.uint8 if arr.max() < 256 else np.uint16))
        if palette is not None and img.mode == "L":
            img.putpalette(palette)  # becomes mode P, indices unchanged
    else:
        img = Image.fromarray(_uint8(image))
    _save_png(img, path)


def label_overlay(image: torch.Tensor, labels: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) float: the (3, H, W) image with each non-zero label of the (H, W) map tinted
    in its own colour (label k takes ``KEYPOINT_COLOURS[k - 1]``)."""
    rgb = _to_hwc(image).copy()
    lab = labels.cpu().numpy().astype(np.int64)
    for value in np.unique(lab):
        if value == 0:
            continue
        where = lab == value
        colour = KEYPOINT_COLOURS[(int(value) - 1) % len(KEYPOINT_COLOURS)]
        rgb[where] = (1 - alpha) * rgb[where] + alpha * colour
    return rgb


def side_by_side(left: np.ndarray, right: np.ndarray, path: str | Path) -> None:
    """Write two (H, W, 3) float images next to each other as PNG, scaled to one height.

    The height is the taller image's, lowered where needed so that neither image becomes
    wider than the longest side of the two: the picture is at most twice that wide and
    that high, whatever the images' shapes.
    """
    from PIL import Image

    a = Image.fromarray(_uint8(left))
    b = Image.fromarray(_uint8(right))
    longest = max(a.width, a.height, b.width, b.height)
    height = max(1, int(min(max(a.height, b.height), *(longest * im.height / im.width for im in (a, b)))))
    a, b = (im if im.height == height else im.resize((max(1, round(im.width * height / im.height)), height),
                                                        Image.Resampling.BILINEAR) for im in (a, b))
    canvas = Image.new("RGB", (a.width + GAP + b.width, a.height), (255, 255, 255))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + GAP, 0))
    _save_png(canvas, path)


def encoded_image(path: str | Path, side: int = 640, quality: int = 88) -> bytes:
    """The image at ``path`` as JPEG bytes at about ``side`` pixels on its longest side."""
    import io as _io

    from PIL import Image

    from .image import load_image

    loaded = load_image(path, max_side=side)
    img = Image.fromarray(_uint8(loaded.tensor))
    if max(img.size) > side:
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = _io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: int | None = None) -> None:
    """Save a figure as PNG atomically (never a half-written file)."""
    import io as _io

    buf = _io.BytesIO()
    with warnings.catch_warnings():
        # a file name in a script the font lacks is drawn with boxes; no warning line for it
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
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


def line_chart(x: Sequence[float], series: Mapping[str, Sequence[float]], title: str, xlabel: str, ylabel: str,
               path: str | Path) -> None:
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
