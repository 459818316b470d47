"""Regularized Hough matching against a brute-force double loop."""

from __future__ import annotations

import math

import pytest
import torch

from scot.rhm import gaussian_kernel, hough_space, rhm_dense, rhm_grid


def brute_force_rhm(votes, src_centres, trg_centres, src_size, trg_size, ncells):
    """The definition, one (i, j) pair at a time."""
    width, height = src_size[0] + trg_size[0], src_size[1] + trg_size[1]
    cell = math.sqrt(width * height / ncells)
    nbx, nby = int(width / cell) + 1, int(height / cell) + 1
    hist = [[0.0] * nbx for _ in range(nby)]
    bins = {}
    for i in range(votes.shape[0]):
        for j in range(votes.shape[1]):
            bx = int(math.floor((src_size[0] - float(src_centres[i, 0]) + float(trg_centres[j, 0])) / cell))
            by = int(math.floor((src_size[1] - float(src_centres[i, 1]) + float(trg_centres[j, 1])) / cell))
            bins[i, j] = (by, bx)
            hist[by][bx] += float(votes[i, j])
    g = gaussian_kernel(7).tolist()
    smooth = [[0.0] * nbx for _ in range(nby)]
    for y in range(nby):
        for x in range(nbx):
            acc = 0.0
            for dy in range(-3, 4):
                for dx in range(-3, 4):
                    if 0 <= y + dy < nby and 0 <= x + dx < nbx:
                        acc += g[dy + 3][dx + 3] * hist[y + dy][x + dx]
            smooth[y][x] = acc
    out = torch.zeros_like(votes, dtype=torch.float64)
    for (i, j), (by, bx) in bins.items():
        out[i, j] = float(votes[i, j]) * smooth[by][bx]
    return out


def grid(width_cells, height_cells, jump, offset=(0, 0)):
    xs = torch.arange(width_cells, dtype=torch.float32) * jump + offset[0]
    ys = torch.arange(height_cells, dtype=torch.float32) * jump + offset[1]
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return xs, ys, torch.stack((xx.reshape(-1), yy.reshape(-1)), 1)


def test_gaussian_kernel():
    g = gaussian_kernel(7)
    assert g.shape == (7, 7)
    assert abs(float(g.sum()) - 1.0) < 1e-6
    assert int(g.argmax()) == 24  # centre
    sigma = 7 / 2 / 2.354
    assert math.isclose(float(g[3, 4] / g[3, 3]), math.exp(-1 / (2 * sigma**2)), rel_tol=1e-5)
    torch.testing.assert_close(g, g.t())


def test_hough_space_size():
    nbx, nby, cell = hough_space((300, 225), (300, 200), 8192)
    assert math.isclose(cell, math.sqrt(600 * 425 / 8192))
    assert (nbx, nby) == (int(600 / cell) + 1, int(425 / cell) + 1)
    assert 8192 <= nbx * nby <= 8192 * 1.1


def test_rhm_matches_brute_force():
    torch.manual_seed(0)
    src_size, trg_size = (29, 21), (26, 31)
    sxs, sys_, src_c = grid(7, 5, 4)
    txs, tys, trg_c = grid(6, 8, 4, offset=(1, 2))
    votes = torch.rand(len(src_c), len(trg_c))
    expected = brute_force_rhm(votes, src_c, trg_c, src_size, trg_size, ncells=64)
    torch.testing.assert_close(rhm_dense(votes, src_c, trg_c, src_size, trg_size, ncells=64).double(), expected, rtol=1e-5, atol=1e-7)
    # rhm_grid works in the matching layout: target cells in reverse order
    got = rhm_grid(votes.flip(1), sxs, sys_, txs, tys, src_size, trg_size, ncells=64).flip(1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)
    # in place on the votes buffer gives the same, also on a strided slice of a larger buffer
    big = torch.zeros(len(src_c) + 3, len(trg_c) + 5)
    buf = big[: len(src_c), : len(trg_c)]
    buf.copy_(votes.flip(1))
    rhm_grid(buf, sxs, sys_, txs, tys, src_size, trg_size, ncells=64, out=buf)
    torch.testing.assert_close(buf.flip(1).double(), expected, rtol=1e-5, atol=1e-7)
    assert float(big[len(src_c):].abs().sum() + big[:, len(trg_c):].abs().sum()) == 0.0


def test_reverse_rhm_matches_brute_force_of_the_transposed_problem():
    """Two-way matching: the target -> source RHM, computed in the source x target layout."""
    torch.manual_seed(1)
    src_size, trg_size = (29, 21), (26, 31)
    sxs, sys_, src_c = grid(7, 5, 4, offset=(2, 1))
    txs, tys, trg_c = grid(6, 8, 4)
    back = torch.rand(len(trg_c), len(src_c))  # target -> source votes
    expected = brute_force_rhm(back, trg_c, src_c, trg_size, src_size, ncells=64).t()
    got = rhm_grid(back.t().flip(1).contiguous(), sxs, sys_, txs, tys, src_size, trg_size, ncells=64, reverse=True)
    torch.testing.assert_close(got.flip(1).double(), expected, rtol=1e-5, atol=1e-7)


def test_irregular_grids_are_refused():
    xs = torch.tensor([0.0, 4.0, 9.0])
    ys = torch.tensor([0.0, 4.0])
    with pytest.raises(ValueError, match="evenly spaced"):
        rhm_grid(torch.rand(6, 6), xs, ys, xs[:2] * 0 + torch.tensor([0.0, 4.0]), torch.tensor([0.0, 4.0, 8.0]),
                 (12, 8), (8, 12), ncells=16)


def test_rhm_rewards_consistent_translations():
    """Matches that agree on one translation gain confidence over an equally strong outlier."""
    sxs, sys_, src_c = grid(6, 6, 4)
    txs, tys, trg_c = grid(6, 6, 4)
    n = len(src_c)
    votes = torch.full((n, n), 1e-3)
    # every source cell -> the cell one to the right (consistent), and cell 0 -> far corner
    for i in range(n):
        x, y = i % 6, i // 6
        if x < 5:
            votes[i, y * 6 + x + 1] = 1.0
    votes[0, n - 1] = 1.0
    conf = rhm_grid(votes.flip(1), sxs, sys_, txs, tys, (24, 24), (24, 24), ncells=256).flip(1)
    assert int(conf[0].argmax()) == 1
