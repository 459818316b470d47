r"""Step 5 of the pipeline: from confidences to matches and transferred keypoints.

Each source hyperpixel i is matched to its most confident target hyperpixel
:math:`j^*(i) = \arg\max_j \text{confidence}_{ij}`.

A source keypoint :math:`p` is transferred through every source box :math:`B_i` that
contains it (bounds inclusive), each moved rigidly onto its match:

.. math::
    \hat p = \frac{1}{|\mathcal N(p)|} \sum_{i \in \mathcal N(p)}
        \big( \mathrm{tl}(B'_{j^*(i)}) + p - \mathrm{tl}(B_i) \big)

with :math:`\mathrm{tl}` the box's top-left corner.  When no box contains :math:`p` the
nearest box centre is used, so the prediction is never NaN.

How the displacements of :math:`\mathcal N(p)` are combined is ``how``: ``mean`` (the
paper, above), ``weighted`` (mean weighted by each box's match confidence, so that
uncertain boxes move the keypoint less) or ``median`` (coordinate-wise; the lower middle
value for an even count, robust to a minority of wrong matches).

Two more optional refinements (off by default, see the README's accuracy table):

* **sub-pixel targets**: :math:`\mathrm{tl}(B'_{j^*})` is replaced by the
  confidence-weighted mean of the top-left corners of the target boxes in a ``w x w``
  window of the target grid around :math:`j^*` (a local soft-argmax);
* **mutual consistency**: only source boxes whose match is mutual (:math:`i` is also the
  best source for :math:`j^*(i)`) move the keypoint, when at least one of its boxes is.

In general terms, every source box :math:`B_i` is displaced by its shift
:math:`s_i = t_i - \mathrm{tl}(B_i)` (:math:`t_i` the landing point: the match's top-left
corner or its sub-pixel refinement), and a point moves by the aggregate of the shifts of
its box set :math:`\mathcal N(p)`:

.. math::
    \hat p = p + \frac{\sum_{i \in \mathcal N(p)} \omega_i s_i}{\sum_{i \in \mathcal N(p)} \omega_i},
    \qquad \kappa(p) = \frac{\sum_{i \in \mathcal N(p)} \omega_i c_i}{\sum_{i \in \mathcal N(p)} \omega_i}

with :math:`\omega_i = 1` for ``mean`` and ``median`` and :math:`\omega_i = c_i^+ = \max(c_i, 0)`
for ``weighted`` (plain mean when they are all zero); ``median`` replaces the weighted
mean of the shifts by their coordinate-wise lower median.  :math:`\kappa` is the
per-point confidence of the dense flow.  :func:`aggregate_shifts` is this rule, the one
place it is written: :func:`transfer_keypoints` applies it to keypoints and
:mod:`scot.dense` to every pixel of the source image, so the dense flow at a keypoint is
the keypoint's transfer by construction.

A correspondence lies in the target image: given the target's extent, a transferred
point is clamped to it (:func:`image_bounds`, :func:`clamp_points`).  Pixel centres sit
on integer coordinates, so an original image of W x H pixels spans
:math:`[0, W-1] \times [0, H-1]`, and :math:`[0, (W-1)\rho] \times [0, (H-1)\rho]` in
the frame resized by :math:`\rho`.  Boxes near the border reach beyond the image (their
receptive fields do), so without the clamp a point near an edge can land a few pixels
outside it.

Memory: keypoints are transferred in chunks of at most :data:`CHUNK_SLOTS` keypoint x
box pairs, so that beyond the (K, 2) result it does not grow with the keypoint count.
"""

from __future__ import annotations

from typing import Literal

import torch

from .config import TRANSFERS
from .hyperpixels import box_centres

Rule = Literal["mean", "weighted", "median"]
RULES: tuple[str, ...] = TRANSFERS
"""The ways :func:`aggregate_shifts` combines the shifts of a point's boxes (the ``transfer`` option's choices)."""
CHUNK_SLOTS = 1 << 20
"""Point x box slots evaluated at once, by :func:`transfer_keypoints` and the dense lattice."""


def image_bounds(size: tuple[int, int], ratio: float = 1.0) -> tuple[float, float]:
    """(x_max, y_max) of an image of ``size`` (W, H) original pixels in a frame scaled by
    ``ratio``: its pixel centres span ``[0, (W-1) * ratio] x [0, (H-1) * ratio]``."""
    return (int(size[0]) - 1) * float(ratio), (int(size[1]) - 1) * float(ratio)


