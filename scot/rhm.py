r"""Step 4 of the pipeline: regularized Hough matching (RHM, Min et al. 2019).

Every candidate match (i, j) votes, with its transport weight :math:`P_{ij}`, for the
translation that carries source hyperpixel i onto target hyperpixel j.  Votes land in a
2-D Hough space covering :math:`(W_s + W_t) \times (H_s + H_t)` pixels with about
``ncells`` square cells of side :math:`c = \sqrt{\text{area}/\text{ncells}}`:

.. math::
    \text{bin}_{ij} = \Big\lfloor \frac{(W_s, H_s) - x_i + y_j}{c} \Big\rfloor .

The vote histogram is smoothed with a normalised 7x7 Gaussian (σ = 7/2/2.354, zero
padding) and every match is re-weighted by the consensus of its translation:

.. math::
    \text{confidence}_{ij} = P_{ij}\; \tilde H[\text{bin}_{ij}] .

Hyperpixels lie on regular grids with the same spacing in both images, so ``bin_x``
depends only on the difference of the target and source column indices, and ``bin_y``
on that of the row indices.  The matching matrix lists the target's cells in reverse
row-major order (:mod:`scot.cost`), which turns each difference into a *sum*
``s = source index + column index``: along each axis a vote's bin is a function of one
small table indexed by ``s``.  Hence (:class:`HoughWindows`):

* **voting** sums the (hs, ws, ht, wt) votes along anti-diagonals into an
  (hs + ht - 1) x (ws + wt - 1) table, with one slice addition per source column and
  per source row, then maps the table's rows and columns to bins with two small
  one-hot products (deterministic, no atomic scatter);
* **re-weighting** multiplies the votes by a sliding-window view of the smoothed
  histogram laid out on that table: ``conf[ys, xs, yt, xt] = V * T[ys + yt, xs + xt]``,
  one broadcast multiplication with no index tensor at all.

:func:`rhm_dense` handles arbitrary box centres and is the readable definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_kernel(side: int = 7, device: torch.device | str | None = None) -> torch.Tensor:
    """The reference's normalised 2-D Gaussian: σ = side / 2 / 2.354 on a side x side grid."""
    sigma = side / 2.0 / 2.354
    r = torch.arange(side, dtype=torch.float32, device=device) - (side - 1) / 2.0
    g = torch.exp(-(r.view(1, -1) ** 2) / (2 * sigma**2) - (r.view(-1, 1) ** 2) / (2 * sigma**2))
    return g / g.sum()


def hough_space(src_size: tuple[int, int], trg_size: tuple[int, int], ncells: int = 8192) -> tuple[int, int, float]:
    """(nbins_x, nbins_y, cell size) of the Hough space for images of size (W, H)."""
    width = src_size[0] + trg_size[0]
    height = src_size[1] + trg_size[1]
    cell = math.sqrt(width * height / ncells)
    return int(width / cell) + 1, int(height / cell) + 1, cell


def _axis_bins(ref: float, src_c: torch.Tensor, trg_c: torch.Tensor, cell: float, nbins: int) -> torch.Tensor:
    """floor((ref - src + trg) / cell) for every (src, trg) coordinate pair, clamped into range.

    Evaluated in float32 like the reference, so bins agree even where the quotient lands
    next to an integer.  Votes are non-negative for boxes inside the images, where floor
    equals the reference's truncation; the clamp only matters for boxes outside them.
    """
    vote = (float(ref) - src_c.float()).unsqueeze(-1) + trg_c.float().unsqueeze(-2)
    return torch.floor(vote / torch.tensor(cell, dtype=torch.float32)).long().clamp_(0, nbins - 1)


def _pair_bins(ref: float, src_c: torch.Tensor, trg_c: torch.Tensor, cell: float, nbins: int) -> torch.Tensor:
    """:func:`_axis_bins` for paired coordinates (elementwise rather than all pairs)."""
    vote = (float(ref) - src_c.float()) + trg_c.float()
    return torch.floor(vote / torch.tensor(cell, dtype=torch.float32)).long().clamp_(0, nbins - 1)


