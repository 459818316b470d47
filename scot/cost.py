r"""Step 2 of the pipeline: the transport cost between hyperpixels.

.. math::
    C_{ij} = 1 - \max\big(0,\ \cos(f_i, g_j)\big)

Features are stored L2-normalised (a zero-norm feature stays the zero vector, so its
cosine with anything is 0), which turns the cosine into a single matrix product, the only
unavoidable cost of the whole matching stage.

Two precisions:

* ``float32``: ``S = F Gᵀ`` then ``C = 1 - clamp(S, 0)``, as the reference computes it.
* ``bfloat16``: the product runs on bf16 inputs (several times faster on CPUs with
  AVX512-BF16/AMX and on GPUs), but PyTorch rounds the CPU result to bf16.  Rounding
  ``S`` near 1 would be coarse (spacing 2^-8, i.e. ±4 % on ``exp(-C/ε)`` at ε = 0.05), so
  the product computes the *cost* directly through augmented vectors
  ``[f, 1] · [-g, 1] = 1 - f·g``: small costs, the ones that matter, keep bf16's
  *relative* precision (±0.2 %).
"""

from __future__ import annotations

import torch

_PAD = 16  # pad the bf16 feature dimension to a multiple of this for fast GEMM kernels


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    """Row-normalise (n, D) features; all-zero rows stay zero (their cosine is 0)."""
    norms = torch.linalg.vector_norm(features, dim=-1, keepdim=True)
    return features / norms.clamp_min(torch.finfo(features.dtype).tiny)


def augment_for_bf16(features: torch.Tensor, negate: bool) -> torch.Tensor:
    """``[±f, 1, 0, …]`` in bfloat16, zero-padded so the width is a multiple of 16.

    ``augment(F, False) @ augment(G, True)ᵀ = 1 - F Gᵀ`` up to bf16 input rounding.
    """
    d = features.shape[-1]
    width = -(-(d + 1) // _PAD) * _PAD
    out = features.new_zeros(*features.shape[:-1], width, dtype=torch.bfloat16)
    out[..., :d].copy_(features)
    if negate:
        out[..., :d].neg_()
    out[..., d] = 1.0
    return out


def similarity(src: torch.Tensor, trg: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of unit-norm features: (…, n, D) x (…, m, D) -> (…, n, m)."""
    return torch.matmul(src, trg.transpose(-1, -2))


def cost_matrix(src: torch.Tensor, trg: torch.Tensor, dtype: str = "float32") -> torch.Tensor:
    """The SCOT cost ``1 - clamp(cos, 0)`` between unit-norm features, as float32.

    ``src`` (…, n, D) and ``trg`` (…, m, D) must be L2-normalised (:func:`l2_normalize`).
    """
    if dtype == "float32":
        cost = similarity(src.float(), trg.float())
        return cost.clamp_(min=0.0).neg_().add_(1.0)
    if dtype == "bfloat16":
        cost = similarity(augment_for_bf16(src, negate=False), augment_for_bf16(trg, negate=True)).float()
        return cost.clamp_(min=0.0, max=1.0)
    raise ValueError(f"unknown cost dtype {dtype!r}")
