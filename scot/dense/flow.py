r"""The dense flow: the keypoint transfer rule evaluated at every source pixel.

:func:`scot.transfer.transfer_keypoints` moves a point :math:`p` (resized source frame)
by the aggregate of the shifts of the source boxes that contain it
(:func:`scot.transfer.aggregate_shifts`: mean, confidence-weighted mean or lower median,
restricted to the usable boxes when it has any; the box with the nearest centre when no
box contains it).  Here the same rule is evaluated for every pixel of the original source
image, without a per-pixel loop over the boxes.  The boxes of a hyperpixel grid are
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
row range) pair that occurs among the pixels, by handing the member boxes of that
rectangle of the grid to :func:`~scot.transfer.aggregate_shifts` (in float64: exact sums,
no cancellation whatever the dynamic range of the confidences), and every pixel looks
its value up.  The nearest-centre fallback factorises too: box centres form a grid, so
the nearest centre is the nearest column centre times the nearest row centre (ties to
the lower index on each axis, as ``argmin`` over the row-major boxes).

Coordinates: source pixel :math:`(u, v)` (``u`` the column, ``v`` the row) is the point
:math:`(u\,\rho_s, v\,\rho_s)` of the resized source frame (float32, as keypoints are
resized), and a resized target point :math:`q` is :math:`q / \rho_t` in original
target pixels, with :math:`\rho` the resize ratio (``resized = original * ratio``).
Given the target's size, the flow is clamped into the target image,
:math:`[0, W_t-1] \times [0, H_t-1]`, as transferred keypoints are.

Per-pixel confidence: :math:`\kappa(p)` of :mod:`scot.transfer`, the mean of the match
confidences :math:`c_i` over the boxes that move the pixel, weighted exactly as their
shifts are (the plain mean confidence for ``mean`` and ``median``,
:math:`\sum c_i^{+} c_i / \sum c_i^{+}` for ``weighted``); without confidences it is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hyperpixels import box_centres
from ..transfer import CHUNK_SLOTS, RULES, Rule, aggregate_shifts, box_shifts, check_rule, clamp_points, image_bounds

__all__ = ["RULES", "GridAxes", "Rule", "box_shifts", "containing_range", "dense_flow", "flow_inside", "grid_axes",
           "identity_flow", "nearest_index", "pixel_coordinates", "transfer_lattice"]

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
            and torch.equal(cells[..., 1], rows[:, 1:2].expand(h, w))
            and torch.equal(cells[..., 3], rows[:, 3:4].expand(h, w))):
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


def _distinct_ranges(
    first: torch.Tensor, last: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct non-empty ranges among (P,) ranges: (R,) starts, (R,) ends, (P,) id (-1 when empty)."""
    empty = first > last
    key = torch.where(empty, torch.full_like(first, -1), first * (n + 1) + last)
    uniq, inverse = torch.unique(key, return_inverse=True)
    keep = uniq >= 0
    shift = int((~keep).sum())
    ids = torch.where(empty, torch.full_like(inverse, -1), inverse - shift)
    uniq = uniq[keep]
    return torch.div(uniq, n + 1, rounding_mode="floor"), uniq % (n + 1), ids


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
    bounds: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The keypoint transfer rule at every point of the lattice ``xs x ys`` (resized frames).

    For point :math:`p = (xs_a, ys_b)` the result is
    :math:`p + D(c_0(xs_a), c_1(xs_a), r_0(ys_b), r_1(ys_b))` as in the module docstring,
    identical to ``transfer_keypoints`` at that point (up to float32 rounding in the
    latter: both apply :func:`scot.transfer.aggregate_shifts`), and the confidence
    :math:`\kappa(p)`.

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
            rows at a time so that no (Q, P) float64 temporary is held.
        out_scale: the points are multiplied by it (e.g. ``1 / ratio_trg``: original target pixels).
        bounds: (x_max, y_max) the points are clamped into, ``[0, x_max] x [0, y_max]``, in
            the units of the result (after ``out_scale``): the target image's extent
            (:func:`scot.transfer.image_bounds`).  None: not clamped.

    Returns:
        points: (Q, P, 2) transferred (x, y) in the resized target frame times ``out_scale``
            (in ``out``; float64 otherwise).
        kappa: (Q, P) per-point confidence (1 without ``confidence``).
    """
    check_rule(how, confidence)
    axes = grid_axes(src_boxes, grid)
    h, w = axes.grid
    shift = box_shifts(src_boxes, trg_boxes, best, target_tl).double()
    if shift.shape != (h * w, 2):
        raise ValueError(f"best/target_tl give {tuple(shift.shape)} shifts for a {h} x {w} grid")
    given = None if confidence is None else confidence.detach().float().cpu().double().reshape(-1)
    conf = torch.ones(h * w, dtype=torch.float64) if given is None else given
    mask = None if usable is None else usable.detach().cpu().bool().reshape(-1)

    xs64, ys64 = xs.detach().cpu().double().reshape(-1), ys.detach().cpu().double().reshape(-1)
    c0, c1, col_id = _distinct_ranges(*containing_range(xs64, axes.x1, axes.x2), w)
    r0, r1, row_id = _distinct_ranges(*containing_range(ys64, axes.y1, axes.y2), h)

    disp_table = torch.zeros(len(r0), len(c0), 2, dtype=torch.float64)
    kappa_table = torch.zeros(len(r0), len(c0), dtype=torch.float64)
    if len(r0) and len(c0):
        rows, cols = int((r1 - r0).max()) + 1, int((c1 - c0).max()) + 1
        step = max(1, CHUNK_SLOTS // (rows * cols * len(c0)))
        for start in range(0, len(r0), step):
            sl = slice(start, start + step)
            n_r = len(r0[sl])
            rr0, rr1 = r0[sl].repeat_interleave(len(c0)), r1[sl].repeat_interleave(len(c0))
            cc0, cc1 = c0.repeat(n_r), c1.repeat(n_r)
            index, member = _rectangle_members(rr0, rr1, cc0, cc1, w, rows, cols)
            disp, kappa = aggregate_shifts(member, shift, how, given, mask, index)
            disp_table[sl] = disp.view(n_r, len(c0), 2)
            kappa_table[sl] = kappa.view(n_r, len(c0))

    lattice = _Lattice(disp_table, kappa_table, row_id, col_id, shift, conf, axes, w, xs64, ys64)
    if out is None:
        points, kappa = lattice.rows(0, len(ys64))
        return clamp_points(points.mul_(out_scale), bounds), kappa
    for start in range(0, len(ys64), _ROWS):
        points, kappa = lattice.rows(start, min(start + _ROWS, len(ys64)))
        out[0][start : start + _ROWS] = clamp_points(points.mul_(out_scale), bounds)
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
            row, col = nearest_index(ys, self.axes.cy), nearest_index(self.xs, self.axes.cx)
            nearest = row.unsqueeze(1) * self.w + col.unsqueeze(0)
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
    target_size: tuple[int, int] | None = None,
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
        target_size: (Wt, Ht) of the original target image: every flow vector is clamped
            into it, ``[0, Wt-1] x [0, Ht-1]``, as keypoints are.  None: not clamped.

    Returns:
        flow: (H, W, 2) float32 target (x, y) in original target pixels.
        conf: (H, W) float32 per-pixel confidence.
    """
    xs, ys = pixel_coordinates(size, ratio_src)
    out = (torch.empty(len(ys), len(xs), 2), torch.empty(len(ys), len(xs)))
    return transfer_lattice(src_boxes, trg_boxes, best, grid, xs, ys, how, confidence, usable, target_tl,
                            out=out, out_scale=1.0 / float(ratio_trg),
                            bounds=None if target_size is None else image_bounds(target_size))


def identity_flow(size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 2) float32 flow mapping every pixel of a (W, H) image onto itself."""
    width, height = int(size[0]), int(size[1])
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    return torch.stack((xs, ys), dim=2)


def flow_inside(flow: torch.Tensor, target_size: tuple[int, int]) -> torch.Tensor:
    """(H, W) bool: the flow lands inside a (Wt, Ht) target, ``0 <= x <= Wt-1`` and ``0 <= y <= Ht-1``."""
    f = torch.as_tensor(flow)
    x, y = f[..., 0], f[..., 1]
    return (x >= 0) & (y >= 0) & (x <= target_size[0] - 1) & (y <= target_size[1] - 1)
