r"""A self-contained interactive HTML page for one matched image pair.

:func:`write_viewer` fills ``template.html`` (plain JavaScript and a canvas) with the
two images as data URIs and the matches as one JSON object; the page makes no request
of any kind (its Content-Security-Policy forbids them) and opens from disk offline.

What it shows: the two images side by side; the pointer over the source selects the
nearest source hyperpixel, whose best match is marked on the target together with a
heat map of its top-k match confidences; clicks pin hyperpixels in distinct colours
(click again, or the button, to unpin); a slider draws the ``n`` most confident
matches (top-1 per source hyperpixel, ranked by confidence); transferred keypoints are
numbered dots.

Encoding (kept small, decoded exactly by :func:`read_viewer` and by the page):

* points on a grid are stored as their ``w`` column x and ``h`` row y (float32), other
  point sets as (P, 2) float32;
* top-k indices :math:`J \in [0, M)^{N \times k}`, sorted by decreasing confidence, as
  the top-1 :math:`J_{:,0}` (uint16, or uint32 when :math:`M > 65536`) and the offsets
  :math:`J_{:,r} - J_{:,0}` (int16, when :math:`M \le 32768`; otherwise all of
  :math:`J` as uint32);
* confidences quantised to uint8, :math:`q = \mathrm{rint}(255\, c^+ / s)` with
  :math:`s = \max c`, shown as :math:`q s / 255`, stored as the top-1 :math:`q_{:,0}` and
  the drops :math:`q_{:,r-1} - q_{:,r} \in [0, 255]` (uint8, rank-major), which deflate
  better than the values;
* the ranking of the source hyperpixels by top-1 confidence (from the unquantised
  values) as uint16/uint32;
* all arrays little-endian in one byte string, zlib-deflated (the page inflates it with
  the browser's ``DecompressionStream``) and base64-encoded.

The page exposes ``window.scotViewer`` (``ready``, ``hover``, ``marker`` in original
target pixels, ``pins``, ``lines``, ``drawnLines``, ``heat``, ``layout``,
``clientPoint(side, x, y)``) and mirrors the marker, hover index, pin count and line
count on the canvas as ``data-*`` attributes, so that a browser test can check it.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..writing import atomic_write_bytes

PLACEHOLDER = "__SCOT_DATA__"
DTYPES: dict[str, str] = {"f32": "<f4", "u8": "u1", "u16": "<u2", "u32": "<u4", "i16": "<i2"}
ArrayLike = np.ndarray | torch.Tensor | Sequence[Sequence[float]]


def template_text() -> str:
    """The page template shipped in the package (``scot/viewer/template.html``)."""
    return resources.files(__name__).joinpath("template.html").read_text(encoding="utf-8")


def as_numpy(x: ArrayLike, dtype: Any) -> np.ndarray:
    """A numpy copy of an array, tensor or nested list, in ``dtype``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.array(x, dtype=dtype)


def image_data_uri(data: bytes) -> str:
    """``data:`` URI of PNG, JPEG or WebP bytes (the type read from the signature)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        mime = "image/png"
    elif data.startswith(b"\xff\xd8\xff"):
        mime = "image/jpeg"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    else:
        raise ValueError("image bytes must be PNG, JPEG or WebP")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def infer_grid(points: np.ndarray) -> tuple[int, int] | None:
    """(h, w) when (P, 2) points are a row-major grid (x by column, y by row), else None."""
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
        return None
    first_row = np.flatnonzero(p[:, 1] != p[0, 1])
    w = int(first_row[0]) if len(first_row) else len(p)
    if len(p) % w:
        return None
    h = len(p) // w
    return (h, w) if grid_axes_of(p, (h, w)) is not None else None


def grid_axes_of(points: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(w,) column x and (h,) row y when (h*w, 2) points factorise on the ``grid``, else None."""
    h, w = int(grid[0]), int(grid[1])
    p = np.asarray(points)
    if p.shape != (h * w, 2):
        return None
    cells = p.reshape(h, w, 2)
    xs, ys = cells[0, :, 0], cells[:, 0, 1]
    same_x = np.array_equal(cells[..., 0], np.broadcast_to(xs, (h, w)))
    if same_x and np.array_equal(cells[..., 1], np.broadcast_to(ys[:, None], (h, w))):
        return xs.copy(), ys.copy()
    return None


