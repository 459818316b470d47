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

Hyperpixels lie on regular grids, so the bin index is separable:
``bin_x`` depends only on the (source column, target column) pair and ``bin_y`` only on
the row pair.  :func:`rhm_grid` exploits this: it never materialises the ``N x M`` bin
tables (let alone the reference's ``N x 2 x M`` float vote coordinates), scattering and
gathering one source column at a time with small index vectors.  :func:`rhm_dense`
handles arbitrary box centres and is the readable definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    """RHM for arbitrary hyperpixel centres: votes (N, M), centres (N, 2)/(M, 2) as (x, y)."""
    nbx, nby, cell = hough_space(src_size, trg_size, ncells)
    bx = _axis_bins(src_size[0], src_centres[:, 0], trg_centres[:, 0], cell, nbx)
    by = _axis_bins(src_size[1], src_centres[:, 1], trg_centres[:, 1], cell, nby)
    bins = (bx + by * nbx).view(-1)
    hist = torch.zeros(nby * nbx, dtype=votes.dtype, device=votes.device)
    hist.index_add_(0, bins, votes.reshape(-1))
    smoothed = _smooth(hist.view(nby, nbx), gaussian_kernel(kernel_side, votes.device)).reshape(-1)
    return votes * smoothed[bins].view_as(votes)


@dataclass
class GridHough:
    """The Hough space of one pair of grids and its separable bin tables.

    ``bx[xs, xt]`` is the x-bin of source column xs voting for target column xt and
    ``by[ys, yt]`` the y-bin of a row pair; a match's bin is ``(by, bx)``.
    """

    nbx: int
    nby: int
    bx: torch.Tensor  # (ws, wt) long
    by: torch.Tensor  # (hs, ht) long
    src_shape: tuple[int, int]  # (hs, ws)
    trg_shape: tuple[int, int]  # (ht, wt)

    @classmethod
    def build(cls, src_xs, src_ys, trg_xs, trg_ys, src_size, trg_size, ncells=8192, device=None,
              reverse: bool = False) -> "GridHough":
        """The bin tables; with ``reverse``, those of the target -> source matching, indexed
        (source, target) like the forward ones (the Hough space's size is symmetric)."""
        nbx, nby, cell = hough_space(src_size, trg_size, ncells)
        if reverse:
            bx = _axis_bins(trg_size[0], trg_xs, src_xs, cell, nbx).T.contiguous()
            by = _axis_bins(trg_size[1], trg_ys, src_ys, cell, nby).T.contiguous()
        else:
            bx = _axis_bins(src_size[0], src_xs, trg_xs, cell, nbx)
            by = _axis_bins(src_size[1], src_ys, trg_ys, cell, nby)
        return cls(nbx, nby, bx.to(device), by.to(device), (len(src_ys), len(src_xs)), (len(trg_ys), len(trg_xs)))

    def vote(self, votes: torch.Tensor, hist: torch.Tensor, row0: int = 0) -> None:
        """Add the votes of source grid rows ``row0 .. row0 + r`` (an (r * ws, M) block) to ``hist``."""
        ws = self.src_shape[1]
        ht, wt = self.trg_shape
        r = votes.shape[0] // ws
        v4 = votes.view(r, ws, ht, wt)
        # first collapse column pairs into x-bins, then row pairs into y-bins
        partial = votes.new_zeros(r, ht, self.nbx)
        for xs in range(ws):
            partial.index_add_(2, self.bx[xs], v4[:, xs])
        hist.index_add_(0, self.by[row0 : row0 + r].reshape(-1), partial.view(r * ht, self.nbx))

    def reweight(self, votes: torch.Tensor, smoothed: torch.Tensor, out: torch.Tensor, row0: int = 0) -> torch.Tensor:
        """``out = votes * smoothed[bin]`` for a block of source grid rows, one source column at a time."""
        ws = self.src_shape[1]
        ht, wt = self.trg_shape
        r = votes.shape[0] // ws
        rows = smoothed[self.by[row0 : row0 + r]]  # (r, ht, nbx)
        v4, o4 = votes.view(r, ws, ht, wt), out.view(r, ws, ht, wt)
        for xs in range(ws):
            torch.mul(v4[:, xs], rows.index_select(2, self.bx[xs]), out=o4[:, xs])
        return out


def smooth_histogram(hist: torch.Tensor, kernel_side: int = 7) -> torch.Tensor:
    """The vote histogram convolved with the normalised Gaussian (zero padding)."""
    return _smooth(hist, gaussian_kernel(kernel_side, hist.device))


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
    """RHM for hyperpixels on regular grids (the pipeline's case).

    Args:
        votes: (N, M) with N = len(src_ys) * len(src_xs) in row-major order, likewise M.
        src_xs, src_ys: centre coordinates of the source grid's columns and rows.
        trg_xs, trg_ys: the same for the target grid.
        src_size, trg_size: (W, H) of the resized images.
        out: optional (N, M) buffer for the result; may be ``votes`` itself.
        reverse: ``votes`` are the target -> source votes, transposed to (N, M); the
            result is then that matching's confidences, transposed (two-way matching).

    Returns:
        The (N, M) confidences, equal to :func:`rhm_dense` on the grids' centres.
    """
    hough = GridHough.build(src_xs, src_ys, trg_xs, trg_ys, src_size, trg_size, ncells, votes.device, reverse)
    hist = votes.new_zeros(hough.nby, hough.nbx)
    hough.vote(votes, hist)
    smoothed = smooth_histogram(hist, kernel_side)
    return hough.reweight(votes, smoothed, out if out is not None else torch.empty_like(votes))
