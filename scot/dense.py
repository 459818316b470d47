r"""Dense correspondence: the keypoint transfer rule evaluated at every source pixel.

:func:`scot.transfer.transfer_keypoints` moves a point :math:`p` (resized source frame)
with the set :math:`\mathcal N(p)` of source boxes that contain it, each box :math:`B_i`
displaced rigidly by its shift

.. math::
    s_i = \mathrm{tl}(B'_{j^*(i)}) - \mathrm{tl}(B_i)
    \qquad(\text{or } t_i - \mathrm{tl}(B_i) \text{ with explicit landing points } t_i),

and predicts :math:`\hat p = p + \operatorname{agg}_{i \in \mathcal N(p)} s_i` with
``agg`` the mean, the confidence-weighted mean (weights :math:`c_i^+ = \max(c_i, 0)`,
plain mean when they are all zero) or the coordinate-wise lower median.  With a
``usable`` mask, :math:`\mathcal N(p)` is restricted to its usable boxes when it has
any; when no box contains :math:`p` the box with the nearest centre is used.

Here the same rule is evaluated for every pixel of the original source image, without
a per-pixel loop over the boxes.  The boxes of a hyperpixel grid are
:math:`[x_1(c), y_1(r), x_2(c), y_2(r)]` for grid column :math:`c` and row :math:`r`, with
:math:`x_1, x_2` non-decreasing in :math:`c` and :math:`y_1, y_2` non-decreasing in
:math:`r`, so

.. math::
    \{i : p \in B_i\} = [c_0(p_x), c_1(p_x)] \times [r_0(p_y), r_1(p_y)],
    \quad c_0(p_x) = \min\{c : x_2(c) \ge p_x\},\; c_1(p_x) = \max\{c : x_1(c) \le p_x\}

(one ``searchsorted`` per axis), and likewise for rows.  The transferred point is
:math:`p + D(c_0, c_1, r_0, r_1)` with a displacement :math:`D` that depends only on the
four range ends: it is constant on the cells of the partition of the plane made by the
sorted box edges.  :math:`D` is evaluated once for each distinct (column range,
row range) pair that occurs among the pixels, by gathering the member boxes of that
rectangle of the grid (exact sums in float64, no cancellation whatever the dynamic
range of the confidences, and the same ``nanmedian`` as the keypoint rule), and every
pixel looks its value up.  The nearest-centre fallback factorises too: box centres
form a grid, so the nearest centre is the nearest column centre times the nearest row
centre (ties to the lower index on each axis, as ``argmin`` over the row-major boxes).

Coordinates: source pixel :math:`(u, v)` (``u`` the column, ``v`` the row) is the point
:math:`(u\,\rho_s, v\,\rho_s)` of the resized source frame (float32, as keypoints are
resized), and a resized target point :math:`q` is :math:`q / \rho_t` in original
target pixels, with :math:`\rho` the resize ratio (``resized = original * ratio``).

Per-pixel confidence: the mean of the match confidences :math:`c_i` over the boxes
that move the pixel, weighted exactly as their shifts are,

.. math::
    \kappa(p) = \frac{\sum_{i \in \mathcal N(p)} \omega_i c_i}{\sum_{i \in \mathcal N(p)} \omega_i},
    \qquad \omega_i = c_i^+ \text{ for ``weighted``},\; \omega_i = 1 \text{ otherwise},

i.e. the plain mean confidence of :math:`\mathcal N(p)` for ``mean`` and ``median``, and
:math:`\sum c_i^{+} c_i / \sum c_i^{+}` for ``weighted``.  Without confidences it is 1.

The module also warps the target image into the source frame (:func:`warp_image`,
:func:`blend`, :func:`checkerboard`) and moves label masks from the source to the
target frame (:func:`transfer_mask`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .features import box_centres

Rule = Literal["mean", "weighted", "median"]
RULES: tuple[str, ...] = ("mean", "weighted", "median")
_CHUNK = 1 << 20  # member slots evaluated at once (rectangles x boxes per rectangle)


@dataclass(frozen=True)
class GridAxes:
    """Box edges and centres of a hyperpixel grid, per column and per row.

    Attributes:
        x1, x2: (w,) float64 left / right box edges of every grid column.
        y1, y2: (h,) float64 top / bottom box edges of every grid row.
        cx: (w,) float64 box-centre x of every column.
        cy: (h,) float64 box-centre y of every row.
    """

    x1: torch.Tensor
    x2: torch.Tensor
    y1: torch.Tensor
    y2: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) rows and columns."""
        return int(self.y1.numel()), int(self.x1.numel())


