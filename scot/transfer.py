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


def transfer_keypoints(
    src_boxes: torch.Tensor,
    trg_boxes: torch.Tensor,
    best: torch.Tensor,
    keypoints: torch.Tensor,
) -> torch.Tensor:
    """Transfer (K, 2) source keypoints (x, y) to the target, in the resized frames.

    Args:
        src_boxes: (N, 4) source receptive-field boxes.
        trg_boxes: (M, 4) target boxes.
        best: (N,) index of each source box's matched target box.
        keypoints: (K, 2) source keypoints.
    """
    src_boxes, trg_boxes = src_boxes.float().cpu(), trg_boxes.float().cpu()
    kps = keypoints.float().cpu()
    if kps.numel() == 0:
        return kps.reshape(0, 2)
    shift = trg_boxes[best.cpu(), :2] - src_boxes[:, :2]  # (N, 2) top-left displacement
    inside = containing_boxes(src_boxes, kps)  # (K, N)
    count = inside.sum(1)
    moved = kps + (inside.float() @ shift) / count.clamp_min(1).unsqueeze(1)
    lonely = count == 0
    if bool(lonely.any()):
        nearest = torch.cdist(kps[lonely], box_centres(src_boxes)).argmin(1)
        moved[lonely] = kps[lonely] + shift[nearest]
    return moved
