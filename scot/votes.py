r"""SCOT's transport votes: the entropic plan rescaled and raised to a power.

.. math::
    V_{ij} = (n\, P_{ij})^{p} = (n\, a_i K_{ij} b_j)^{p},

with :math:`n` the source rows that carry mass (the reference's ``len(src_feats)``), so a
uniform plan gives votes near 1, and :math:`p` = ``exp2`` of the preset.  They are what
regularized Hough matching (:mod:`scot.rhm`) re-weights.  The plan comes from
:mod:`scot.ot`: :func:`scot_votes` solves any configuration through
:func:`~scot.ot.sinkhorn` and its ε policy; the pipeline's kernel path forms the votes
block by block with :func:`log2_votes` as its last Sinkhorn sweep reaches each block.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import device as _device
from .ot import eps_doublings, sinkhorn

_LOG2E = 1.0 / math.log(2.0)


def log2_votes(
    log2_kernel: torch.Tensor, log2_rows: torch.Tensor, log2_cols: torch.Tensor, exp2: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""SCOT's votes :math:`(n\, a_i K_{ij} b_j)^{p} = 2^{\,p\,(\log_2 K_{ij} + \log_2(n a_i) + \log_2 b_j)}`.

    Args:
        log2_kernel: (B, r, M) :math:`\log_2 K` of a block of rows.
        log2_rows: (B, r) :math:`\log_2 (n a_i)` of those rows (``-inf`` for zero scalings).
        log2_cols: (B, M) :math:`\log_2 b_j`.
        exp2: the plan power :math:`p > 0`.
        out: where to write (may be ``log2_kernel`` itself); a new tensor if None.

    Returns:
        (B, r, M) votes; zero where a scaling is zero (padding).
    """
    log2_rows, log2_cols = log2_rows.to(log2_kernel.device), log2_cols.to(log2_kernel.device)
    out = torch.add(log2_kernel, log2_rows.unsqueeze(-1), out=out) if out is not None \
        else log2_kernel + log2_rows.unsqueeze(-1)
    out.add_(log2_cols.unsqueeze(-2))
    if exp2 != 1.0:
        out.mul_(exp2)
    return out.exp2_()


@dataclass
class VoteStats:
    eps_used: list[float]
    iterations: int


def scot_votes(
    cost: torch.Tensor,
    mu: torch.Tensor,
    nu: torch.Tensor,
    eps: float = 0.05,
    exp2: float = 1.0,
    num_iters: int = 1,
    tol: float | None = None,
    method: str = "plain",
    tau: float | None = None,
    max_doublings: int = 10,
) -> tuple[torch.Tensor, VoteStats]:
    """SCOT's transport votes ``(N · P)^exp2`` of a batch (B, N, M) (or one (N, M)) of problems.

    Any solver option (:func:`~scot.ot.sinkhorn`); the plain method follows the ε policy
    (:func:`~scot.ot.eps_doublings`) per problem.  ``N`` is the number of source rows with mass (the
    reference's ``len(src_feats)``).  The batch is solved together; whether each problem's
    scalings are finite is read on the host once per attempt, and only the problems that
    failed are solved again at the doubled ε.

    Args:
        cost: (B, N, M) or (N, M) cost.
        mu: (B, N) or (N,) source marginal; nu: (B, M) or (M,) target marginal (both
            moved to the cost's device).
        eps, num_iters, tol, method, tau: as for :func:`~scot.ot.sinkhorn`.
        exp2: the plan power.
        max_doublings: bound of the ε policy (the log method never doubles).

    Returns:
        (votes with the cost's shape, :class:`VoteStats`).
    """
    C = cost.unsqueeze(0) if cost.dim() == 2 else cost
    mu_b = (mu.unsqueeze(0) if mu.dim() == 1 else mu).to(device=C.device, dtype=C.dtype)
    nu_b = (nu.unsqueeze(0) if nu.dim() == 1 else nu).to(device=C.device, dtype=C.dtype)
    log2_count = (mu_b > 0).sum(-1).to(C.dtype).clamp_min(1.0).log2().unsqueeze(-1)  # (B, 1)
    votes = torch.empty_like(C)
    batch = C.shape[0]
    iterations = 0

    def solve(e: float, pending: list[int]) -> list[bool]:
        nonlocal iterations
        pick = _picker(pending, batch, C.device)
        c, m, n = pick(C), pick(mu_b), pick(nu_b)
        res = sinkhorn(c, m, n, e, num_iters, tol, method=method, tau=tau)
        assert res.log2_rows is not None and res.log2_cols is not None
        finite = (torch.isfinite(res.log2_rows) | (m <= 0)).all(-1) & (torch.isfinite(res.log2_cols) | (n <= 0)).all(-1)
        flags = _device.to_host(finite)[0].tolist()
        good = [i for i, ok in enumerate(flags) if ok]
        if good:
            part = _picker(good, len(pending), C.device)
            solved = [pending[i] for i in good]
            whole = len(solved) == batch
            out = log2_votes(part(c) * (-_LOG2E / e), part(res.log2_rows) + part(pick(log2_count)), part(res.log2_cols),
                             exp2, out=votes if whole else None)
            if not whole:
                votes.index_copy_(0, torch.tensor(solved, device=C.device), out)
            iterations = max(iterations, res.iterations)
        return flags

    eps_used = eps_doublings(solve, eps, batch, 0 if method == "log" else max_doublings)
    return (votes[0] if cost.dim() == 2 else votes), VoteStats(eps_used, iterations)


def _picker(rows: list[int], batch: int, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function selecting ``rows`` of a (batch, ...) tensor (no copy when all are selected)."""
    if len(rows) == batch:
        return lambda x: x
    index = torch.tensor(rows, device=device)
    return lambda x: x.index_select(0, index)
