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
when balanced).  SCOT's reference runs **one** iteration; its votes, the rescaled plan
:math:`(N P)^{p}`, are :mod:`scot.votes`.

**One loop, one operator per variant** (as in geomloss): :func:`_iterate` alternates the
two updates above, and with a tolerance freezes converged problems; each variant supplies
only how the updates read the kernel:

* ``kernel`` (:func:`kernel_sinkhorn`, the pipeline's): plain updates on :math:`\log_2 K`
  read one block of rows at a time (a stored matrix, or recomputed block by block by the
  low-memory path), optionally solving the transposed problem alongside for two-way
  matching; a fixed number of iterations;
* ``plain`` (:func:`sinkhorn`, ``method="plain"``): the same updates on a dense
  :math:`K`, to a marginal tolerance;
* ``log`` (:func:`sinkhorn`, ``method="log"``): :math:`\alpha = \log a`,
  :math:`\beta = \log b` updated with log-sum-exp, so :math:`K` never underflows and
  :math:`\varepsilon = 10^{-3}` works.

Unbalanced OT is not a variant but the dampening :math:`f < 1` every operator applies.
Rows/columns with zero mass (padding in a batch of pairs of different sizes) get zero
scalings and so zero plan entries.

**ε policy** (one, :func:`eps_doublings`, for every path that can fail): when the plain
iteration gives a non-finite scaling (:math:`K` underflowed), ε is doubled, at most
``max_doublings`` times, as the reference code does; past that the solve fails with a
message suggesting the log domain.  The pipeline's in-memory kernel path never needs it:
it is only chosen where :math:`K` cannot underflow (:mod:`scot.solver`).

References:
    Cuturi, "Sinkhorn Distances", NeurIPS 2013.
    Chizat, Peyré, Schmitzer, Vialard, "Scaling algorithms for unbalanced optimal transport
    problems", Math. Comp. 2018.
    Liu, Zhu, Yamada, Yang, "Semantic Correspondence as an Optimal Transport Problem", CVPR 2020.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


# --------------------------------------------------------------------------------------
# The one loop
class _Operator:
    r"""How one variant applies the updates to its kernel: :meth:`start` (:math:`a = \mathbb{1}/n`
    over the rows with mass, :math:`b = 0`), :meth:`cols` (:math:`b \leftarrow (\nu / K^\top a)^f`)
    and :meth:`rows` (:math:`a \leftarrow (\mu / K b)^f`; ``last``: the final one).  Scalings
    are (B, N) and (B, M), in the operator's representation (:math:`a, b` or their logs)."""

    def start(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def cols(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rows(self, b: torch.Tensor, last: bool) -> torch.Tensor:
        raise NotImplementedError

    def error(self, a: torch.Tensor, b: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
        """(B,) how far each problem is from convergence, compared with a tolerance."""
        raise NotImplementedError(f"{type(self).__name__} runs a fixed number of iterations")

    def logs(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The natural logs of the scalings."""
        return a.log(), b.log()


def _iterate(op: _Operator, batch: int, device: torch.device, num_iters: int,
             tol: float | None = None) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
    """Alternate ``b = op.cols(a)`` and ``a = op.rows(b)`` ``num_iters`` times; with ``tol``,
    stop each problem at the first iteration whose :meth:`_Operator.error` is below it.

    Returns:
        (a (B, N), b (B, M), the most iterations any problem ran, the (B,) errors or None).
    """
    a, b = op.start()
    conv = _Convergence(batch, device, tol, num_iters) if tol is not None else None
    it = 0
    for it in range(1, num_iters + 1):
        a_prev, b_prev = a, b
        b = op.cols(a)
        a = op.rows(b, last=it == num_iters)
        if conv is not None:
            a, b = conv.keep(a_prev, a), conv.keep(b_prev, b)
            if conv.update(it, op.error(a, b, a_prev)):
                break
    return (a, b, it, None) if conv is None else (a, b, conv.most, conv.error)


class _Convergence:
    """Per-problem stopping for a tolerance: which problems converged, after how many
    iterations, and when to read that on the host (see :data:`CHECK_EVERY`)."""

    def __init__(self, batch: int, device: torch.device, tol: float, num_iters: int) -> None:
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
        self.error = error if self.error is None else torch.where(self.done, self.error, error)
        self.runs += (~self.done).long()
        self.done |= error < self.tol
        if it % self.every and it != self.num_iters:
            return False
        finished, most = _device.to_host(self.done.all(), self.runs.max())
        self.most = int(most)  # the most iterations any problem ran
        return bool(finished)


CHECK_EVERY = 8
"""With a tolerance on an accelerator, how many iterations run between two reads of the
convergence flags (each read waits for the device).  Problems that converged in between
are frozen, so results do not depend on it; on the CPU the flags are read every iteration."""


# --------------------------------------------------------------------------------------
# Operator ``kernel``: plain updates on a log2-kernel, one block of rows at a time
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


class _KernelBlocks(_Operator):
    r"""Plain updates on :math:`K = 2^{L}`, reading :math:`L` one block of rows at a time.

    :meth:`cols` sweeps the rows accumulating :math:`K^\top a`; with ``two_way`` the
    transposed problem's :math:`b' \leftarrow (\mu / K a')^f` is row-local in the same
    sweep, where :math:`K^\top b'` also accumulates (:math:`a' \leftarrow (\nu / K^\top b')^f`).
    :meth:`rows` is row-local and hands every block of the final sweep to ``on_final_block``.
    """

    def __init__(self, log2_kernel: Callable[[int, int], torch.Tensor], mu: torch.Tensor, nu: torch.Tensor,
                 fi: float, two_way: bool, block_rows: int,
                 on_final_block: Callable[[int, int, torch.Tensor, Scalings], None] | None) -> None:
        self.block, self.mu, self.nu, self.fi = log2_kernel, mu, nu, fi
        self.two_way, self.block_rows, self.on_final_block = two_way, block_rows, on_final_block
        self.scalings = Scalings(_initial_a(mu), torch.zeros_like(nu), _initial_a(nu) if two_way else None,
                                 torch.zeros_like(mu) if two_way else None, (mu > 0).sum(-1).to(mu.dtype),
                                 (nu > 0).sum(-1).to(nu.dtype))

    def _blocks(self) -> range:
        return range(0, self.mu.shape[-1], self.block_rows)

    def start(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scalings.a, self.scalings.b

    def cols(self, a: torch.Tensor) -> torch.Tensor:
        sc, mu, fi = self.scalings, self.mu, self.fi
        kta = torch.zeros_like(self.nu)
        ktb_rev = torch.zeros_like(self.nu) if self.two_way else None
        for r0 in self._blocks():
            r1 = min(r0 + self.block_rows, mu.shape[-1])
            K = torch.exp2(self.block(r0, r1))
            kta += _coldot(a[:, r0:r1], K)
            if ktb_rev is not None:
                assert sc.b_rev is not None and sc.a_rev is not None
                sc.b_rev[:, r0:r1] = _damp(_safe_div(mu[:, r0:r1], _rowdot(K, sc.a_rev)), fi)
                ktb_rev += _coldot(sc.b_rev[:, r0:r1], K)
        sc.b = _damp(_safe_div(self.nu, kta), fi)
        if ktb_rev is not None:
            sc.a_rev = _damp(_safe_div(self.nu, ktb_rev), fi)
        return sc.b

    def rows(self, b: torch.Tensor, last: bool) -> torch.Tensor:
        sc, mu = self.scalings, self.mu
        a = sc.a = torch.empty_like(sc.a)
        for r0 in self._blocks():
            r1 = min(r0 + self.block_rows, mu.shape[-1])
            block = self.block(r0, r1)
            a[:, r0:r1] = _damp(_safe_div(mu[:, r0:r1], _rowdot(torch.exp2(block), b)), self.fi)
            if last and self.on_final_block is not None:
                self.on_final_block(r0, r1, block, sc)
        return a


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

    Each iteration makes two sweeps over the rows (:class:`_KernelBlocks`); :math:`K`
    exists only one (block x M) slab at a time, in cache.  With ``two_way`` the transposed
    problem (cost :math:`C^\top`, marginals :math:`\nu, \mu`) is iterated alongside from
    the same blocks.

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
    op = _KernelBlocks(log2_kernel, mu, nu, fi, two_way, block_rows, on_final_block)
    _iterate(op, mu.shape[0], mu.device, num_iters)
    return op.scalings


# --------------------------------------------------------------------------------------
# Operators ``plain`` and ``log``: any cost, to a tolerance
class _DenseKernel(_Operator):
    """Plain updates on a dense kernel :math:`K = e^{\\log K}`; error: the L1 column-marginal
    violation (balanced) or the relative change of ``a`` (unbalanced)."""

    def __init__(self, log_k: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor, fi: float) -> None:
        self.K, self.mu, self.nu, self.fi = log_k.exp(), mu, nu, fi

    def start(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _initial_a(self.mu), torch.zeros_like(self.nu)

    def cols(self, a: torch.Tensor) -> torch.Tensor:
        return _damp(_safe_div(self.nu, _coldot(a, self.K)), self.fi)

    def rows(self, b: torch.Tensor, last: bool) -> torch.Tensor:
        return _damp(_safe_div(self.mu, _rowdot(self.K, b)), self.fi)

    def error(self, a: torch.Tensor, b: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
        if self.fi == 1.0:  # balanced: rows hold exactly after the a-update; measure the columns
            return (b * _coldot(a, self.K) - self.nu).abs().sum(-1)
        return (a - a_prev).abs().amax(-1) / a.abs().amax(-1).clamp_min(1.0)  # unbalanced: marginals never hold


class _LogKernel(_Operator):
    r"""Log-domain updates :math:`\beta \leftarrow f(\log\nu - \mathrm{LSE}_i(\alpha_i + \log K_{ij}))`
    and :math:`\alpha \leftarrow f(\log\mu - \mathrm{LSE}_j(\beta_j + \log K_{ij}))` (an all
    :math:`-\infty` slice gives :math:`-\infty`); scalings are :math:`\alpha, \beta`."""

    def __init__(self, log_k: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor, fi: float) -> None:
        self.log_k, self.mu, self.nu, self.fi = log_k, mu, nu, fi
        self.log_mu, self.log_nu = mu.log(), nu.log()  # log 0 = -inf: zero-mass rows/columns

    def start(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _initial_a(self.mu).log(), torch.zeros_like(self.nu)

    def cols(self, a: torch.Tensor) -> torch.Tensor:
        beta = self.fi * (self.log_nu - torch.logsumexp(a.unsqueeze(-1) + self.log_k, dim=-2))
        return torch.where(self.nu > 0, beta, torch.full_like(beta, -torch.inf))

    def rows(self, b: torch.Tensor, last: bool) -> torch.Tensor:
        alpha = self.fi * (self.log_mu - torch.logsumexp(b.unsqueeze(-2) + self.log_k, dim=-1))
        return torch.where(self.mu > 0, alpha, torch.full_like(alpha, -torch.inf))

    def error(self, a: torch.Tensor, b: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
        if self.fi == 1.0:
            col = torch.exp(a.unsqueeze(-1) + self.log_k + b.unsqueeze(-2)).sum(-2)
            return (col - self.nu).abs().sum(-1)
        change = (a - a_prev).abs()
        return torch.where(torch.isfinite(change), change, torch.zeros_like(change)).amax(-1)

    def logs(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a, b


METHODS = {"plain": _DenseKernel, "log": _LogKernel}
"""The ``method`` of :func:`sinkhorn`: ``plain`` (scalings :math:`a, b`) or ``log`` (log-sum-exp)."""


@dataclass
class SinkhornResult:
    plan: torch.Tensor  # (B, N, M)
    iterations: int  # the most iterations any problem ran
    marginal_error: torch.Tensor | None  # (B,) L1 column-marginal violation, when measured
    log2_rows: torch.Tensor | None = None  # (B, N) log2 a
    log2_cols: torch.Tensor | None = None  # (B, M) log2 b


def sinkhorn(
    cost: torch.Tensor,
    mu: torch.Tensor,
    nu: torch.Tensor,
    eps: float,
    num_iters: int = 1,
    tol: float | None = None,
    method: str = "plain",
    tau: float | None = None,
) -> SinkhornResult:
    r"""Entropic OT plan :math:`P = \operatorname{diag}(a) K \operatorname{diag}(b)` for a batch of problems.

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
        method: ``plain`` or ``log`` (log-domain iterations, stable for small ε); see :data:`METHODS`.
        tau: KL weight of the relaxed marginals (unbalanced OT); None for balanced OT.

    Returns:
        A :class:`SinkhornResult` whose plan has the input's batch shape.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    unbatched = cost.dim() == 2
    C = _batched(cost, 2)
    mu = _batched(mu, 1).to(device=C.device, dtype=C.dtype)
    nu = _batched(nu, 1).to(device=C.device, dtype=C.dtype)
    log_k = C * (-1.0 / eps)
    op = METHODS[method](log_k, mu, nu, dampening(eps, tau))
    a, b, it, err = _iterate(op, mu.shape[0], mu.device, num_iters, tol)
    alpha, beta = op.logs(a, b)
    plan = torch.exp(log_k.add_(alpha.unsqueeze(-1)).add_(beta.unsqueeze(-2)))
    result = SinkhornResult(plan, it, err, alpha * _LOG2E, beta * _LOG2E)
    if unbatched:
        result.plan = result.plan[0]
        if result.marginal_error is not None:
            result.marginal_error = result.marginal_error[0]
    return result


# --------------------------------------------------------------------------------------
# The ε policy, and SCOT's votes
def eps_doublings(solve: Callable[[float, list[int]], list[bool]], eps: float, batch: int,
                  max_doublings: int) -> list[float]:
    """The ε policy: ``solve(e, pending)`` solves the problems ``pending`` (indices into the
    batch) at ``e``, keeps the results of those whose scalings are finite and returns one
    flag per pending problem; the others are solved again at ``2 e``, at most
    ``max_doublings`` times.

    Returns:
        The ε that worked, per problem.

    Raises:
        ScotError: a problem is still not finite after the last doubling.
    """
    used = [float(eps)] * batch
    pending = list(range(batch))
    e = float(eps)
    for _ in range(max_doublings + 1):
        flags = solve(e, pending)
        for i, ok in zip(pending, flags):
            if ok:
                used[i] = e
        pending = [p for p, ok in zip(pending, flags) if not ok]
        if not pending:
            return used
        e *= 2.0
    raise ScotError(f"Sinkhorn gave no finite plan even at eps {e / 2:g} after {max_doublings} doublings; use a larger "
                    "eps or sinkhorn_mode log", option="eps")
