r"""Step 3 of the pipeline: entropic optimal transport (Sinkhorn), batched.

Given a cost :math:`C \in \mathbb{R}^{B\times N\times M}_{\ge 0}` and marginals
:math:`\mu \in \Delta^N`, :math:`\nu \in \Delta^M`, the entropic plan is

.. math::
    P = \operatorname{diag}(a)\, K \operatorname{diag}(b), \qquad K = e^{-C/\varepsilon},

with scalings found by alternating projections from :math:`a = \mathbb{1}/N`:

.. math::
    b \leftarrow \Big(\frac{\nu}{K^\top a}\Big)^{f}, \qquad a \leftarrow \Big(\frac{\mu}{K b}\Big)^{f},

where :math:`f = \tau / (\tau + \varepsilon)` is the :func:`dampening` of unbalanced OT
(marginals relaxed to KL penalties of weight :math:`\tau`, Chizat et al. 2018; :math:`f = 1`
when balanced).  SCOT's reference runs **one** iteration.  Its votes are the rescaled plan
:math:`(N P)^{p}` with :math:`N` the rows with mass and :math:`p` = ``exp2``
(:func:`log2_votes`).

Two solvers share these formulas:

* :func:`kernel_sinkhorn`, the pipeline's: plain iterations on :math:`\log_2 K` read one
  block of rows at a time (stored, or recomputed by the low-memory path), optionally
  solving the transposed problem alongside for two-way matching;
* :func:`sinkhorn`, for any cost and option: to a marginal tolerance, and in the log
  domain (:math:`\alpha = \log a`, :math:`\beta = \log b` updated with log-sum-exp, so
  :math:`K` never underflows and :math:`\varepsilon = 10^{-3}` works).

Rows/columns with zero mass (padding in a batch of pairs of different sizes) get zero
scalings and so zero plan entries.

**ε policy** (one, for every path): when the plain iteration gives a non-finite scaling
(:math:`K` underflowed), ε is doubled, at most ``max_doublings`` times, as the reference
code does; past that the solve fails with a message suggesting the log domain.

References:
    Cuturi, "Sinkhorn Distances", NeurIPS 2013.
    Chizat, Peyré, Schmitzer, Vialard, "Scaling algorithms for unbalanced optimal transport
    problems", Math. Comp. 2018.
    Liu, Zhu, Yamada, Yang, "Semantic Correspondence as an Optimal Transport Problem", CVPR 2020.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from . import device as _device
from .errors import ScotError

_LOG2E = 1.0 / math.log(2.0)


def dampening(eps: float, tau: float | None) -> float:
    r"""The exponent :math:`\tau / (\tau + \varepsilon)` of unbalanced Sinkhorn updates (1 when balanced)."""
    return 1.0 if tau is None else tau / (tau + eps)


def _batched(x: torch.Tensor, dims: int) -> torch.Tensor:
    return x.unsqueeze(0) if x.dim() == dims else x


def _initial_a(mu: torch.Tensor) -> torch.Tensor:
    """(B, N) a = 1/n over the rows that carry mass (all rows for the reference's marginals)."""
    support = (mu > 0).to(mu.dtype)
    return support / support.sum(-1, keepdim=True).clamp_min(1.0)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, with 0 where num == 0 (zero-mass padding); den == 0 elsewhere gives inf."""
    return torch.where(num > 0, num / den, torch.zeros((), dtype=num.dtype, device=num.device))


def _damp(x: torch.Tensor, fi: float) -> torch.Tensor:
    return x if fi == 1.0 else x.pow_(fi)


def _rowdot(block: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, r, M) x (B, M) -> (B, r): each row of the block dotted with v."""
    return torch.bmm(block, v.unsqueeze(-1)).squeeze(-1)


def _coldot(v: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """(B, r) x (B, r, M) -> (B, M): the block's columns dotted with v."""
    return torch.bmm(v.unsqueeze(1), block).squeeze(1)


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


# --------------------------------------------------------------------------------------
# The pipeline's solver: plain Sinkhorn on a log2-kernel, one block of rows at a time
@dataclass
class Scalings:
    """Plain-Sinkhorn scalings of a batch of problems (and of the transposed problems).

    The forward plan is ``a_i K_ij b_j``; with two-way matching the target -> source plan,
    transposed into the same (N, M) layout, is ``b_rev_i K_ij a_rev_j``.
    """

    a: torch.Tensor  # (B, N)
    b: torch.Tensor  # (B, M)
    a_rev: torch.Tensor | None  # (B, M) row scalings of the transposed problem
    b_rev: torch.Tensor | None  # (B, N) its column scalings
    rows: torch.Tensor  # (B,) rows with mass: the N of (N P)^p
    cols: torch.Tensor  # (B,) columns with mass: the M of the transposed problem's votes

    def finite(self) -> torch.Tensor:
        """0-dim bool tensor: every scaling is finite (read it once per batch)."""
        parts = [self.a, self.b] + ([self.a_rev, self.b_rev] if self.a_rev is not None else [])
        return torch.stack([torch.isfinite(p).all() for p in parts]).all()  # type: ignore[arg-type]

    def log2_rows(self, r0: int, r1: int, reverse: bool = False) -> torch.Tensor:
        """(B, r) log2(N a) of rows ``r0:r1`` (with ``reverse``, log2(M b_rev))."""
        if reverse:
            assert self.b_rev is not None
            return (self.b_rev[:, r0:r1] * self.cols.unsqueeze(-1)).log2()
        return (self.a[:, r0:r1] * self.rows.unsqueeze(-1)).log2()

    def log2_cols(self, reverse: bool = False) -> torch.Tensor:
        """(B, M) log2 b (with ``reverse``, log2 a_rev)."""
        if reverse:
            assert self.a_rev is not None
            return self.a_rev.log2()
        return self.b.log2()


def kernel_sinkhorn(
    log2_kernel: Callable[[int, int], torch.Tensor],
    mu: torch.Tensor,
    nu: torch.Tensor,
    *,
    num_iters: int = 1,
    fi: float = 1.0,
    two_way: bool = False,
    block_rows: int = 256,
    on_final_block: Callable[[int, int, torch.Tensor, Scalings], None] | None = None,
) -> Scalings:
    r"""Plain Sinkhorn on :math:`K = 2^{L}`, reading :math:`L` one block of rows at a time.

    Each iteration makes two sweeps over the rows.  The first accumulates
    :math:`K^\top a` (then :math:`b`); the second is row-local (:math:`a`).  With
    ``two_way`` the transposed problem (cost :math:`C^\top`, marginals :math:`\nu, \mu`) is
    iterated alongside from the same blocks: :math:`b' \leftarrow (\mu / K a')^f` is
    row-local in the first sweep, where :math:`K^\top b'` also accumulates
    (:math:`a' \leftarrow (\nu / K^\top b')^f`).  :math:`K` exists only one
    (block x M) slab at a time, in cache.

    Args:
        log2_kernel: ``log2_kernel(r0, r1)`` returns (B, r1 - r0, M) :math:`\log_2 K` of rows
            ``r0:r1`` (a view of a stored matrix, or computed on the fly).
        mu: (B, N) source marginals; rows without mass (padding) get zero scalings.
        nu: (B, M) target marginals.  Both must live where the blocks do (the blocks are
            only known once read, and reading one twice may mean computing it twice).
        num_iters: iterations; 1 reproduces SCOT's code.
        fi: the :func:`dampening` exponent (1 for balanced OT).
        two_way: also solve the transposed problem.
        block_rows: rows per block.
        on_final_block: called during the last sweep as ``(r0, r1, log2_kernel_block,
            scalings)`` once the block's final ``a`` is in ``scalings.a`` (``b`` and, for
            two-way, ``a_rev`` and ``b_rev`` are final by then).

    Returns:
        The :class:`Scalings`.
    """
    N = mu.shape[-1]
    a = _initial_a(mu)
    a_rev = _initial_a(nu) if two_way else None
    b_rev = torch.zeros_like(mu) if two_way else None
    out = Scalings(a, torch.zeros_like(nu), a_rev, b_rev, (mu > 0).sum(-1).to(mu.dtype), (nu > 0).sum(-1).to(nu.dtype))
    for it in range(num_iters):
        kta = torch.zeros_like(nu)
        ktb_rev = torch.zeros_like(nu) if two_way else None
        for r0 in range(0, N, block_rows):
            r1 = min(r0 + block_rows, N)
            K = torch.exp2(log2_kernel(r0, r1))
            kta += _coldot(out.a[:, r0:r1], K)
            if two_way:
                assert out.b_rev is not None and out.a_rev is not None and ktb_rev is not None
                out.b_rev[:, r0:r1] = _damp(_safe_div(mu[:, r0:r1], _rowdot(K, out.a_rev)), fi)
                ktb_rev += _coldot(out.b_rev[:, r0:r1], K)
        out.b = _damp(_safe_div(nu, kta), fi)
        if two_way:
            out.a_rev = _damp(_safe_div(nu, ktb_rev), fi)
        last = it == num_iters - 1
        out.a = torch.empty_like(out.a) if not last else out.a
        for r0 in range(0, N, block_rows):
            r1 = min(r0 + block_rows, N)
            block = log2_kernel(r0, r1)
            out.a[:, r0:r1] = _damp(_safe_div(mu[:, r0:r1], _rowdot(torch.exp2(block), out.b)), fi)
            if last and on_final_block is not None:
                on_final_block(r0, r1, block, out)
    return out


def with_eps_doublings(solve: Callable[[float], "torch.Tensor | None"], eps: float, max_doublings: int):
    """The ε policy: ``solve(eps)`` returns a result, or None when its scalings are not
    finite; ε is doubled until it succeeds, at most ``max_doublings`` times.

    Returns:
        (result, the ε that worked).

    Raises:
        ScotError: still not finite after the last doubling.
    """
    e = float(eps)
    for _ in range(max_doublings + 1):
        result = solve(e)
        if result is not None:
            return result, e
        e *= 2.0
    raise ScotError(f"Sinkhorn gave no finite plan even at eps {e / 2:g} after {max_doublings} doublings; use a larger "
                    "eps or sinkhorn_mode log", option="eps")


# --------------------------------------------------------------------------------------
# Any cost, any option: to a tolerance, in the log domain
@dataclass
class SinkhornResult:
    plan: torch.Tensor  # (B, N, M)
    iterations: int  # the most iterations any problem ran
    marginal_error: torch.Tensor | None  # (B,) L1 column-marginal violation, when measured
    log2_rows: torch.Tensor | None = None  # (B, N) log2 a
    log2_cols: torch.Tensor | None = None  # (B, M) log2 b


CHECK_EVERY = 8
"""With a tolerance on an accelerator, how many iterations run between two reads of the
convergence flags (each read waits for the device).  Problems that converged in between
are frozen, so results do not depend on it; on the CPU the flags are read every iteration."""


def sinkhorn(
    cost: torch.Tensor,
    mu: torch.Tensor,
    nu: torch.Tensor,
    eps: float,
    num_iters: int = 1,
    tol: float | None = None,
    log_domain: bool = False,
    tau: float | None = None,
) -> SinkhornResult:
    """Entropic OT plan for a batch of problems.

    Args:
        cost: (B, N, M) or (N, M) cost matrix.
        mu: (B, N) or (N,) non-negative source marginal (moved to the cost's device).
        nu: (B, M) or (M,) non-negative target marginal (moved to the cost's device).
        eps: entropic regularisation ε > 0.
        num_iters: maximum number of (b, a) update pairs; 1 reproduces SCOT's code.
        tol: each problem stops after the first iteration at which its L1 column-marginal
            error (balanced) or the relative change of its scalings (unbalanced) is below
            ``tol``; its scalings are then frozen while the others go on, so a problem's
            result does not depend on the rest of the batch.
        log_domain: iterate in the log domain (stable for small ε).
        tau: KL weight of the relaxed marginals (unbalanced OT); None for balanced OT.

    Returns:
        A :class:`SinkhornResult` whose plan has the input's batch shape.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    unbatched = cost.dim() == 2
    C = _batched(cost, 2)
    mu = _batched(mu, 1).to(device=C.device, dtype=C.dtype)
    nu = _batched(nu, 1).to(device=C.device, dtype=C.dtype)
    fi = dampening(eps, tau)
    log_k = C * (-1.0 / eps)
    solve = _log_scalings if log_domain else _plain_scalings
    alpha, beta, it, err = solve(log_k, mu, nu, num_iters, tol, fi)
    plan = torch.exp(log_k.add_(alpha.unsqueeze(-1)).add_(beta.unsqueeze(-2)))
    result = SinkhornResult(plan, it, err, alpha * _LOG2E, beta * _LOG2E)
    if unbatched:
        result.plan = result.plan[0]
        if result.marginal_error is not None:
            result.marginal_error = result.marginal_error[0]
    return result


class _Convergence:
    """Per-problem stopping for a tolerance: which problems converged, after how many
    iterations, and when to read that on the host (see :data:`CHECK_EVERY`)."""

    def __init__(self, batch: int, device: torch.device, tol: float | None, num_iters: int) -> None:
        self.tol, self.num_iters = tol, num_iters
        self.every = CHECK_EVERY if _device.is_accelerator(device) else 1
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.runs = torch.zeros(batch, dtype=torch.long, device=device)
        self.error: torch.Tensor | None = None
        self.most = 0

    def keep(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """``new`` for the problems still running, ``old`` for the converged ones."""
        return torch.where(self.done.unsqueeze(-1), old, new)

    def update(self, it: int, error: torch.Tensor) -> bool:
        """Record iteration ``it``'s (B,) errors; True when every problem has converged.

        The flags (and the iteration counts) are read on the host only at check points,
        the last iteration being one.
        """
        assert self.tol is not None
        self.error = error if self.error is None else torch.where(self.done, self.error, error)
        self.runs += (~self.done).long()
        self.done |= error < self.tol
        if it % self.every and it != self.num_iters:
            return False
        finished, most = _device.to_host(self.done.all(), self.runs.max())
        self.most = int(most)
        return bool(finished)

    def iterations(self, it: int) -> int:
        """The most iterations any problem ran (``it`` without a tolerance)."""
        return it if self.tol is None else self.most


def _plain_scalings(log_k, mu, nu, num_iters, tol, fi):
    """Natural-log scalings (log a, log b) of plain Sinkhorn; with the iteration count and error."""
    K = log_k.exp()
    a, b, it = _initial_a(mu), torch.zeros_like(nu), 0
    conv = _Convergence(mu.shape[0], mu.device, tol, num_iters)
    for it in range(1, num_iters + 1):
        a_prev, b_prev = a, b
        b = _damp(_safe_div(nu, _coldot(a, K)), fi)
        a = _damp(_safe_div(mu, _rowdot(K, b)), fi)
        if tol is not None:
            a, b = conv.keep(a_prev, a), conv.keep(b_prev, b)
            if fi == 1.0:  # balanced: rows hold exactly after the a-update; measure the columns
                err = (b * _coldot(a, K) - nu).abs().sum(-1)
            else:  # unbalanced: marginals never hold; measure the change of the scalings
                err = (a - a_prev).abs().amax(-1) / a.abs().amax(-1).clamp_min(1.0)
            if conv.update(it, err):
                break
    return a.log(), b.log(), conv.iterations(it), conv.error


def _log_scalings(log_k, mu, nu, num_iters, tol, fi):
    """Log-domain Sinkhorn: log-scalings by log-sum-exp (an all -inf slice gives -inf)."""
    log_mu, log_nu = mu.log(), nu.log()  # log 0 = -inf: zero-mass rows/columns
    alpha = _initial_a(mu).log()
    beta = torch.zeros_like(nu)
    it = 0
    conv = _Convergence(mu.shape[0], mu.device, tol, num_iters)
    for it in range(1, num_iters + 1):
        alpha_prev, beta_prev = alpha, beta
        beta = fi * (log_nu - torch.logsumexp(alpha.unsqueeze(-1) + log_k, dim=-2))
        beta = torch.where(nu > 0, beta, torch.full_like(beta, -torch.inf))
        alpha = fi * (log_mu - torch.logsumexp(beta.unsqueeze(-2) + log_k, dim=-1))
        alpha = torch.where(mu > 0, alpha, torch.full_like(alpha, -torch.inf))
        if tol is not None:
            alpha, beta = conv.keep(alpha_prev, alpha), conv.keep(beta_prev, beta)
            if fi == 1.0:
                col = torch.exp(alpha.unsqueeze(-1) + log_k + beta.unsqueeze(-2)).sum(-2)
                err = (col - nu).abs().sum(-1)
            else:
                change = (alpha - alpha_prev).abs()
                err = torch.where(torch.isfinite(change), change, torch.zeros_like(change)).amax(-1)
            if conv.update(it, err):
                break
    return alpha, beta, conv.iterations(it), conv.error


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
    log_domain: bool = False,
    tau: float | None = None,
    max_doublings: int = 10,
) -> tuple[torch.Tensor, VoteStats]:
    """SCOT's transport votes ``(N · P)^exp2`` of a batch (B, N, M) (or one (N, M)) of problems.

    Any solver option (:func:`sinkhorn`); the plain iteration follows the ε policy of the
    module docstring per problem.  ``N`` is the number of source rows with mass (the
    reference's ``len(src_feats)``).  The batch is solved together; whether each problem's
    scalings are finite is read on the host once per attempt, and only the problems that
    failed are solved again at the doubled ε.

    Args:
        cost: (B, N, M) or (N, M) cost.
        mu: (B, N) or (N,) source marginal; nu: (B, M) or (M,) target marginal (both
            moved to the cost's device).
        eps, num_iters, tol, log_domain, tau: as for :func:`sinkhorn`.
        exp2: the plan power.
        max_doublings: bound of the ε policy.
    """
    C = _batched(cost, 2)
    mu_b = _batched(mu, 1).to(device=C.device, dtype=C.dtype)
    nu_b = _batched(nu, 1).to(device=C.device, dtype=C.dtype)
    log2_count = (mu_b > 0).sum(-1).to(C.dtype).clamp_min(1.0).log2().unsqueeze(-1)  # (B, 1)
    votes = torch.empty_like(C)
    batch = C.shape[0]
    eps_used: list[float] = [float(eps)] * batch
    pending = list(range(batch))  # problems without a finite plan yet
    iterations = 0
    e = float(eps)
    for _ in range((0 if log_domain else max_doublings) + 1):
        pick = _picker(pending, batch, C.device)
        c, m, n = pick(C), pick(mu_b), pick(nu_b)
        res = sinkhorn(c, m, n, e, num_iters, tol, log_domain=log_domain, tau=tau)
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
            for i in solved:
                eps_used[i] = e
            iterations = max(iterations, res.iterations)
        pending = [p for p, ok in zip(pending, flags) if not ok]
        if not pending:
            return (votes[0] if cost.dim() == 2 else votes), VoteStats(eps_used, iterations)
        e *= 2.0
    raise ScotError(f"Sinkhorn gave no finite plan even at eps {e / 2:g} after {0 if log_domain else max_doublings} "
                    "doublings; use a larger eps or sinkhorn_mode log", option="eps")


def _picker(rows: list[int], batch: int, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function selecting ``rows`` of a (batch, ...) tensor (no copy when all are selected)."""
    if len(rows) == batch:
        return lambda x: x
    index = torch.tensor(rows, device=device)
    return lambda x: x.index_select(0, index)