def grid_axes(boxes: torch.Tensor, grid: tuple[int, int]) -> GridAxes:
    """Split (h*w, 4) row-major grid boxes into per-column and per-row edges.

    Args:
        boxes: (N, 4) boxes ``x1, y1, x2, y2``, row-major over the grid, N = h * w.
        grid: (h, w).

    Returns:
        The :class:`GridAxes`; raises ``ValueError`` unless every box is
        ``[x1(c), y1(r), x2(c), y2(r)]`` with edges non-decreasing along their axis.
    """
    h, w = int(grid[0]), int(grid[1])
    b = boxes.detach().float().cpu()
    if b.ndim != 2 or b.shape[1] != 4 or b.shape[0] != h * w or h < 1 or w < 1:
        raise ValueError(f"boxes {tuple(b.shape)} do not form a {h} x {w} grid of (x1, y1, x2, y2)")
    cells = b.reshape(h, w, 4)
    cols, rows = cells[0, :, :], cells[:, 0, :]
    if not (torch.equal(cells[..., 0], cols[:, 0].expand(h, w)) and torch.equal(cells[..., 2], cols[:, 2].expand(h, w))
            and torch.equal(cells[..., 1], rows[:, 1:2].expand(h, w)) and torch.equal(cells[..., 3], rows[:, 3:4].expand(h, w))):
        raise ValueError("box x-edges must depend on the grid column only and y-edges on the row only")
    edges = (cols[:, 0], cols[:, 2], rows[:, 1], rows[:, 3])
    if any(bool((e[1:] < e[:-1]).any()) for e in edges):
        raise ValueError("box edges must be non-decreasing along the grid")
    centres = box_centres(b).reshape(h, w, 2)
    x1, x2, y1, y2 = (e.double() for e in edges)
    return GridAxes(x1, x2, y1, y2, centres[0, :, 0].double(), centres[:, 0, 1].double())