def clamp_points(points: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    """(..., 2) points (x, y) clamped into ``[0, bounds[0]] x [0, bounds[1]]`` in place (as is without bounds)."""
    if bounds is not None:
        points[..., 0].clamp_(0.0, float(bounds[0]))
        points[..., 1].clamp_(0.0, float(bounds[1]))
    return points


def best_matches(confidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax target index, max confidence) for every source row of (…, N, M)."""
    values, index = confidence.max(dim=-1)
    return index, values


def containing_boxes(boxes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(K, N) bool: box i contains point k, bounds inclusive."""
    px, py = points[:, 0:1], points[:, 1:2]
    return (px >= boxes[:, 0]) & (py >= boxes[:, 1]) & (px <= boxes[:, 2]) & (py <= boxes[:, 3])


def soft_argmax_targets(
    confidence: torch.Tensor, best: torch.Tensor, trg_grid: tuple[int, int], trg_boxes: torch.Tensor, window: int = 3
) -> torch.Tensor:
    """(N, 2) confidence-weighted top-left corners in a ``window`` x ``window`` grid patch around each match.

    ``confidence`` (N, M) and ``best`` (N,) share a device, where the result stays; the
    (M, 4) ``trg_boxes`` are moved there.
    """
    ht, wt = trg_grid
    r = window // 2
    by, bx = best // wt, best % wt
    offs = torch.arange(-r, r + 1, device=best.device)
    ny = (by.unsqueeze(1) + offs.unsqueeze(0)).clamp(0, ht - 1)  # (N, w)
    nx = (bx.unsqueeze(1) + offs.unsqueeze(0)).clamp(0, wt - 1)
    idx = (ny.unsqueeze(2) * wt + nx.unsqueeze(1)).reshape(len(best), -1)  # (N, w*w), clamped at borders
    weights = confidence.gather(1, idx).float().clamp_min(0)
    tl = trg_boxes[:, :2].to(weights.device)[idx]  # (N, w*w, 2)
    total = weights.sum(1, keepdim=True)
    refined = (weights.unsqueeze(2) * tl).sum(1) / total.clamp_min(torch.finfo(torch.float32).tiny)
    exact = tl[:, (window * window) // 2]
    return torch.where(total > 0, refined, exact)


def mutual_mask(confidence: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """(N,) bool on the confidences' device: source i is also the most confident source of its match best[i]."""
    back = confidence.argmax(dim=0)  # (M,)
    return back[best.to(back.device)] == torch.arange(len(best), device=back.device)


def box_shifts(
    src_boxes: torch.Tensor, trg_boxes: torch.Tensor, best: torch.Tensor, target_tl: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, 2) float32 top-left displacement of every source box onto its landing point.

    ``target_tl[i]`` (default ``tl(trg_boxes[best[i]])``) minus ``tl(src_boxes[i])``: the
    :math:`s_i` of the module docstring, on the host.
    """
    src, trg = src_boxes.detach().float().cpu(), trg_boxes.detach().float().cpu()
    landing = trg[best.detach().cpu().long(), :2] if target_tl is None else target_tl.detach().float().cpu()
    return landing - src[:, :2]


def check_rule(how: str, confidence: torch.Tensor | None) -> None:
    """Raise ``ValueError`` unless ``how`` is one of :data:`RULES`, with ``confidence`` when it is ``weighted``."""
    if how not in RULES:
        raise ValueError(f"unknown transfer {how!r} (expected one of {', '.join(RULES)})")
    if how == "weighted" and confidence is None:
        raise ValueError("transfer 'weighted' needs the matches' confidence")


def aggregate_shifts(
    member: torch.Tensor,
    shift: torch.Tensor,
    how: str = "mean",
    confidence: torch.Tensor | None = None,
    usable: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Displacement and confidence of R sets of source boxes (the rule of the module docstring).

    The sets are given either as a membership over all N boxes (``index`` None; each
    weighted sum is then one matrix product, as for keypoints) or as L box indices per
    set with their validity (``index`` (R, L); sums over the gathered members, as for the
    rectangles of the dense lattice).  Everything is computed in ``shift``'s dtype.

    Args:
        member: (R, N) bool, or (R, L) bool with ``index``: box in set r.  Every set must
            be non-empty.
        shift: (N, 2) displacement of every box.
        how: ``mean``, ``weighted`` or ``median``.
        confidence: (N,) match confidence of every box (needed by ``weighted``).
        usable: (N,) bool; a set is restricted to its usable boxes when it has any.
        index: (R, L) int64 box indices of the sets' slots (any valid index where
            ``member`` is False).

    Returns:
        disp: (R, 2) aggregated displacement.
        kappa: (R,) confidence of the sets, :math:`\kappa`; exactly 1 without ``confidence``.
    """
    check_rule(how, confidence)

    def gathered(values: torch.Tensor) -> torch.Tensor:
        return values if index is None else values[index]

    def weighted_sum(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        if index is None:
            return weights @ values
        return ((weights if values.dim() == 1 else weights.unsqueeze(2)) * values[index]).sum(1)

    if usable is not None:
        preferred = member & gathered(usable)
        member = torch.where(preferred.any(1, keepdim=True), preferred, member)
    weights = member.to(shift.dtype)
    c = None if confidence is None else gathered(confidence)
    if how == "weighted":
        assert c is not None
        positive = weights * c.clamp_min(0)
        weights = torch.where((member & (c > 0)).any(1, keepdim=True), positive, weights)
    total = weights.sum(1, keepdim=True)
    if how == "median":
        nan = torch.full((), float("nan"), dtype=shift.dtype)
        disp = torch.nanmedian(torch.where(member.unsqueeze(2), gathered(shift), nan), dim=1).values
    else:
        disp = weighted_sum(weights, shift) / total
    if confidence is None:
        kappa = torch.ones(len(member), dtype=shift.dtype)
    else:
        kappa = weighted_sum(weights, confidence) / total.squeeze(1)
    return disp, kappa


def transfer_keypoints(
    src_boxes: torch.Tensor,
    trg_boxes: torch.Tensor,
    best: torch.Tensor,
    keypoints: torch.Tensor,
    target_tl: torch.Tensor | None = None,
    usable: torch.Tensor | None = None,
    how: str = "mean",
    confidence: torch.Tensor | None = None,
    bounds: tuple[float, float] | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Transfer (K, 2) source keypoints (x, y) to the target, in the resized frames, on the host.

    Every input is moved to the host (they are host tensors in the matcher), and no
    value is read by Python: the computation has no data-dependent branch.  The
    keypoints are taken ``chunk`` at a time (default: :data:`CHUNK_SLOTS` keypoint x box
    pairs), so the temporaries are (chunk, N) whatever K is; the result does not depend
    on the chunk size.

    Args:
        src_boxes: (N, 4) source receptive-field boxes.
        trg_boxes: (M, 4) target boxes.
        best: (N,) index of each source box's matched target box.
        keypoints: (K, 2) source keypoints.
        target_tl: (N, 2) where each source box lands (default: its match's top-left).
        usable: (N,) bool; a keypoint moves with its usable boxes if it has any.
        how: ``mean``, ``weighted`` or ``median`` (see the module docstring).
        confidence: (N,) confidence of each source box's match (for ``weighted``).
        bounds: (x_max, y_max), the target image's extent in the resized frame
            (:func:`image_bounds`); the results are clamped into it.  None: not clamped.
        chunk: keypoints transferred at once (>= 1).

    Returns:
        (K, 2) float32 transferred keypoints in the resized target frame.
    """
    src_boxes, trg_boxes = src_boxes.float().cpu(), trg_boxes.float().cpu()
    kps = keypoints.float().cpu()
    if kps.numel() == 0:
        return kps.reshape(0, 2)
    check_rule(how, confidence)
    shift = box_shifts(src_boxes, trg_boxes, best, target_tl)  # (N, 2) top-left displacement
    centres = box_centres(src_boxes)
    conf = None if confidence is None or how != "weighted" else confidence.float().cpu()
    use = None if usable is None else usable.cpu()
    step = max(1, CHUNK_SLOTS // max(1, len(src_boxes))) if chunk is None else int(chunk)
    if step < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    out = torch.empty_like(kps)
    for start in range(0, len(kps), step):
        part = kps[start : start + step]
        inside = containing_boxes(src_boxes, part)  # (k, N)
        lonely = ~inside.any(1, keepdim=True)  # no box contains the keypoint: it moves with the nearest one
        nearest = torch.cdist(part, centres).argmin(1, keepdim=True)  # (k, 1)
        inside.scatter_(1, nearest, inside.gather(1, nearest) | lonely)
        disp, _ = aggregate_shifts(inside, shift, how, conf, use)
        out[start : start + step] = part + disp
    return clamp_points(out, bounds)
