"""Sinkhorn solver: agreement with POT, the 1-iteration formula, batching, stability."""

from __future__ import annotations

import numpy as np
import ot as pot
import pytest
import torch

from scot.ot import sinkhorn
from scot.votes import scot_votes


def random_problem(n: int, m: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(n, m, generator=g, dtype=dtype)
    mu = torch.rand(n, generator=g, dtype=dtype) + 0.1
    nu = torch.rand(m, generator=g, dtype=dtype) + 0.1
    return cost, mu / mu.sum(), nu / nu.sum()


@pytest.mark.parametrize("n,m,eps,seed", [(7, 5, 0.1, 0), (30, 40, 0.05, 1), (64, 48, 0.2, 2)])
def test_converged_plan_matches_pot(n, m, eps, seed):
    cost, mu, nu = random_problem(n, m, seed)
    ours = sinkhorn(cost, mu, nu, eps, num_iters=20000, tol=1e-12).plan
    ref = pot.sinkhorn(mu.numpy(), nu.numpy(), cost.numpy(), eps, numItermax=20000, stopThr=1e-13)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5, rtol=0)
    # and in float32, the precision the pipeline runs in
    ours32 = sinkhorn(cost.float(), mu.float(), nu.float(), eps, num_iters=20000, tol=1e-6).plan
    np.testing.assert_allclose(ours32.double().numpy(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["plain", "log"])
def test_marginals_hold_at_convergence(method):
    cost, mu, nu = random_problem(50, 70, 3)
    plan = sinkhorn(cost, mu, nu, 0.05, num_iters=50000, tol=1e-11, method=method).plan
    torch.testing.assert_close(plan.sum(1), mu, atol=1e-10, rtol=0)
    torch.testing.assert_close(plan.sum(0), nu, atol=1e-10, rtol=0)


def test_one_iteration_equals_the_reference_formula():
    cost, mu, nu = random_problem(40, 30, 4, dtype=torch.float32)
    eps = 0.05
    K = torch.exp(-cost / eps)
    a = torch.full((40, 1), 1 / 40)
    b = nu.view(-1, 1) / (K.t() @ a)
    a = mu.view(-1, 1) / (K @ b)
    expected = torch.diag(a[:, 0]) @ K @ torch.diag(b[:, 0])
    plan = sinkhorn(cost, mu, nu, eps, num_iters=1).plan
    torch.testing.assert_close(plan, expected, rtol=1e-5, atol=1e-9)
    # After one iteration the row marginals hold exactly; the column ones do not yet.
    torch.testing.assert_close(plan.sum(1), mu, rtol=1e-5, atol=1e-7)
    assert (plan.sum(0) - nu).abs().max() > 1e-4


def test_batched_equals_looped():
    problems = [random_problem(25, 35, s, dtype=torch.float32) for s in range(4)]
    C = torch.stack([p[0] for p in problems])
    MU = torch.stack([p[1] for p in problems])
    NU = torch.stack([p[2] for p in problems])
    for kwargs in ({"num_iters": 1}, {"num_iters": 30}, {"num_iters": 30, "method": "log"}, {"num_iters": 30, "tau": 0.5}):
        batched = sinkhorn(C, MU, NU, 0.05, **kwargs).plan
        for i, (c, mu, nu) in enumerate(problems):
            torch.testing.assert_close(batched[i], sinkhorn(c, mu, nu, 0.05, **kwargs).plan, rtol=1e-5, atol=1e-10)


def test_zero_mass_padding_equals_the_unpadded_problem():
    cost, mu, nu = random_problem(20, 15, 5, dtype=torch.float32)
    pc = torch.ones(26, 19)
    pc[:20, :15] = cost
    pmu = torch.zeros(26)
    pmu[:20] = mu
    pnu = torch.zeros(19)
    pnu[:15] = nu
    for iters in (1, 25):
        full = sinkhorn(pc, pmu, pnu, 0.05, num_iters=iters).plan
        torch.testing.assert_close(full[:20, :15], sinkhorn(cost, mu, nu, 0.05, num_iters=iters).plan, rtol=1e-5, atol=1e-10)
        assert float(full[20:].abs().sum() + full[:, 15:].abs().sum()) == 0.0
    votes_pad, _ = scot_votes(pc, pmu, pnu, 0.05, exp2=0.5)
    votes, _ = scot_votes(cost, mu, nu, 0.05, exp2=0.5)
    torch.testing.assert_close(votes_pad[:20, :15], votes, rtol=1e-5, atol=1e-8)


def test_log_domain_is_stable_where_plain_overflows():
    cost, mu, nu = random_problem(40, 50, 6, dtype=torch.float32)
    cost = cost * 2.0
    eps = 1e-3
    plain = sinkhorn(cost, mu, nu, eps, num_iters=10).plan
    assert bool(torch.isnan(plain).any()), "expected the plain iteration to overflow at eps=1e-3"
    res = sinkhorn(cost, mu, nu, eps, num_iters=5000, tol=1e-5, method="log")
    assert bool(torch.isfinite(res.plan).all())
    torch.testing.assert_close(res.plan.sum(1), mu, atol=1e-5, rtol=0)
    torch.testing.assert_close(res.plan.sum(0), nu, atol=1e-5, rtol=0)
    ref = pot.sinkhorn(mu.double().numpy(), nu.double().numpy(), cost.double().numpy(), eps,
                       method="sinkhorn_log", numItermax=20000, stopThr=1e-7)
    np.testing.assert_allclose(res.plan.double().numpy(), ref, atol=2e-5)


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_unbalanced_matches_pot(tau):
    cost, mu, nu = random_problem(12, 9, 7)
    eps = 0.1
    ours = sinkhorn(cost, mu * 1.3, nu, eps, num_iters=20000, tol=1e-13, tau=tau).plan
    with pytest.warns(UserWarning):  # POT notes that reg_type="entropy" uses the plain kernel
        ref = pot.unbalanced.sinkhorn_unbalanced(
            (mu * 1.3).numpy(), nu.numpy(), cost.numpy(), eps, tau, reg_type="entropy", numItermax=20000, stopThr=1e-14
        )
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)


