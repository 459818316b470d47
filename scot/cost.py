r"""Step 2 of the pipeline: the transport cost between hyperpixels.

.. math::
    C_{ij} = 1 - \max\big(0,\ \cos(f_i, g_j)\big)

**Factorized correlation.**  A hyperpixel concatenates layer groups upsampled to the grid
(:mod:`scot.hyperpixels`): :math:`f = [U_1 X_1, \dots]` for the source and
:math:`g = [V_1 Y_1, \dots]` for the target, with separable bilinear matrices
:math:`U = U_y \otimes U_x`.  Their inner products are

.. math::
    F G^\top = \sum_g U_g \,(X_g Y_g^\top)\, V_g^\top ,

the small native-resolution Gram matrix of each group, interpolated along the target
axes and then along the source axes.  For ResNet-101's PF-PASCAL/PF-WILLOW ids, 6,144 of
the 6,400 channels sit at stride 16 (about 19 x 14 cells instead of 75 x 56), so the
product of those channels shrinks from an N x M x 6,144 matmul to a 266 x 266 x 6,144
Gram plus interpolation.  :func:`scot.features.factorize_groups` decides per group, from a
cost estimate, whether the Gram route or plain upsampling into the dense operand is cheaper;
both give the same numbers up to float rounding.

The cosine divides by the norms of the fused features (:attr:`Hyperpixels.inv_norms`;
a zero feature has cosine 0 with everything).  :class:`Correlation` returns
:math:`\alpha \cos(f_i, g_j)` for a chosen scale :math:`\alpha`; with
:math:`\alpha = \log_2 e / \varepsilon`, :func:`log2_kernel_` turns it in place into
:math:`\log_2 K` of the entropic kernel :math:`K = e^{-C/\varepsilon}`:

.. math::
    \log_2 K_{ij} = \alpha \big(\max(0, \cos_{ij}) - 1\big).

**Layout.**  The target's cells are listed in *reverse* row-major order (column ``j`` of
the matrix is target cell ``m - 1 - j``).  Every Hough bin of RHM then depends on the sum
of the source and column indices, which turns voting and re-weighting into sliding
windows (:mod:`scot.rhm`).  :class:`Correlation` produces this layout directly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .hyperpixels import Hyperpixels

def correlation_flops(src: Hyperpixels, trg: Hyperpixels) -> dict[str, float]:
    """Multiply-adds of one pair's correlation: as planned, and with every group upsampled.

    Returns ``{"planned": ..., "dense": ...}``, the estimates behind the path choice
    (``scot bench pairs`` prints them).
    """
    n, m = src.n, trg.n
    dense = float(n * m * src.dim)
    planned = float(n * m * src.dense.shape[1])
    for gs, gt in zip(src.factorized, trg.factorized):
        (hs_g, ws_g), (ht_g, wt_g) = gs.shape, gt.shape
        ms, mt = hs_g * ws_g, ht_g * wt_g
        wt = gt.cols.shape[0]
        hs = gs.rows.shape[0]
        planned += ms * mt * gs.channels + ms * ht_g * wt * wt_g + ms * m * ht_g  # Gram, target side
        planned += hs * ws_g * m * hs_g + n * m * ws_g  # source side
    return {"planned": planned, "dense": dense}


class Correlation:
    r"""Scaled cosines :math:`\alpha \cos(f_i, g_j)` of one image pair, block by block.

    Rows are source cells in row-major order; columns are target cells in reverse order
    (see the module docstring).  Construction does the per-pair work that is small
    (Gram matrices interpolated along the target axes); :meth:`fill` writes any block of
    source grid rows, so the low-memory path can stream it.

    Args:
        src, trg: the two images' hyperpixels (same layout); ``trg`` is moved to the
            device of ``src``, where the blocks are computed.
        scale: :math:`\alpha`.
    """

    def __init__(self, src: Hyperpixels, trg: Hyperpixels, scale: float = 1.0) -> None:
        trg = trg.to(src.device)
        self.src, self.trg, self.scale = src, trg, float(scale)
        self.ws = src.grid[1]
        self.m = trg.n
        self.fine_src = src.operand()
        self.fine_trg = trg.operand(reverse=True)
        self.parts: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows (hs, hs_g), target-side (ms_g, m))
        columns = []
        inv_trg = trg.inv_norms.flip(0)
        hs, ws = src.grid
        for gs, gt in zip(src.factorized, trg.factorized):
            gram = gs.maps @ gt.maps.t()  # (ms_g, mt_g)
            ht_g, wt_g = gt.shape
            ms_g = gram.shape[0]
            rows_t, cols_t = gt.rows.flip(0), gt.cols.flip(0)  # reversed target order along both axes
            partial = (gram.view(ms_g * ht_g, wt_g) @ cols_t.t()).view(ms_g, ht_g, -1)
            target_side = torch.matmul(rows_t, partial).reshape(ms_g, self.m).mul_(inv_trg)
            self.parts.append((gs.rows, target_side))
            columns.append(gs.cols)
        if self.parts:
            # source-side column weights, scaled by the source norms and alpha: (hs, ws, sum w_g)
            cols = torch.cat(columns, 1)
            scale_rows = (self.scale * src.inv_norms).view(hs, ws, 1)
            self.col_weights = scale_rows * cols.unsqueeze(0)
            self.widths = [c.shape[1] for c in columns]

    def fill(self, out: torch.Tensor, y0: int = 0, y1: int | None = None) -> torch.Tensor:
        """Write source grid rows ``y0:y1`` into ``out`` ((y1 - y0) * ws, m), which may be a
        strided slice (unit column stride) of a larger buffer; returns ``out``."""
        y1 = self.src.grid[0] if y1 is None else y1
        r, ws, m = y1 - y0, self.ws, self.m
        torch.addmm(out, self.fine_src[y0 * ws : y1 * ws], self.fine_trg.t(), beta=0, alpha=self.scale, out=out)
        if self.parts:
            total = sum(self.widths)
            stacked = out.new_empty(r, total, m)
            k = 0
            for (rows, target_side), w_g in zip(self.parts, self.widths):
                h_g = rows.shape[1]
                torch.mm(rows[y0:y1], target_side.view(h_g, w_g * m), out=stacked[:, k : k + w_g].view(r, w_g * m))
                k += w_g
            out.unflatten(0, (r, ws)).baddbmm_(self.col_weights[y0:y1], stacked)
        return out

    def full(self) -> torch.Tensor:
        """The whole (n, m) matrix."""
        return self.fill(self.fine_src.new_empty(self.src.n, self.m))


def log2_kernel_(scaled_cos: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""In place: :math:`\alpha\cos \mapsto \alpha(\max(0, \cos) - 1) = \log_2 K`; returns it."""
    return scaled_cos.clamp_(min=0.0).sub_(alpha)


def cost_from_log2_kernel_(log2_kernel: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""In place: :math:`\log_2 K \mapsto C = -\log_2 K / \alpha`; returns it."""
    return log2_kernel.mul_(-1.0 / alpha)


def kernel_scale(eps: float) -> float:
    r""":math:`\alpha = \log_2 e / \varepsilon`, the scale that makes :func:`log2_kernel_` exact."""
    return 1.0 / (eps * math.log(2.0))


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    """Row-normalise (n, D) features; all-zero rows stay zero (their cosine is 0)."""
    return torch.nn.functional.normalize(features, dim=-1, eps=torch.finfo(features.dtype).tiny)


def cost_matrix(src: torch.Tensor, trg: torch.Tensor) -> torch.Tensor:
    """The SCOT cost ``1 - clamp(cos, 0)`` between unit-norm features (n, D) and (m, D), on the device of ``src``."""
    trg = trg.to(src.device)
    return (src @ trg.transpose(-1, -2)).clamp_(min=0.0).neg_().add_(1.0)