def containing_range(coords: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""First and last interval ``[lo[k], hi[k]]`` (bounds inclusive) containing each coordinate.

    With ``lo`` and ``hi`` non-decreasing the containing intervals are contiguous:
    :math:`k_0 = \min\{k : hi_k \ge x\}`, :math:`k_1 = \max\{k : lo_k \le x\}`; the set is
    empty when :math:`k_0 > k_1`.

    Args:
        coords: (P,) coordinates.
        lo, hi: (n,) non-decreasing interval ends.

    Returns:
        first, last: (P,) int64.
    """
    x = coords.double().contiguous()
    first = torch.searchsorted(hi.double().contiguous(), x, side="left")
    last = torch.searchsorted(lo.double().contiguous(), x, side="right") - 1
    return first, last


def nearest_index(coords: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(P,) int64 index of the nearest of (n,) centres to each of (P,) coordinates (ties: lowest)."""
    d = (coords.double().unsqueeze(1) - centres.double().unsqueeze(0)).abs()
    return d.argmin(dim=1)


def _distinct_ranges(first: torch.Tensor, last: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct non-empty ranges among (P,) ranges: (R,) starts, (R,) ends, (P,) id (-1 when empty)."""
    empty = first > last
    key = torch.where(empty, torch.full_like(first, -1), first * (n + 1) + last)
    uniq, inverse = torch.unique(key, return_inverse=True)
    keep = uniq >= 0
    shift = int((~keep).sum())
    ids = torch.where(empty, torch.full_like(inverse, -1), inverse - shift)
    uniq = uniq[keep]
    return torch.div(uniq, n + 1, rounding_mode="floor"), uniq % (n + 1), ids


def box_shifts(
    src_boxes: torch.Tensor, trg_boxes: torch.Tensor, best: torch.Tensor, target_tl: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, 2) float32 top-left displacement of every source box onto its landing point.

    ``target_tl[i]`` (default ``tl(trg_boxes[best[i]])``) minus ``tl(src_boxes[i])``, in
    float32 as :func:`scot.transfer.transfer_keypoints` computes it.
    """
    src, trg = src_boxes.detach().float().cpu(), trg_boxes.detach().float().cpu()
    landing = trg[best.detach().cpu().long(), :2] if target_tl is None else target_tl.detach().float().cpu()
    return landing - src[:, :2]


def _rectangle_members(
    r0: torch.Tensor, r1: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, w: int, rows: int, cols: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, rows*cols) row-major box indices of grid rectangles [r0, r1] x [c0, c1] and their validity."""
    a = torch.arange(rows).view(1, rows, 1)
    b = torch.arange(cols).view(1, 1, cols)
    valid = (a <= (r1 - r0).view(-1, 1, 1)) & (b <= (c1 - c0).view(-1, 1, 1))
    index = (r0.view(-1, 1, 1) + a) * w + (c0.view(-1, 1, 1) + b)
    index = torch.where(valid, index, torch.zeros_like(index))
    return index.flatten(1), valid.flatten(1)


def _aggregate(
    index: torch.Tensor,
    member: torch.Tensor,
    shift: torch.Tensor,
    conf: torch.Tensor,
    usable: torch.Tensor | None,
    how: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, 2) displacement and (R,) confidence of R box sets given as (R, L) indices and membership."""
    if usable is not None:
        preferred = member & usable[index]
        member = torch.where(preferred.any(1, keepdim=True), preferred, member)
    ones = member.double()
    c = conf[index]
    if how == "median":
        values = torch.where(member.unsqueeze(2), shift[index], torch.tensor(float("nan"), dtype=torch.float64))
        disp = torch.nanmedian(values, dim=1).values
        weights = ones
    elif how in ("mean", "weighted"):
        weights = ones
        if how == "weighted":
            positive = ones * c.clamp_min(0)
            weights = torch.where((member & (c > 0)).any(1, keepdim=True), positive, ones)
        disp = (weights.unsqueeze(2) * shift[index]).sum(1) / weights.sum(1, keepdim=True)
    else:
        raise ValueError(f"unknown transfer {how!r} (expected one of {', '.join(RULES)})")
    kappa = (weights * c).sum(1) / weights.sum(1)
    return disp, kappa


def transfer_lattice(
    src_boxes: torch.Tensor,
    trg_boxes: torch.Tensor,
    best: torch.Tensor,
    grid: tuple[int, int],
    xs: torch.Tensor,
    ys: torch.Tensor,
    how: Rule = "mean",
    confidence: torch.Tensor | None = None,
    usable: torch.Tensor | None = None,
    target_tl: torch.Tensor | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    out_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The keypoint transfer rule at every point of the lattice ``xs x ys`` (resized frames).

    For point :math:`p = (xs_a, ys_b)` the result is
    :math:`p + D(c_0(xs_a), c_1(xs_a), r_0(ys_b), r_1(ys_b))` as in the module docstring,
    identical to ``transfer_keypoints`` at that point (up to float32 rounding in the
    latter), and the confidence :math:`\kappa(p)`.

    Args:
        src_boxes: (N, 4) source boxes, row-major over the ``grid``.
        trg_boxes: (M, 4) target boxes.
        best: (N,) int matched target index of every source box.
        grid: (h, w) source grid, N = h * w.
        xs: (P,) x coordinates in the resized source frame.
        ys: (Q,) y coordinates in the resized source frame.
        how: ``mean``, ``weighted`` or ``median``.
        confidence: (N,) match confidences (needed by ``weighted``).
        usable: (N,) bool boxes preferred when a point has any.
        target_tl: (N, 2) landing points replacing the matches' top-left corners.

        out: optional preallocated ((Q, P, 2), (Q, P)) outputs (e.g. float32), filled a few
            rows at a time so that no (Q, P) float64 temporary is held; the points are
            multiplied by ``out_scale`` on the way.

    Returns:
        points: (Q, P, 2) transferred (x, y) in the resized target frame (times ``out_scale``
            in ``out``; float64 otherwise).
        kappa: (Q, P) per-point confidence (1 without ``confidence``).
    """
    if how not in RULES:
        raise ValueError(f"unknown transfer {how!r} (expected one of {', '.join(RULES)})")
    if how == "weighted" and confidence is None:
        raise ValueError("transfer 'weighted' needs the matches' confidence")
    axes = grid_axes(src_boxes, grid)
    h, w = axes.grid
    shift = box_shifts(src_boxes, trg_boxes, best, target_tl).double()
    if shift.shape != (h * w, 2):
        raise ValueError(f"best/target_tl give {tuple(shift.shape)} shifts for a {h} x {w} grid")
    conf = torch.ones(h * w, dtype=torch.float64) if confidence is None else confidence.detach().float().cpu().double().reshape(-1)
    mask = None if usable is None else usable.detach().cpu().bool().reshape(-1)

    xs64, ys64 = xs.detach().cpu().double().reshape(-1), ys.detach().cpu().double().reshape(-1)
    c0, c1, col_id = _distinct_ranges(*containing_range(xs64, axes.x1, axes.x2), w)
    r0, r1, row_id = _distinct_ranges(*containing_range(ys64, axes.y1, axes.y2), h)

    disp_table = torch.zeros(len(r0), len(c0), 2, dtype=torch.float64)
    kappa_table = torch.zeros(len(r0), len(c0), dtype=torch.float64)
    if len(r0) and len(c0):
        rows, cols = int((r1 - r0).max()) + 1, int((c1 - c0).max()) + 1
        step = max(1, _CHUNK // (rows * cols * len(c0)))
        for start in range(0, len(r0), step):
            sl = slice(start, start + step)
            n_r = len(r0[sl])
            rr0, rr1 = r0[sl].repeat_interleave(len(c0)), r1[sl].repeat_interleave(len(c0))
            cc0, cc1 = c0.repeat(n_r), c1.repeat(n_r)
            index, member = _rectangle_members(rr0, rr1, cc0, cc1, w, rows, cols)
            disp, kappa = _aggregate(index, member, shift, conf, mask, how)
            disp_table[sl] = disp.view(n_r, len(c0), 2)
            kappa_table[sl] = kappa.view(n_r, len(c0))

    lattice = _Lattice(disp_table, kappa_table, row_id, col_id, shift, conf, axes, w, xs64, ys64)
    if out is None:
        return lattice.rows(0, len(ys64))
    for start in range(0, len(ys64), _ROWS):
        points, kappa = lattice.rows(start, min(start + _ROWS, len(ys64)))
        out[0][start : start + _ROWS] = points.mul_(out_scale)
        out[1][start : start + _ROWS] = kappa
    return out


_ROWS = 256  # lattice rows assembled at once when writing into preallocated outputs


@dataclass
class _Lattice:
    """Per-configuration displacement tables and each lattice row's and column's configuration."""

    disp: torch.Tensor  # (R, C, 2) float64
    kappa: torch.Tensor  # (R, C) float64
    row_id: torch.Tensor  # (Q,) configuration of each lattice row, -1 outside every box
    col_id: torch.Tensor  # (P,)
    shift: torch.Tensor  # (N, 2) float64
    conf: torch.Tensor  # (N,) float64
    axes: GridAxes
    w: int
    xs: torch.Tensor  # (P,) float64
    ys: torch.Tensor  # (Q,) float64

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q', P, 2) transferred points and (Q', P) confidences of lattice rows ``start:stop``."""
        row_id, ys = self.row_id[start:stop], self.ys[start:stop]
        lonely = (row_id < 0).unsqueeze(1) | (self.col_id < 0).unsqueeze(0)  # (Q', P)
        if self.disp.numel():
            disp = self.disp[row_id.clamp_min(0)][:, self.col_id.clamp_min(0)]
            kappa = self.kappa[row_id.clamp_min(0)][:, self.col_id.clamp_min(0)]
        else:  # no point is in any box
            disp = torch.zeros(len(ys), len(self.xs), 2, dtype=torch.float64)
            kappa = torch.zeros(len(ys), len(self.xs), dtype=torch.float64)
        if bool(lonely.any()):
            nearest = nearest_index(ys, self.axes.cy).unsqueeze(1) * self.w + nearest_index(self.xs, self.axes.cx).unsqueeze(0)
            disp = torch.where(lonely.unsqueeze(2), self.shift[nearest], disp)
            kappa = torch.where(lonely, self.conf[nearest], kappa)
        base = torch.stack(torch.broadcast_tensors(self.xs.unsqueeze(0), ys.unsqueeze(1)), dim=2)
        return base.add_(disp), kappa


def pixel_coordinates(size: tuple[int, int], ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W,) x and (H,) y of the original pixels of a (W, H) image in its resized frame (float32)."""
    width, height = int(size[0]), int(size[1])
    xs = torch.arange(width, dtype=torch.float32) * ratio
    ys = torch.arange(height, dtype=torch.float32) * ratio
    return xs, ys


def dense_flow(
    src_boxes: torch.Tensor,
    trg_boxes: torch.Tensor,
    best: torch.Tensor,
    grid: tuple[int, int],
    size: tuple[int, int],
    ratio_src: float,
    ratio_trg: float,
    how: Rule = "mean",
    confidence: torch.Tensor | None = None,
    usable: torch.Tensor | None = None,
    target_tl: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Where every pixel of the original source image goes in the original target image.

    .. math::
        \mathrm{flow}[v, u] = \hat p(u\rho_s, v\rho_s) / \rho_t,
        \qquad \mathrm{conf}[v, u] = \kappa(u\rho_s, v\rho_s)

    with :math:`\hat p` the keypoint transfer rule and :math:`\kappa` the per-pixel
    confidence of the module docstring.  Boxes and matches are in the resized frames,
    as a match result holds them.

    Args:
        src_boxes: (N, 4) source boxes, row-major over the ``grid``.
        trg_boxes: (M, 4) target boxes.
        best: (N,) int matched target index of every source box.
        grid: (h, w) source grid, N = h * w.
        size: (W, H) of the original source image.
        ratio_src: source resize ratio (resized = original * ratio).
        ratio_trg: target resize ratio.
        how: ``mean``, ``weighted`` or ``median``.
        confidence: (N,) match confidences (needed by ``weighted``).
        usable: (N,) bool boxes preferred where a pixel has any (e.g. mutual matches).
        target_tl: (N, 2) landing points replacing the matches' top-left corners.

    Returns:
        flow: (H, W, 2) float32 target (x, y) in original target pixels.
        conf: (H, W) float32 per-pixel confidence.
    """
    xs, ys = pixel_coordinates(size, ratio_src)
    out = (torch.empty(len(ys), len(xs), 2), torch.empty(len(ys), len(xs)))
    return transfer_lattice(src_boxes, trg_boxes, best, grid, xs, ys, how, confidence, usable, target_tl,
                            out=out, out_scale=1.0 / float(ratio_trg))


def identity_flow(size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 2) float32 flow mapping every pixel of a (W, H) image onto itself."""
    width, height = int(size[0]), int(size[1])
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    return torch.stack((xs, ys), dim=2)


def flow_inside(flow: torch.Tensor, target_size: tuple[int, int]) -> torch.Tensor:
    """(H, W) bool: the flow lands inside a (Wt, Ht) target, ``0 <= x <= Wt-1`` and ``0 <= y <= Ht-1``."""
    f = torch.as_tensor(flow)
    x, y = f[..., 0], f[..., 1]
    return (x >= 0) & (y >= 0) & (x <= target_size[0] - 1) & (y <= target_size[1] - 1)


def warp_image(trg_image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    r"""The target image seen through the flow, in the source frame.

    .. math::
        \mathrm{out}[:, v, u] = I_t(\mathrm{flow}[v, u])

    sampled with ``grid_sample`` (``align_corners=True``, so pixel centres sit on integer
    coordinates as keypoints do), exactly zero where the flow leaves the target frame
    :math:`[0, W_t-1] \times [0, H_t-1]` (:func:`flow_inside`).

    Args:
        trg_image: (3, Ht, Wt) float image in [0, 1] (any channel count works).
        flow: (H, W, 2) target (x, y) in target pixels.
        mode: ``bilinear`` or ``nearest``.

    Returns:
        (C, H, W) float32 warped image.
    """
    img = torch.as_tensor(trg_image).float()
    f = torch.as_tensor(flow).float().to(img.device)
    ht, wt = int(img.shape[-2]), int(img.shape[-1])
    gx = f[..., 0] * (2.0 / max(wt - 1, 1)) - 1.0
    gy = f[..., 1] * (2.0 / max(ht - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=2).unsqueeze(0)
    out = F.grid_sample(img.unsqueeze(0), grid, mode=mode, padding_mode="zeros", align_corners=True)[0]
    return out * flow_inside(f, (wt, ht)).to(out.dtype)


def blend(src_image: torch.Tensor, warped: torch.Tensor, alpha: float = 0.5, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""(C, H, W) :math:`(1-\alpha)\,\mathrm{src} + \alpha\,\mathrm{warped}` where ``mask`` (H, W) holds, ``src`` elsewhere."""
    src, wrp = torch.as_tensor(src_image).float(), torch.as_tensor(warped).float()
    out = (1.0 - alpha) * src + alpha * wrp
    return out if mask is None else torch.where(torch.as_tensor(mask).bool().unsqueeze(0), out, src)


def checkerboard(src_image: torch.Tensor, warped: torch.Tensor, tiles: int = 8, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""(C, H, W) ``src`` and ``warped`` in alternating tiles, ``tiles`` per side.

    Pixel :math:`(u, v)` shows ``warped`` when
    :math:`(\lfloor u\,n / W \rfloor + \lfloor v\,n / H \rfloor)` is odd (and ``mask`` holds),
    ``src`` otherwise, so misalignment shows as broken edges at tile borders.
    """
    src, wrp = torch.as_tensor(src_image).float(), torch.as_tensor(warped).float()
    height, width = int(src.shape[-2]), int(src.shape[-1])
    n = max(int(tiles), 1)
    ty = torch.div(torch.arange(height) * n, height, rounding_mode="floor")
    tx = torch.div(torch.arange(width) * n, width, rounding_mode="floor")
    odd = ((ty.unsqueeze(1) + tx.unsqueeze(0)) % 2).bool()
    if mask is not None:
        odd &= torch.as_tensor(mask).bool()
    return torch.where(odd.unsqueeze(0), wrp, src)


def flow_step(flow: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Median distance in target pixels between the landing points of 4-neighbour source pixels."""
    f = torch.as_tensor(flow).double()
    steps = [(f[:, 1:] - f[:, :-1]).norm(dim=2).flatten(), (f[1:] - f[:-1]).norm(dim=2).flatten()]
    if valid is not None:
        v = torch.as_tensor(valid).bool()
        steps = [steps[0][(v[:, 1:] & v[:, :-1]).flatten()], steps[1][(v[1:] & v[:-1]).flatten()]]
    s = torch.cat(steps)
    s = s[torch.isfinite(s)]
    return float(s.median()) if s.numel() else 1.0


def fill_radius(flow: torch.Tensor, valid: torch.Tensor | None = None) -> int:
    r"""Default hole-filling radius of :func:`transfer_mask`: :math:`\lceil s/\sqrt 2 + 1 \rceil`.

    With neighbouring source pixels (both in ``valid``) landing :math:`s` apart
    (:func:`flow_step`), a target pixel inside the covered area is at most
    :math:`s/\sqrt 2` from a landing point plus :math:`1/\sqrt 2` of rounding to a pixel.
    """
    return max(1, math.ceil(flow_step(flow, valid) / math.sqrt(2.0) + 1.0))


def splat_labels(
    labels: np.ndarray, flow: np.ndarray, target_size: tuple[int, int], voting: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""Majority vote of the label indices landing on each target pixel.

    Source pixel :math:`(u, v)` (where ``voting`` holds) votes for its label at target pixel
    :math:`(\mathrm{rint}(x), \mathrm{rint}(y))`, :math:`(x, y) = \mathrm{flow}[v, u]`
    (non-finite and out-of-frame landings are dropped); each target pixel takes the label
    with most votes, ties going to the lowest label index.

    Args:
        labels: (H, W) int64 label indices 0..L-1.
        flow: (H, W, 2) float target (x, y).
        target_size: (Wt, Ht).
        voting: (H, W) bool source pixels that vote (default all).

    Returns:
        winner: (Ht, Wt) int64 label index (-1 where nothing landed).
        votes: (Ht, Wt) int64 number of source pixels that landed.
    """
    wt, ht = int(target_size[0]), int(target_size[1])
    x, y = np.rint(flow[..., 0]).ravel(), np.rint(flow[..., 1]).ravel()
    ok = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (y >= 0) & (x <= wt - 1) & (y <= ht - 1)
    if voting is not None:
        ok &= np.asarray(voting, dtype=bool).ravel()
    pix = y[ok].astype(np.int64) * wt + x[ok].astype(np.int64)
    lab = labels.ravel()[ok].astype(np.int64)
    n_labels = int(labels.max()) + 1 if labels.size else 1
    pairs, counts = np.unique(pix * n_labels + lab, return_counts=True)
    p, l = pairs // n_labels, pairs % n_labels
    order = np.lexsort((l, -counts, p))
    first = np.unique(p[order], return_index=True)[1]
    winner = np.full(ht * wt, -1, dtype=np.int64)
    winner[p[order][first]] = l[order][first]
    votes = np.bincount(pix, minlength=ht * wt).astype(np.int64)
    return winner.reshape(ht, wt), votes.reshape(ht, wt)


def _shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``out[y, x] = a[y + dy, x + dx]``, False outside."""
    out = np.zeros_like(a)
    h, w = a.shape
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[yd, xd] = a[ys, xs]
    return out


def bridged(labelled: np.ndarray, radius: float) -> np.ndarray:
    r"""(Ht, Wt) bool: pixels lying between two labelled pixels within ``radius`` on a line.

    Pixel :math:`p` is bridged when for one direction
    :math:`d \in \{(1,0), (0,1), (1,1), (1,-1)\}` there are steps
    :math:`1 \le a, b` with :math:`a|d|, b|d| \le` ``radius`` and both
    :math:`p + a d` and :math:`p - b d` labelled.  Gaps inside a labelled area and notches
    in its outline are bridged; pixels just outside a straight or convex outline are not.
    """
    out = np.zeros_like(labelled, dtype=bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        steps = int(math.floor(radius / math.hypot(dy, dx)))
        ahead = np.zeros_like(out)
        behind = np.zeros_like(out)
        for a in range(1, steps + 1):
            ahead |= _shifted(labelled, a * dy, a * dx)
            behind |= _shifted(labelled, -a * dy, -a * dx)
        out |= ahead & behind
    return out


def fill_holes(winner: np.ndarray, radius: float) -> np.ndarray:
    r"""(Ht, Wt) label indices with the enclosed holes (-1) filled by their nearest labelled pixel.

    A hole is filled when it is :func:`bridged` (labelled pixels on both sides along a
    line, within ``radius``); it then takes the index of its nearest labelled pixel
    (Euclidean, within ``radius``).  Unlike a plain nearest-neighbour fill this does not
    grow the outline of the labelled area.
    """
    holes = winner < 0
    if radius < 1 or not holes.any() or holes.all():
        return winner
    dist, (iy, ix) = ndimage.distance_transform_edt(holes, return_indices=True)
    fill = holes & bridged(~holes, radius) & (dist <= radius)
    return np.where(fill, winner[iy, ix], winner)


def transfer_mask(
    src_mask: torch.Tensor | np.ndarray,
    flow: torch.Tensor | np.ndarray,
    target_size: tuple[int, int],
    radius: float | None = None,
    background: int = 0,
) -> torch.Tensor:
    r"""Move a binary or label mask from the source frame to the target frame.

    Forward splatting with a majority vote, then filling of enclosed holes:

    1. every source pixel not labelled ``background`` votes for its label at the target
       pixel nearest to where it lands (:func:`splat_labels`); a target pixel takes its
       most voted label.  Background pixels do not vote: with imperfect matches they
       land scattered over the target and would punch holes in the objects;
    2. a target pixel no vote reached takes the label of its nearest voted pixel when
       voted pixels lie on both sides of it along a line within ``radius`` (:func:`fill_holes`;
       default radius :func:`fill_radius` of the flow over the voting pixels, which covers
       the gaps a locally smooth flow leaves between neighbouring landings), else
       ``background``.

    Labels are copied, never interpolated: the output values are input values, plus
    ``background`` where nothing reaches.

    Args:
        src_mask: (H, W) integer or bool labels.
        flow: (H, W, 2) target (x, y) of every source pixel, in target pixels.
        target_size: (Wt, Ht).
        radius: hole-filling radius in target pixels (below 1 disables filling).
        background: the label that does not vote and fills the rest of the target.

    Returns:
        (Ht, Wt) tensor of the mask's dtype.
    """
    mask = src_mask if isinstance(src_mask, torch.Tensor) else torch.from_numpy(np.array(src_mask))
    f = torch.as_tensor(flow).detach().double().cpu()
    if f.shape != (*mask.shape, 2):
        raise ValueError(f"flow {tuple(f.shape)} does not match mask {tuple(mask.shape)} (expected (H, W, 2))")
    m = mask.cpu().numpy()
    voting = m != background
    values, inverse = np.unique(m, return_inverse=True)
    winner, _ = splat_labels(inverse.reshape(m.shape), f.numpy(), target_size, voting)
    r = fill_radius(f, torch.from_numpy(voting)) if radius is None else float(radius)
    winner = fill_holes(winner, r)
    out = np.where(winner >= 0, values[np.clip(winner, 0, None)] if values.size else background, background)
    return torch.from_numpy(np.ascontiguousarray(out)).to(mask.dtype)
