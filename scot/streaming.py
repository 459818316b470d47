r"""Low-memory matching: the cost, Sinkhorn and RHM streamed over blocks of source rows.

The default pipeline holds the N x M cost/plan matrix (64 MB at N = M = 4,000, 1 GB at
16,000).  This mode never holds more than a ``block x M`` slab, at the price of
recomputing the cost matmul once per pass:

* each Sinkhorn iteration takes two passes, one for :math:`K^\top a` and one for
  :math:`K b` (the update :math:`a_i = \mu_i / (Kb)_i` is row-local, so a block's rows are
  final as soon as the block is done);
* the last iteration's second pass also forms the block's votes :math:`(N a K b)^{exp2}`
  and adds them to the Hough histogram (votes are additive);
* a final pass recomputes the votes, re-weights them by the smoothed histogram and keeps
  each row's best match.

One Sinkhorn iteration (the paper's setting) therefore costs three matmuls instead of one,
and the results equal the in-memory path's up to float rounding.  Blocks are whole rows of
the source grid, which is what the separable Hough tables need.
"""

from __future__ import annotations

import torch

from .cost import cost_from_operands
from .rhm import GridHough, smooth_histogram


def _kernel(src_op, trg_op, r0, r1, dtype, eps):
    return cost_from_operands(src_op[r0:r1], trg_op, dtype).mul_(-1.0 / eps).exp_()


def streamed_best_matches(
    src_op: torch.Tensor,
    trg_op: torch.Tensor,
    mu: torch.Tensor,
    nu: torch.Tensor,
    n: int,
    m: int,
    *,
    dtype: str,
    eps: float,
    exp2: float,
    num_iters: int = 1,
    tau: float | None = None,
    hough: GridHough | None = None,
    kernel_side: int = 7,
    block_rows: int = 1024,
    max_doublings: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best target and its confidence for each of the ``n`` source hyperpixels.

    Args:
        src_op, trg_op: padded matmul operands (:func:`scot.cost.make_operand`).
        mu, nu: marginals over the padded rows (zero beyond ``n`` / ``m``).
        n, m: real hyperpixel counts.
        hough: the pair's Hough tables; ``None`` skips RHM.
        block_rows: source hyperpixels per block (rounded to whole grid rows).

    Returns:
        (best index (n,), best confidence (n,), the ε actually used).
    """
    ws = hough.src_shape[1] if hough is not None else 1
    step = max(ws, (block_rows // ws) * ws)
    rows = src_op.shape[0]
    fi = 1.0 if tau is None else tau / (tau + eps)
    n_rows = float((mu > 0).sum())
    eps_now = float(eps)
    for _ in range(max_doublings + 1):
        support = (mu > 0).to(torch.float32)
        a = support / support.sum().clamp_min(1.0)
        b = None
        finite = True
        hist = None
        for it in range(num_iters):
            kta = torch.zeros(trg_op.shape[0], device=src_op.device)
            for r0 in range(0, rows, step):
                kta += a[r0 : r0 + step] @ _kernel(src_op, trg_op, r0, r0 + step, dtype, eps_now)
            b = torch.where(nu > 0, nu / kta, torch.zeros_like(nu))
            if fi != 1.0:
                b = b.pow(fi)
            last = it == num_iters - 1
            if last and hough is not None:
                hist = torch.zeros(hough.nby, hough.nbx, device=src_op.device)
            new_a = torch.empty_like(a)
            for r0 in range(0, rows, step):
                K = _kernel(src_op, trg_op, r0, r0 + step, dtype, eps_now)
                kb = K @ b
                mu_blk = mu[r0 : r0 + step]
                a_blk = torch.where(mu_blk > 0, mu_blk / kb, torch.zeros_like(mu_blk))
                if fi != 1.0:
                    a_blk = a_blk.pow(fi)
                new_a[r0 : r0 + step] = a_blk
                if hist is not None and r0 < n:
                    votes = _votes(K, a_blk, b, n_rows, exp2)
                    r1 = min(r0 + step, n)
                    hough.vote(votes[: r1 - r0, :m], hist, row0=r0 // ws)
            a = new_a
        finite = bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())
        if finite:
            break
        eps_now *= 2.0
    else:
        raise RuntimeError("streamed Sinkhorn did not produce a finite plan; use --sinkhorn-mode log without --low-memory")

    smoothed = smooth_histogram(hist, kernel_side) if hist is not None else None
    best = torch.empty(n, dtype=torch.long, device=src_op.device)
    best_conf = torch.empty(n, device=src_op.device)
    for r0 in range(0, min(rows, n), step):
        r1 = min(r0 + step, n)
        K = _kernel(src_op, trg_op, r0, r0 + step, dtype, eps_now)
        votes = _votes(K, a[r0 : r0 + step], b, n_rows, exp2)[: r1 - r0, :m]
        if smoothed is not None:
            votes = hough.reweight(votes, smoothed, votes, row0=r0 // ws)
        best_conf[r0:r1], best[r0:r1] = votes.max(dim=1)
    return best, best_conf, eps_now


def _votes(K: torch.Tensor, a: torch.Tensor, b: torch.Tensor, n_rows: float, exp2: float) -> torch.Tensor:
    """(n_rows · a K b)^exp2 for a block, in place on K."""
    K.mul_((a * n_rows).unsqueeze(1)).mul_(b.unsqueeze(0))
    return K if exp2 == 1.0 else (K.sqrt_() if exp2 == 0.5 else K.pow_(exp2))