def _smooth(hist: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    pad = kernel.shape[-1] // 2
    return F.conv2d(hist[None, None], kernel.to(hist)[None, None], padding=pad)[0, 0]


def rhm_dense(
    votes: torch.Tensor,
    src_centres: torch.Tensor,
    trg_centres: torch.Tensor,
    src_size: tuple[int, int],
    trg_size: tuple[int, int],
    ncells: int = 8192,
    kernel_side: int = 7,
) -> torch.Tensor:
    """RHM for arbitrary hyperpixel centres: votes (N, M), centres (N, 2)/(M, 2) as (x, y)
    (the centres are moved to the votes' device)."""
    src_centres, trg_centres = src_centres.to(votes.device), trg_centres.to(votes.device)
    nbx, nby, cell = hough_space(src_size, trg_size, ncells)
    bx = _axis_bins(src_size[0], src_centres[:, 0], trg_centres[:, 0], cell, nbx)
    by = _axis_bins(src_size[1], src_centres[:, 1], trg_centres[:, 1], cell, nby)
    bins = (bx + by * nbx).view(-1)
    hist = torch.zeros(nby * nbx, dtype=votes.dtype, device=votes.device)
    hist.index_add_(0, bins, votes.reshape(-1))
    smoothed = _smooth(hist.view(nby, nbx), gaussian_kernel(kernel_side, votes.device)).reshape(-1)
    return votes * smoothed[bins].view_as(votes)


def smooth_histogram(hist: torch.Tensor, kernel_side: int = 7) -> torch.Tensor:
    """The vote histogram convolved with the normalised Gaussian (zero padding)."""
    return _smooth(hist, gaussian_kernel(kernel_side, hist.device))


GRID_ERROR = "rhm: both hyperpixel grids must be evenly spaced with the same spacing"


def _regular(coords: torch.Tensor) -> float | None:
    """The spacing of evenly spaced coordinates (any spacing for fewer than two), else None (read on the host)."""
    c = coords.detach().cpu().numpy().astype(np.float32)
    if len(c) < 2:
        return 0.0
    step = c[1] - c[0]
    expected = c[0] + step * np.arange(len(c), dtype=np.float32)
    return float(step) if np.array_equal(c, expected) else None


@dataclass
class HoughWindows:
    """The Hough space of one pair of regular grids, in the matching layout.

    Votes are (hs, ws, ht, wt) views of an (n, m) block whose columns list the target
    cells in reverse row-major order.  A vote's bin is ``(by[ys + yt], bx[xs + xt])`` with
    ``yt, xt`` the reversed target row and column (see the module docstring).
    """

    nbx: int
    nby: int
    bx: torch.Tensor  # (ws + wt - 1,) x-bin of each column-index sum
    by: torch.Tensor  # (hs + ht - 1,) y-bin of each row-index sum
    src_shape: tuple[int, int]  # (hs, ws)
    trg_shape: tuple[int, int]  # (ht, wt)

    @classmethod
    def build(
        cls, src_xs: torch.Tensor, src_ys: torch.Tensor, trg_xs: torch.Tensor, trg_ys: torch.Tensor,
        src_size: tuple[int, int], trg_size: tuple[int, int], ncells: int = 8192,
        device: torch.device | str | None = None, reverse: bool = False, check: bool = True,
    ) -> HoughWindows:
        """The bin tables of the source -> target matching, or with ``reverse`` of the
        target -> source matching (still indexed source x reversed target), on ``device``.

        The tables are computed on the host from the coordinates (host tensors in
        :class:`~scot.hyperpixels.Hyperpixels`) and copied once.  With ``check``, raises
        ValueError unless both grids are evenly spaced with the same spacing (read on the
        host); callers that know it from the grids' geometry pass ``check=False``.
        """
        if check:
            steps = {_regular(c) for c in (src_xs, src_ys, trg_xs, trg_ys)} - {0.0}
            if None in steps or len(steps) > 1:
                raise ValueError(GRID_ERROR)
        nbx, nby, cell = hough_space(src_size, trg_size, ncells)
        return cls(nbx, nby, cls._sum_bins(src_xs, trg_xs, src_size[0], trg_size[0], cell, nbx, reverse).to(device),
                   cls._sum_bins(src_ys, trg_ys, src_size[1], trg_size[1], cell, nby, reverse).to(device),
                   (len(src_ys), len(src_xs)), (len(trg_ys), len(trg_xs)))

    @staticmethod
    def _sum_bins(src_c, trg_c, src_ref, trg_ref, cell, nbins, reverse) -> torch.Tensor:
        """The bin of every index sum s = i + k along one axis (i source, k reversed target)."""
        src_c, trg_c = src_c.detach().float().cpu(), trg_c.detach().float().cpu()
        s = torch.arange(len(src_c) + len(trg_c) - 1)
        i = (s - (len(trg_c) - 1)).clamp_(min=0)  # a source index that reaches each sum
        t = len(trg_c) - 1 - (s - i)  # the target index (natural order) paired with it
        if reverse:  # the target -> source vote: (W_t - x_t) + x_s
            return _pair_bins(trg_ref, trg_c[t], src_c[i], cell, nbins)
        return _pair_bins(src_ref, src_c[i], trg_c[t], cell, nbins)

    def on(self, device: torch.device | str) -> HoughWindows:
        """These tables on ``device`` (itself when they are there already)."""
        device = torch.device(device)
        if self.bx.device == device and self.by.device == device:
            return self
        return replace(self, bx=self.bx.to(device), by=self.by.to(device))

    def sums(self, votes: torch.Tensor, table: torch.Tensor | None = None, row0: int = 0) -> torch.Tensor:
        """Add the (r, ws, ht, wt) votes of source rows ``row0 .. row0 + r`` along anti-diagonals
        into ``table`` ((hs + ht - 1, ws + wt - 1), created when None); returns it."""
        hs, ws = self.src_shape
        ht, wt = self.trg_shape
        r = votes.shape[0]
        if table is None:
            table = votes.new_zeros(hs + ht - 1, ws + wt - 1)
        columns = votes.new_zeros(r, ht, ws + wt - 1)
        for xs in range(ws):
            columns[:, :, xs : xs + wt] += votes[:, xs]
        for k in range(r):
            table[row0 + k : row0 + k + ht] += columns[k]
        return table

    def histogram(self, sums: torch.Tensor) -> torch.Tensor:
        """(nby, nbx) vote histogram from the anti-diagonal sums (two one-hot products)."""
        tables = self.on(sums.device)
        one_y = F.one_hot(tables.by, self.nby).to(sums.dtype)  # (hs + ht - 1, nby)
        one_x = F.one_hot(tables.bx, self.nbx).to(sums.dtype)
        return one_y.t() @ sums @ one_x

    def table(self, smoothed: torch.Tensor) -> torch.Tensor:
        """The smoothed histogram laid out on index sums: ``T[sy, sx] = H[by[sy], bx[sx]]``."""
        tables = self.on(smoothed.device)
        return smoothed[tables.by][:, tables.bx]

    def windows(self, table: torch.Tensor, row0: int = 0, rows: int | None = None) -> torch.Tensor:
        """(r, ws, ht, wt) view with ``[ys, xs, yt, xt] = table[row0 + ys + yt, xs + xt]`` (no copy)."""
        ht, wt = self.trg_shape
        view = table.unfold(0, ht, 1).unfold(1, wt, 1)
        return view[row0 : row0 + (self.src_shape[0] - row0 if rows is None else rows)]

    def confidence(self, votes: torch.Tensor, kernel_side: int = 7, out: torch.Tensor | None = None) -> torch.Tensor:
        """RHM of one pair's (hs, ws, ht, wt) votes; ``out`` may be ``votes`` itself."""
        smoothed = smooth_histogram(self.histogram(self.sums(votes)), kernel_side)
        return torch.mul(votes, self.windows(self.table(smoothed)), out=out)


def grid_view(matrix: torch.Tensor, src_shape: tuple[int, int], trg_shape: tuple[int, int]) -> torch.Tensor:
    """The (n, m) matrix (possibly a strided slice) as (hs, ws, ht, wt), without a copy."""
    return matrix.unflatten(1, trg_shape).unflatten(0, src_shape)


def rhm_grid(
    votes: torch.Tensor,
    src_xs: torch.Tensor,
    src_ys: torch.Tensor,
    trg_xs: torch.Tensor,
    trg_ys: torch.Tensor,
    src_size: tuple[int, int],
    trg_size: tuple[int, int],
    ncells: int = 8192,
    kernel_side: int = 7,
    out: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """RHM for hyperpixels on regular grids, in the matching layout.

    Args:
        votes: (n, m) with n = len(src_ys) * len(src_xs) source cells in row-major order
            and m target cells in **reverse** row-major order (column j is target cell m-1-j).
        src_xs, src_ys: centre coordinates of the source grid's columns and rows.
        trg_xs, trg_ys: the same for the target grid (natural order).
        src_size, trg_size: (W, H) of the resized images.
        out: optional (n, m) buffer for the result; may be ``votes`` itself.
        reverse: ``votes`` are the target -> source votes, transposed to (n, m); the
            result is then that matching's confidences, transposed (two-way matching).

    Returns:
        The (n, m) confidences in the same layout; equal to :func:`rhm_dense` on the grids'
        centres (with the columns reversed).
    """
    hough = HoughWindows.build(src_xs, src_ys, trg_xs, trg_ys, src_size, trg_size, ncells, votes.device, reverse)
    hs, ws = hough.src_shape
    ht, wt = hough.trg_shape
    result = hough.confidence(grid_view(votes, (hs, ws), (ht, wt)), kernel_side,
                              out=None if out is None else grid_view(out, (hs, ws), (ht, wt)))
    return result.reshape(votes.shape) if out is None else out
