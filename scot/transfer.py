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
"""

from __future__ import annotations

import torch

from .features import box_centres


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


def transfer_keypoints(
    src_boxes: torch.Tensor,
    trg_boxes: torch.Tensor,
    best: torch.Tensor,
    keypoints: torch.Tensor,
    target_tl: torch.Tensor | None = None,
    usable: torch.Tensor | None = None,
    how: str = "mean",
    confidence: torch.Tensor | None = None,
) -> torch.Tensor:
    """Transfer (K, 2) source keypoints (x, y) to the target, in the resized frames, on the host.

    Every input is moved to the host (they are host tensors in the matcher), and no
    value is read by Python: the computation has no data-dependent branch.

    Args:
        src_boxes: (N, 4) source receptive-field boxes.
        trg_boxes: (M, 4) target boxes.
        best: (N,) index of each source box's matched target box.
        keypoints: (K, 2) source keypoints.
        target_tl: (N, 2) where each source box lands (default: its match's top-left).
        usable: (N,) bool; a keypoint moves with its usable boxes if it has any.
        how: ``mean``, ``weighted`` or ``median`` (see the module docstring).
        confidence: (N,) confidence of each source box's match (for ``weighted``).
    """
    src_boxes, trg_boxes = src_boxes.float().cpu(), trg_boxes.float().cpu()
    kps = keypoints.float().cpu()
    if kps.numel() == 0:
        return kps.reshape(0, 2)
    landing = trg_boxes[best.cpu(), :2] if target_tl is None else target_tl.float().cpu()
    shift = landing - src_boxes[:, :2]  # (N, 2) top-left displacement
    inside = containing_boxes(src_boxes, kps)  # (K, N)
    if usable is not None:
        preferred = inside & usable.cpu().unsqueeze(0)
        has = preferred.any(1, keepdim=True)
        inside = torch.where(has, preferred, inside)
    lonely = ~inside.any(1, keepdim=True)  # no box contains the keypoint: it moves with the nearest one
    nearest = torch.cdist(kps, box_centres(src_boxes)).argmin(1, keepdim=True)  # (K, 1)
    inside.scatter_(1, nearest, inside.gather(1, nearest) | lonely)
    if how == "mean":
        weights = inside.float()
    elif how == "weighted":
        if confidence is None:
            raise ValueError("transfer 'weighted' needs the matches' confidence")
        weights = inside.float() * confidence.float().cpu().clamp_min(0).unsqueeze(0)
        # a keypoint whose boxes all have zero confidence falls back to the plain mean
        weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, inside.float())
    elif how == "median":
        spread = torch.where(inside.unsqueeze(2), shift.unsqueeze(0), torch.tensor(float("nan")))  # (K, N, 2)
        return kps + torch.nanmedian(spread, dim=1).values
    else:
        raise ValueError(f"unknown transfer {how!r}")
    return kps + (weights @ shift) / weights.sum(1, keepdim=True)