def test_unbalanced_tends_to_balanced_as_tau_grows():
    cost, mu, nu = random_problem(12, 9, 7)
    balanced = sinkhorn(cost, mu, nu, 0.1, num_iters=20000, tol=1e-13).plan
    loose = sinkhorn(cost, mu, nu, 0.1, num_iters=20000, tol=1e-13, tau=0.05).plan
    tight = sinkhorn(cost, mu, nu, 0.1, num_iters=20000, tol=1e-13, tau=1e5).plan
    assert (tight - balanced).abs().max() < 1e-5 < (loose - balanced).abs().max()


def test_scot_votes_rescale_and_power():
    cost, mu, nu = random_problem(30, 20, 8, dtype=torch.float32)
    plan = sinkhorn(cost, mu, nu, 0.05).plan
    for exp2 in (1.0, 0.5, 0.7):
        votes, stats = scot_votes(cost.clone(), mu, nu, 0.05, exp2=exp2)
        torch.testing.assert_close(votes, (30 * plan).clamp(min=0) ** exp2, rtol=1e-5, atol=1e-8)
        assert stats.eps_used == [0.05]


def test_nan_plan_doubles_eps_until_finite():
    cost, mu, nu = random_problem(30, 20, 10, dtype=torch.float32)
    cost = cost * 3.0
    votes, stats = scot_votes(cost, mu, nu, 1e-3, exp2=1.0, max_doublings=10)
    assert bool(torch.isfinite(votes).all())
    assert stats.eps_used[0] > 1e-3
    # the result is the plain solution at the eps that worked
    expected = 30 * sinkhorn(cost, mu, nu, stats.eps_used[0]).plan
    torch.testing.assert_close(votes, expected)
    # and half that eps would not have been finite
    assert not bool(torch.isfinite(sinkhorn(cost, mu, nu, stats.eps_used[0] / 2).plan).all())


def test_retries_are_bounded_then_fail_with_one_line():
    """The one epsilon policy: double while not finite, at most max_doublings times, then a clear error."""
    from scot.errors import ScotError

    cost, mu, nu = random_problem(30, 20, 11, dtype=torch.float32)
    cost = cost * 3.0
    with pytest.raises(ScotError, match=r"^eps: Sinkhorn gave no finite plan even at eps 0.002 after 1 doublings"):
        scot_votes(cost, mu, nu, 1e-3, exp2=1.0, max_doublings=1)
    # the log domain needs no doubling at the same eps
    votes, stats = scot_votes(cost, mu, nu, 1e-3, exp2=1.0, num_iters=50, method="log")
    assert bool(torch.isfinite(votes).all()) and stats.eps_used == [1e-3]
    torch.testing.assert_close(votes.sum(1), 30 * mu, rtol=1e-4, atol=1e-6)  # rows hold after an a-update


def test_logsumexp_keeps_empty_slices_at_minus_infinity():
    """Log-domain updates rely on torch.logsumexp giving -inf (not NaN) for an all -inf slice."""
    x = torch.tensor([[-torch.inf, -torch.inf], [0.0, -torch.inf]])
    out = torch.logsumexp(x, dim=1)
    assert out[0] == -torch.inf and out[1] == 0.0


def test_invalid_eps():
    cost, mu, nu = random_problem(3, 3, 0)
    with pytest.raises(ValueError):
        sinkhorn(cost, mu, nu, 0.0)


def test_zero_norm_features_get_cosine_zero():
    from scot.cost import cost_matrix, l2_normalize

    f = torch.randn(5, 8)
    f[2] = 0.0  # a dead hyperpixel (all-zero feature)
    g = torch.randn(4, 8)
    g[1] = 0.0
    cost = cost_matrix(l2_normalize(f), l2_normalize(g))
    assert bool(torch.isfinite(cost).all())
    assert torch.all(cost[2] == 1.0) and torch.all(cost[:, 1] == 1.0)  # cosine 0 -> cost 1
    mu = torch.full((5,), 0.2)
    nu = torch.full((4,), 0.25)
    votes, stats = scot_votes(cost, mu, nu, 0.05, exp2=0.5)
    assert bool(torch.isfinite(votes).all()) and stats.eps_used == [0.05]
