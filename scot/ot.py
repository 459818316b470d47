r"""Step 3 of the pipeline: entropic optimal transport (Sinkhorn), batched.

Given a cost :math:`C \in \mathbb{R}^{B\times N\times M}_{\ge 0}` and marginals
:math:`\mu \in \Delta^N`, :math:`\nu \in \Delta^M`, the entropic plan is

.. math::
    P = \operatorname{diag}(a)\, K \operatorname{diag}(b), \qquad K = e^{-C/\varepsilon},

with scalings found by alternating projections from :math:`a = \mathbb{1}/N`:

.. math::
    b \leftarrow \nu \oslash K^\top a, \qquad a \leftarrow \mu \oslash K b .

SCOT's reference runs **one** iteration; :func:`sinkhorn` runs any number, or to a
marginal tolerance.  The plan is always formed by broadcasting (``a[:, None] * K *
b[None, :]``), never with the :math:`O(n^3)` diagonal matrix products of the reference.

Variants:

* ``log_domain=True`` iterates the log-scalings :math:`\alpha = \log a, \beta = \log b`
  with log-sum-exp, so :math:`K` never underflows: it runs to convergence at
  :math:`\varepsilon = 10^{-3}` where the plain iteration produces NaN.
* ``tau`` relaxes the marginal constraints to KL penalties of weight :math:`\tau`
  (unbalanced OT, Chizat et al. 2018): each update is raised to :math:`\tau / (\tau +
  \varepsilon)`, matching POT's ``sinkhorn_unbalanced(reg=ε, reg_m=τ)``.

Rows/columns with zero mass (padding in a batch of pairs of different sizes) get zero
scalings and so zero plan entries; with all masses positive this is exactly the textbook
iteration above.

:func:`scot_votes` wraps the solver with SCOT's conventions: retry with doubled
:math:`\varepsilon` while the plan has NaN (bounded), then :math:`P \leftarrow
(N P)^{\text{exp2}}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

# Largest C/ε for which exp(-C/ε) stays a normal float32 (e^-80 ≈ 1.8e-35 > 1.2e-38).
_SAFE_EXPONENT = 80.0


@dataclass
class SinkhornResult:
    plan: torch.Tensor  # (B, N, M)
    iterations: int
    marginal_error: torch.Tensor | None  # (B,) L1 column-marginal violation, when measured
    scalings_finite: bool = True  # plain solver: a and b finite, i.e. the plan has no NaN


def _batched(x: torch.Tensor, dims: int) -> torch.Tensor:
    return x.unsqueeze(0) if x.dim() == dims else x


def _initial_a(mu: torch.Tensor) -> torch.Tensor:
    """a = 1/n over the rows that carry mass (all rows for the reference's marginals)."""
    support = (mu > 0).to(mu.dtype)
    return support / support.sum(-1, keepdim=True).clamp_min(1.0)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, with 0 where num == 0 (zero-mass padding); den == 0 elsewhere gives inf."""
    return torch.where(num > 0, num / den, torch.zeros((), dtype=num.dtype, device=num.device))


def _mv(K: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched K @ v: (B, N, M) x (B, M) -> (B, N)."""
    return torch.bmm(K, v.unsqueeze(-1)).squeeze(-1)


def _tmv(K: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched Kᵀ @ v: (B, N, M) x (B, N) -> (B, M)."""
    return torch.bmm(v.unsqueeze(1), K).squeeze(1)


def sinkhorn(
    cost: torch.Tensor,
    mu: torch.Tensor,
    nu: torch.Tensor,
    eps: float,
    num_iters: int = 1,
    tol: float | None = None,
    log_domain: bool = False,
    tau: float | None = None,
    inplace: bool = False,
) -> SinkhornResult:
    """Entropic OT plan for a batch of problems.

    Args:
        cost: (B, N, M) or (N, M) cost matrix.
        mu, nu: (B, N) / (B, M) non-negative marginals (or unbatched).
        eps: entropic regularisation ε > 0.
        num_iters: maximum number of (b, a) update pairs; 1 reproduces SCOT's code.
        tol: stop once every problem's L1 column-marginal error (balanced) or the relative
            change of its scalings (unbalanced) is below ``tol``.
        log_domain: iterate in the log domain (stable for small ε).
        tau: KL weight of the relaxed marginals (unbalanced OT); None for balanced OT.
        inplace: let the plain solver overwrite ``cost`` with the plan (saves memory).

    Returns:
        A :class:`SinkhornResult` whose plan has the input's batch shape.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    unbatched = cost.dim() == 2
    C, mu, nu = _batched(cost, 2), _batched(mu, 1).to(cost.dtype), _batched(nu, 1).to(cost.dtype)
    fi = dampening(eps, tau)
    if log_domain:
        result = _sinkhorn_log(C, mu, nu, eps, num_iters, tol, fi)
    else:
        result = _sinkhorn_plain(C, mu, nu, eps, num_iters, tol, fi, inplace)
    if unbatched:
        result.plan = result.plan[0]
        if result.marginal_error is not None:
            result.marginal_error = result.marginal_error[0]
    return result


def _plain_scalings(K, mu, nu, num_iters, tol, fi):
    """Scalings (a, b) of plain Sinkhorn on the kernel K; returns (a, b, iterations, error)."""
    a = _initial_a(mu)
    b = None
    err = None
    it = 0
    for it in range(1, num_iters + 1):
        a_prev = a
        b = _safe_div(nu, _tmv(K, a))
        if fi != 1.0:
            b = b.pow(fi)
        a = _safe_div(mu, _mv(K, b))
        if fi != 1.0:
            a = a.pow(fi)
        if tol is not None:
            if fi == 1.0:  # balanced: rows hold exactly after the a-update; measure the columns
                err = (b * _tmv(K, a) - nu).abs().sum(-1)
            else:  # unbalanced: marginals never hold; measure the change of the scalings
                err = (a - a_prev).abs().amax(-1) / a.abs().amax(-1).clamp_min(1.0)
            if bool((err < tol).all()):
                break
    return a, b, it, err


def _finite(*xs: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(x).all()) for x in xs)


def _sinkhorn_plain(C, mu, nu, eps, num_iters, tol, fi, inplace, row_scale=None) -> SinkhornResult:
    K = C.mul_(-1.0 / eps).exp_() if inplace else torch.exp(C * (-1.0 / eps))
    a, b, it, err = _plain_scalings(K, mu, nu, num_iters, tol, fi)
    if row_scale is not None:  # fold a constant per-problem factor into a: saves a pass over P
        a = a * row_scale.unsqueeze(-1)
    finite = _finite(a, b)
    plan = K.mul_(a.unsqueeze(-1)).mul_(b.unsqueeze(-2)) if inplace else a.unsqueeze(-1) * K * b.unsqueeze(-2)
    return SinkhornResult(plan, it, err, finite)


def _lse(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log-sum-exp that returns -inf (not NaN) for all -inf slices."""
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return (x - m).exp().sum(dim).log() + m.squeeze(dim)


def _sinkhorn_log(C, mu, nu, eps, num_iters, tol, fi) -> SinkhornResult:
    log_k = C * (-1.0 / eps)
    log_mu, log_nu = mu.log(), nu.log()  # log 0 = -inf: zero-mass rows/columns
    alpha = _initial_a(mu).log()
    beta = torch.zeros_like(nu)
    err = None
    it = 0
    for it in range(1, num_iters + 1):
        alpha_prev = alpha
        beta = fi * (log_nu - _lse(alpha.unsqueeze(-1) + log_k, dim=-2))
        beta = torch.where(nu > 0, beta, torch.full_like(beta, -torch.inf))
        alpha = fi * (log_mu - _lse(beta.unsqueeze(-2) + log_k, dim=-1))
        alpha = torch.where(mu > 0, alpha, torch.full_like(alpha, -torch.inf))
        if tol is not None:
            if fi == 1.0:
                col = torch.exp(alpha.unsqueeze(-1) + log_k + beta.unsqueeze(-2)).sum(-2)
                err = (col - nu).abs().sum(-1)
            else:
                change = (alpha - alpha_prev).abs()
                err = torch.where(torch.isfinite(change), change, torch.zeros_like(change)).amax(-1)
            if bool((err < tol).all()):
                break
    plan = torch.exp(log_k.add_(alpha.unsqueeze(-1)).add_(beta.unsqueeze(-2)))
    return SinkhornResult(plan, it, err)


@dataclass
class VoteStats:
    eps_used: list[float]
    iterations: int
    fell_back_to_log: bool


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
    consume_cost: bool = False,
    cost_bound: float | None = None,
) -> tuple[torch.Tensor, VoteStats]:
    """SCOT's transport votes ``(N · P)^exp2`` for a batch (B, N, M) of problems.

    While a problem's plain-Sinkhorn plan has NaN (overflow at small ε), ε is doubled for
    that problem, at most ``max_doublings`` times; if it still fails, the log-domain solver
    runs at the original ε.  ``N`` is the number of source rows with mass (the reference's
    ``len(src_feats)``).

    With ``consume_cost`` the cost buffer may be overwritten by the result.  That happens
    only for one plain iteration with ``max(C)/ε <= 80`` (``cost_bound`` can supply
    ``max(C)``), where ``K`` cannot underflow, every scaling is finite and no retry is ever
    needed.
    """
    C = _batched(cost, 2)
    mu_b, nu_b = _batched(mu, 1).to(C.dtype), _batched(nu, 1).to(C.dtype)
    batch = C.shape[0]
    eps_used = [float(eps)] * batch
    n_rows = (mu_b > 0).sum(-1).to(C.dtype)  # (B,)
    fell_back = False

    if log_domain:
        res = sinkhorn(C, mu_b, nu_b, eps, num_iters, tol, log_domain=True, tau=tau)
        plan = res.plan
    else:
        bound = float(C.amax()) if cost_bound is None else float(cost_bound)
        inplace = consume_cost and num_iters == 1 and bound / eps <= _SAFE_EXPONENT
        if inplace:
            # Fast path: K overwrites C, and the rescaling by N is folded into the scalings.
            fi = dampening(eps, tau)
            res = _sinkhorn_plain(C, mu_b, nu_b, eps, 1, tol, fi, True, row_scale=n_rows)
            plan = res.plan
            # With K finite and positive, P has NaN exactly when a scaling is not finite,
            # which the bound above excludes; checking the O(N + M) scalings suffices.
            if not res.scalings_finite:
                raise RuntimeError("Sinkhorn produced NaN although exp(-C/eps) cannot underflow")
            votes = _power(plan, exp2)
            return (votes[0] if cost.dim() == 2 else votes), VoteStats(eps_used, res.iterations, False)
        res = sinkhorn(C, mu_b, nu_b, eps, num_iters, tol, tau=tau)
        plan = res.plan
        bad = torch.isnan(plan).flatten(1).any(-1)
        if bool(bad.any()):
            for i in torch.nonzero(bad).flatten().tolist():
                e, solved = float(eps), None
                for _ in range(max_doublings):
                    e *= 2.0
                    trial = sinkhorn(C[i], mu_b[i], nu_b[i], e, num_iters, tol, tau=tau).plan
                    if not bool(torch.isnan(trial).any()):
                        solved = trial
                        break
                if solved is None:
                    e, fell_back = float(eps), True
                    solved = sinkhorn(C[i], mu_b[i], nu_b[i], eps, num_iters, tol, log_domain=True, tau=tau).plan
                plan[i] = solved
                eps_used[i] = e

    # N·P >= 0 by construction, so the reference's clamp(min=0) is a no-op here.
    votes = _power(plan.mul_(n_rows.view(-1, 1, 1)), exp2)
    return (votes[0] if cost.dim() == 2 else votes), VoteStats(eps_used, res.iterations, fell_back)


def _power(votes: torch.Tensor, exp2: float) -> torch.Tensor:
    """votes ** exp2 in place (sqrt for the presets' 0.5): the plan power of :func:`scot_votes`."""
    if exp2 == 1.0:
        return votes
    return votes.sqrt_() if exp2 == 0.5 else votes.pow_(exp2)


def dampening(eps: float, tau: float | None) -> float:
    r"""The exponent :math:`\tau / (\tau + \varepsilon)` of unbalanced Sinkhorn updates (1 when balanced)."""
    return 1.0 if tau is None else tau / (tau + eps)


# --------------------------------------------------------------------------------------
# SCOT's solver on a log2-kernel, one block of rows at a time
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
    rows: torch.Tensor  # (B,) rows with mass (the reference's N of N·P)
    cols: torch.Tensor  # (B,) columns with mass

    def finite(self) -> bool:
        parts = [self.a, self.b] + ([self.a_rev, self.b_rev] if self.a_rev is not None else [])
        return all(bool(torch.isfinite(p).all()) for p in parts)  # type: ignore[arg-type]


def _rowdot(block: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, r, M) x (B, M) -> (B, r): each row of the block dotted with v."""
    return torch.bmm(block, v.unsqueeze(-1)).squeeze(-1)


def _coldot(v: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """(B, r) x (B, r, M) -> (B, M): the block's columns dotted with v."""
    return torch.bmm(v.unsqueeze(1), block).squeeze(1)


def kernel_sinkhorn(
    log2_kernel: Callable[[int, int], torch.Tensor],
    mu: torch.Tensor,
    nu: torch.Tensor,
    *,
    num_iters: int = 1,
    fi: float = 1.0,
    two_way: bool = False,
    block_rows: int = 256,
    on_final_block: Callable[[int, int, torch.Tensor, torch.Tensor, Scalings], None] | None = None,
) -> Scalings:
    r"""Plain Sinkhorn on :math:`K = 2^{L}`, reading :math:`L` one block of rows at a time.

    Each iteration makes two sweeps over the rows:

    .. math::
        b \leftarrow \Big(\frac{\nu}{K^\top a}\Big)^{f}, \qquad
        a \leftarrow \Big(\frac{\mu}{K b}\Big)^{f}

    with :math:`f` the :func:`dampening` exponent.  The first sweep accumulates
    :math:`K^\top a`; the second is row-local.  With ``two_way`` the transposed problem
    (cost :math:`C^\top`, marginals :math:`\nu, \mu`) is iterated alongside, from the same
    kernel blocks: :math:`b' \leftarrow (\mu / K a')^f` is row-local in the first sweep,
    and :math:`a' \leftarrow (\nu / K^\top b')^f` accumulates there too.  :math:`K` exists
    only one (block x M) slab at a time, in cache.

    Args:
        log2_kernel: ``log2_kernel(r0, r1)`` returns (B, r1 - r0, M) :math:`\log_2 K` of rows
            ``r0:r1`` (a view of a stored matrix, or computed on the fly).
        mu: (B, N) source marginals; rows without mass (padding) get zero scalings.
        nu: (B, M) target marginals.
        num_iters: iterations; 1 reproduces SCOT's code.
        fi: the dampening exponent (1 for balanced OT).
        two_way: also solve the transposed problem.
        block_rows: rows per block.
        on_final_block: called in the last sweep as ``(r0, r1, log2_kernel_block,
            a_block, scalings)`` once the block's final ``a`` is known (``scalings.b`` and,
            for two-way, ``a_rev``/``b_rev`` are final by then).

    Returns:
        The :class:`Scalings`.
    """
    B, N = mu.shape
    M = nu.shape[-1]
    a = _initial_a(mu)
    a_rev = _initial_a(nu) if two_way else None
    b_rev = torch.zeros_like(mu) if two_way else None
    b = torch.zeros_like(nu)
    rows = (mu > 0).sum(-1).to(mu.dtype)
    cols = (nu > 0).sum(-1).to(nu.dtype)
    out = Scalings(a, b, a_rev, b_rev, rows, cols)
    for it in range(num_iters):
        kta = torch.zeros_like(nu)
        ktb_rev = torch.zeros_like(nu) if two_way else None
        for r0 in range(0, N, block_rows):
            r1 = min(r0 + block_rows, N)
            K = torch.exp2(log2_kernel(r0, r1))
            kta += _coldot(a[:, r0:r1], K)
            if two_way:
                assert b_rev is not None and a_rev is not None and ktb_rev is not None
                b_rev[:, r0:r1] = _damp(_safe_div(mu[:, r0:r1], _rowdot(K, a_rev)), fi)
                ktb_rev += _coldot(b_rev[:, r0:r1], K)
        out.b = b = _damp(_safe_div(nu, kta), fi)
        if two_way:
            out.a_rev = a_rev = _damp(_safe_div(nu, ktb_rev), fi)
        last = it == num_iters - 1
        new_a = torch.empty_like(a)
        for r0 in range(0, N, block_rows):
            r1 = min(r0 + block_rows, N)
            block = log2_kernel(r0, r1)
            new_a[:, r0:r1] = _damp(_safe_div(mu[:, r0:r1], _rowdot(torch.exp2(block), b)), fi)
            if last and on_final_block is not None:
                on_final_block(r0, r1, block, new_a[:, r0:r1], out)
        out.a = a = new_a
    return out


def _damp(x: torch.Tensor, fi: float) -> torch.Tensor:
    return x if fi == 1.0 else x.pow_(fi)


def log2_votes(
    log2_kernel: torch.Tensor, row_scaling: torch.Tensor, col_scaling: torch.Tensor, count: torch.Tensor,
    exp2: float, out: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""SCOT's votes :math:`(n\, a_i K_{ij} b_j)^{p}` of a block, as
    :math:`2^{\,p\,(\log_2 K_{ij} + \log_2(n a_i) + \log_2 b_j)}`.

    Args:
        log2_kernel: (B, r, M) :math:`\log_2 K`.
        row_scaling: (B, r) :math:`a` of the block's rows.
        col_scaling: (B, M) :math:`b`.
        count: (B,) :math:`n`, the rows with mass of each problem.
        exp2: the plan power :math:`p`.
        out: where to write (may be ``log2_kernel`` itself); a new tensor if None.

    Zero scalings (padding) give zero votes.
    """
    rows = (row_scaling * count.unsqueeze(-1)).log2_().unsqueeze(-1)
    cols = col_scaling.log2().unsqueeze(-2)
    out = torch.add(log2_kernel, rows, out=out) if out is not None else log2_kernel + rows
    out.add_(cols)
    if exp2 != 1.0:
        out.mul_(exp2)
    return out.exp2_()
