r"""Low-memory matching: the cost, Sinkhorn and RHM streamed over blocks of source rows.

The default pipeline holds the N x M matrix (64 MB at N = M = 4,000, 1 GB at 16,000).
This mode never holds more than a ``block x M`` slab, at the price of recomputing the
correlation (:class:`~scot.cost.Correlation`, block by block) once per sweep:

* each Sinkhorn iteration makes the two sweeps of :func:`~scot.ot.kernel_sinkhorn`, the
  same operator the in-memory path uses, reading :math:`\log_2 K` computed on the fly;
* the last sweep also forms each block's votes :math:`(N a K b)^{exp2}` and adds them to
  the Hough sums (votes are additive);
* a final sweep recomputes the votes, re-weights them by the smoothed histogram and keeps
  each row's best match.

One Sinkhorn iteration (the paper's setting) therefore computes the correlation three
times instead of once; results equal the in-memory path's up to float rounding.  Blocks
are whole rows of the source grid, which the Hough windows need.

ε follows the one policy of :mod:`scot.ot` (:func:`~scot.ot.eps_doublings`): doubled while
a scaling is not finite, at most ``max_doublings`` times.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import device as _device
from .cost import Correlation, kernel_scale, log2_kernel_
from .hyperpixels import Hyperpixels
from .ot import Scalings, dampening, eps_doublings, kernel_sinkhorn
from .rhm import HoughWindows, grid_view, smooth_histogram
from .votes import log2_votes


def streamed_best_matches(
    src: Hyperpixels,
    trg: Hyperpixels,
    mu: torch.Tensor,
    nu: torch.Tensor,
    *,
    eps: float,
    exp2: float,
    num_iters: int = 1,
    tau: float | None = None,
    hough: HoughWindows | None = None,
    kernel_side: int = 7,
    block_rows: int = 1024,
    max_doublings: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best target and its confidence for each source hyperpixel, in the matching layout.

    Args:
        src, trg: the two images' hyperpixels.
        mu: (n,) source marginal; nu: (m,) target marginal in the matching layout
            (target cells in reverse order); both are moved to the features' device.
        hough: the pair's :class:`~scot.rhm.HoughWindows`; ``None`` skips RHM.
        block_rows: source hyperpixels per block (rounded to whole grid rows).

    Returns:
        (best column (n,) in the matching layout, its confidence (n,), both on the features'
        device, and the ε used).  Whether the scalings are finite is read on the host once
        per ε tried.
    """
    hs, ws = src.grid
    ht, wt = trg.grid
    n, m = src.n, trg.n
    step = max(1, block_rows // ws) * ws
    mu, nu = mu.to(src.device), nu.to(src.device)
    mu_b, nu_b = mu.unsqueeze(0), nu.unsqueeze(0)
    slab = mu.new_empty(step, m)
    best = torch.empty(n, dtype=torch.long, device=mu.device)
    best_conf = torch.empty(n, device=mu.device)

    solved: list[tuple[Callable[[int, int], torch.Tensor], Scalings, torch.Tensor | None]] = []  # the ε that worked

    def attempt(eps_now: float, pending: list[int]) -> list[bool]:
        alpha = kernel_scale(eps_now)
        corr = Correlation(src, trg, alpha)

        def block(r0: int, r1: int) -> torch.Tensor:
            return log2_kernel_(corr.fill(slab[: r1 - r0], r0 // ws, r1 // ws), alpha).unsqueeze(0)

        sums = mu.new_zeros(hs + ht - 1, ws + wt - 1) if hough is not None else None

        def vote(r0: int, r1: int, log2k: torch.Tensor, sc: Scalings) -> None:
            votes = log2_votes(log2k, sc.log2_rows(r0, r1), sc.log2_cols(), exp2, out=log2k)[0]
            if hough is not None:
                hough.sums(grid_view(votes, ((r1 - r0) // ws, ws), (ht, wt)), sums, row0=r0 // ws)
            else:
                torch.max(votes, 1, out=(best_conf[r0:r1], best[r0:r1]))

        scalings = kernel_sinkhorn(block, mu_b, nu_b, num_iters=num_iters, fi=dampening(eps_now, tau),
                                   block_rows=step, on_final_block=vote)
        (finite,) = _device.to_host(scalings.finite())
        if bool(finite):
            solved.append((block, scalings, sums))
        return [bool(finite)]

    (eps_used,) = eps_doublings(attempt, eps, 1, max_doublings)
    block, scalings, sums = solved[-1]
    if hough is None or sums is None:
        return best, best_conf, eps_used
    windows = hough.windows(hough.table(smooth_histogram(hough.histogram(sums), kernel_side)))
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        votes = log2_votes(block(r0, r1), scalings.log2_rows(r0, r1), scalings.log2_cols(), exp2)[0]
        conf = grid_view(votes, ((r1 - r0) // ws, ws), (ht, wt)).mul_(windows[r0 // ws : r1 // ws])
        torch.max(conf.view(r1 - r0, m), 1, out=(best_conf[r0:r1], best[r0:r1]))
    return best, best_conf, eps_used