def point_spacing(points: np.ndarray) -> float:
    """Median distance from each of (P, 2) points to its nearest other point (1 for fewer than 2)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 2:
        return 1.0
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(p).query(p, k=2)
    d = dist[:, 1]
    d = d[np.isfinite(d) & (d > 0)]
    return float(np.median(d)) if d.size else 1.0


def sort_topk(index: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) indices and confidences reordered by decreasing confidence in every row (stable)."""
    order = np.argsort(-confidence, axis=1, kind="stable")
    return np.take_along_axis(index, order, 1), np.take_along_axis(confidence, order, 1)


def quantise_confidence(confidence: np.ndarray) -> tuple[np.ndarray, float]:
    r"""(N, k) uint8 :math:`\mathrm{rint}(255\, c^+ / s)` and the scale :math:`s = \max c` (1 when not positive).

    Non-finite confidences count as 0.
    """
    c = np.nan_to_num(np.asarray(confidence, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
    scale = float(c.max()) if c.size and c.max() > 0 else 1.0
    return np.rint(c / scale * 255.0).astype(np.uint8), scale


def index_dtype(upper: int) -> str:
    """The smallest of ``u16``/``u32`` holding integers below ``upper``."""
    return "u16" if upper <= 1 << 16 else "u32"


def encode_topk(index: np.ndarray, m: int) -> dict[str, tuple[str, np.ndarray]]:
    """Arrays for (N, k) top-k indices into M targets: top-1 and int16 offsets, or the full uint32 table."""
    idx = np.asarray(index, dtype=np.int64)
    if m <= 1 << 15:
        return {"top1": (index_dtype(m), idx[:, 0]), "offsets": ("i16", (idx[:, 1:] - idx[:, :1]).reshape(-1))}
    return {"top1": ("u32", idx[:, 0]), "index": ("u32", idx.reshape(-1))}


def pack_arrays(arrays: dict[str, tuple[str, np.ndarray]],
                compress: bool = True) -> tuple[dict[str, dict[str, Any]], str]:
    """One little-endian byte string (deflated when ``compress``) in base64, and where each array sits in it."""
    spec: dict[str, dict[str, Any]] = {}
    chunks: list[bytes] = []
    offset = 0
    for name, (dtype, values) in arrays.items():
        raw = np.ascontiguousarray(np.asarray(values).reshape(-1).astype(DTYPES[dtype])).tobytes()
        spec[name] = {"dtype": dtype, "offset": offset, "length": int(np.asarray(values).size)}
        chunks.append(raw)
        offset += len(raw)
    blob = b"".join(chunks)
    if compress:
        blob = zlib.compress(blob, 9)
    return spec, base64.b64encode(blob).decode("ascii")


def unpack_arrays(spec: dict[str, dict[str, Any]], blob: str, compressed: bool) -> dict[str, np.ndarray]:
    """The inverse of :func:`pack_arrays`."""
    raw = base64.b64decode(blob)
    if compressed:
        raw = zlib.decompress(raw)
    out = {}
    for name, s in spec.items():
        dt = np.dtype(DTYPES[s["dtype"]])
        out[name] = np.frombuffer(raw, dtype=dt, count=s["length"], offset=s["offset"]).copy()
    return out


def _points_entry(
    prefix: str, points: np.ndarray, grid: tuple[int, int] | None
) -> tuple[dict[str, Any], dict[str, tuple[str, np.ndarray]]]:
    """How a point set is stored: its grid axes when it factorises (on ``grid``, or a grid found), else all of it."""
    axes = grid_axes_of(points, grid) if grid is not None else None
    if axes is None and grid is None:
        found = infer_grid(points)
        axes = grid_axes_of(points, found) if found is not None else None
    if axes is not None:
        desc = {"kind": "grid", "grid": [len(axes[1]), len(axes[0])]}
        return desc, {f"{prefix}_xs": ("f32", axes[0]), f"{prefix}_ys": ("f32", axes[1])}
    return {"kind": "list"}, {f"{prefix}_xy": ("f32", points)}


def _keypoint_list(points: ArrayLike | None) -> list[list[float] | None] | None:
    if points is None:
        return None
    p = as_numpy(points, np.float64).reshape(-1, 2)
    return [[round(float(x), 3), round(float(y), 3)] if math.isfinite(x) and math.isfinite(y) else None for x, y in p]


def viewer_payload(
    src_image: bytes,
    trg_image: bytes,
    src_size: tuple[int, int],
    trg_size: tuple[int, int],
    src_points: ArrayLike,
    trg_points: ArrayLike,
    topk_index: ArrayLike,
    topk_confidence: ArrayLike,
    grid: tuple[int, int],
    keypoints_src: ArrayLike | None = None,
    keypoints_trg: ArrayLike | None = None,
    title: str = "",
    lines: int = 50,
    compress: bool = True,
) -> dict[str, Any]:
    """The JSON object the page reads (see :func:`write_viewer` for the arguments)."""
    src_xy, trg_xy = as_numpy(src_points, np.float32).reshape(-1, 2), as_numpy(trg_points, np.float32).reshape(-1, 2)
    n, m = len(src_xy), len(trg_xy)
    idx, conf = as_numpy(topk_index, np.int64), as_numpy(topk_confidence, np.float64)
    if idx.ndim == 1:
        idx, conf = idx[:, None], conf[:, None]
    h, w = int(grid[0]), int(grid[1])
    if h * w != n:
        raise ValueError(f"grid {h} x {w} does not hold the {n} source points")
    if idx.shape != conf.shape or idx.shape[0] != n or idx.shape[1] < 1:
        raise ValueError(f"topk_index {idx.shape} and topk_confidence {conf.shape} must both be (N={n}, k)")
    if m == 0 or idx.min() < 0 or idx.max() >= m:
        raise ValueError(f"topk_index must index the {m} target points")
    conf = np.nan_to_num(conf, nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)  # shown as 0 when not finite
    idx, conf = sort_topk(idx, conf)
    q, scale = quantise_confidence(conf)
    drops = (q[:, :-1].astype(np.int16) - q[:, 1:]).T  # (k-1, N), non-negative as rows decrease
    order = np.argsort(-conf[:, 0], kind="stable")
    src_desc, src_arrays = _points_entry("src", src_xy, (h, w))
    trg_desc, trg_arrays = _points_entry("trg", trg_xy, None)
    arrays = {**src_arrays, **trg_arrays, **encode_topk(idx, m),
              "confidence_top": ("u8", q[:, 0]), "confidence_drop": ("u8", drops), "order": (index_dtype(n), order)}
    spec, blob = pack_arrays(arrays, compress)
    kps = None
    if keypoints_src is not None or keypoints_trg is not None:
        kps = {"src": _keypoint_list(keypoints_src), "trg": _keypoint_list(keypoints_trg)}
    return {
        "format": "scot-viewer/1",
        "title": title,
        "n": n,
        "m": m,
        "k": int(idx.shape[1]),
        "confidence_scale": scale,
        "initial_lines": int(max(0, min(lines, n))),
        "src": {"image": image_data_uri(src_image), "size": [int(src_size[0]), int(src_size[1])], "grid": [h, w],
                "spacing": point_spacing(src_xy)},
        "trg": {"image": image_data_uri(trg_image), "size": [int(trg_size[0]), int(trg_size[1])],
                "spacing": point_spacing(trg_xy)},
        "points": {"src": src_desc, "trg": trg_desc},
        "keypoints": kps,
        "compressed": bool(compress),
        "arrays": spec,
        "blob": blob,
    }


def render_viewer(payload: dict[str, Any]) -> str:
    """The page: the template with the payload as JSON (``<`` escaped so no tag can close early)."""
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    template = template_text()
    if template.count(PLACEHOLDER) != 1:
        raise RuntimeError("viewer template must hold exactly one data placeholder")
    return template.replace(PLACEHOLDER, text)


def write_viewer(
    path: str | Path,
    src_image_png_bytes: bytes,
    trg_image_png_bytes: bytes,
    src_size: tuple[int, int],
    trg_size: tuple[int, int],
    src_points: ArrayLike,
    trg_points: ArrayLike,
    topk_index: ArrayLike,
    topk_confidence: ArrayLike,
    grid: tuple[int, int],
    keypoints_src: ArrayLike | None = None,
    keypoints_trg: ArrayLike | None = None,
    title: str = "",
    lines: int = 50,
    compress: bool = True,
) -> int:
    """Write the interactive page of one matched pair to ``path``; return its size in bytes.

    Args:
        path: the ``.html`` file to write (atomically).
        src_image_png_bytes: encoded source image (PNG; JPEG and WebP work too).
        trg_image_png_bytes: encoded target image.
        src_size: (W, H) of the source in the pixels the points use (original pixels).
        trg_size: (W, H) of the target.
        src_points: (N, 2) source hyperpixel centres (x, y), row-major over ``grid``.
        trg_points: (M, 2) target hyperpixel centres.
        topk_index: (N, k) int target indices of each source hyperpixel's k most
            confident matches (any order; sorted here), i.e. the top-k of every row of
            the N x M confidence matrix.  ``[:, 0]`` after sorting is the match.
        topk_confidence: (N, k) float their confidences.
        grid: (h, w) source grid, N = h * w.
        keypoints_src: (K, 2) source keypoints or None (non-finite rows are skipped).
        keypoints_trg: (K, 2) transferred keypoints or None.
        title: shown above the images.
        lines: match lines drawn when the page opens (the slider changes it).
        compress: deflate the arrays (needs ``DecompressionStream``, in every current browser).

    Returns:
        Size of the written file in bytes.
    """
    payload = viewer_payload(src_image_png_bytes, trg_image_png_bytes, src_size, trg_size, src_points, trg_points,
                             topk_index, topk_confidence, grid, keypoints_src, keypoints_trg, title, lines, compress)
    data = render_viewer(payload).encode("utf-8")
    atomic_write_bytes(path, data)
    return len(data)


def read_viewer(source: str | Path) -> dict[str, Any]:
    """The payload of a written page (path or HTML text) with its arrays decoded.

    Adds ``decoded``: ``src_points`` (N, 2), ``trg_points`` (M, 2), ``topk_index`` (N, k)
    int64, ``topk_quantised`` (N, k) uint8, ``order`` (N,) int64, as the page sees them.
    """
    if isinstance(source, str) and source.lstrip().startswith("<"):
        text = source
    else:
        text = Path(source).read_text(encoding="utf-8")
    opening = '<script type="application/json" id="scot-data">'
    start = text.index(opening) + len(opening)
    end = text.index("</script>", start)
    payload = json.loads(text[start:end])
    arrays = unpack_arrays(payload["arrays"], payload["blob"], payload["compressed"])
    n, k = payload["n"], payload["k"]

    def points(prefix: str) -> np.ndarray:
        if payload["points"][prefix]["kind"] == "grid":
            xs, ys = arrays[f"{prefix}_xs"], arrays[f"{prefix}_ys"]
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            return np.stack((xx.reshape(-1), yy.reshape(-1)), axis=1)
        return arrays[f"{prefix}_xy"].reshape(-1, 2)

    top1 = arrays["top1"].astype(np.int64)
    if "index" in arrays:
        topk = arrays["index"].astype(np.int64).reshape(n, k)
    else:
        offsets = arrays["offsets"].astype(np.int64).reshape(n, k - 1)
        topk = np.concatenate((top1[:, None], top1[:, None] + offsets), axis=1)
    drops = arrays["confidence_drop"].astype(np.int64).reshape(k - 1, n).T
    quantised = (arrays["confidence_top"].astype(np.int64)[:, None] - np.concatenate(
        (np.zeros((n, 1), np.int64), np.cumsum(drops, axis=1)), axis=1)).astype(np.uint8)
    payload["decoded"] = {
        "src_points": points("src"),
        "trg_points": points("trg"),
        "topk_index": topk,
        "topk_quantised": quantised,
        "order": arrays["order"].astype(np.int64),
    }
    return payload
