r"""Class activation maps and the OT marginals they induce.

The CAM (Zhou et al. 2016) of a class ``c`` is the classifier weight ``w_c`` applied to
the last activation map.  SCOT uses the top-2 softmax classes at three input scales, as in
its reference code:

1. per scale and class: ``cam = w_c · A`` upsampled to the image (bilinear,
   ``align_corners=True``), then ``(cam - min) / max``; the scale's map is the max over
   the two classes;
2. the 1.5x input is the image resized (bilinear, ``align_corners=True``) to
   ``int(1.5 H) x int(1.5 W)``, and the 2x input is resized *from the 1.5x input*, as the
   reference chains it;
3. the maps are summed over scales and divided by ``max + 1e-5``.

Each hyperpixel's marginal weight is read from the CAM at its box centre: 0.5 by default,
0.8 above 0.4, 0.9 above 0.5 and 1.0 above 0.6.  ``mu = w / sum(w)``.  A hyperpixel whose
CAM value is above the first level (0.4) is on the object (:func:`foreground`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import device as _device
from .backbones import Backbone, BackboneOutput

TOP_K = 2
WEIGHT_LEVELS = ((0.4, 0.8), (0.5, 0.9), (0.6, 1.0))  # (CAM above, weight), applied in order
BASE_WEIGHT = 0.5
FOREGROUND = WEIGHT_LEVELS[0][0]  # CAM above this: the hyperpixel is on the object


def _single_scale_cam(
    classifier: torch.Tensor, last_map: torch.Tensor, logits: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the max over its top-2 classes of the normalised CAMs of one scale.

    Args:
        classifier: (K, C) weight of the final linear layer.
        last_map: (B, C, h, w) last activation map.
        logits: (B, K) class scores.
        size: (H, W) of the output.

    Returns:
        The (B, H, W) maps and the (B, 2) classes, on the maps' device.
    """
    labels = torch.topk(F.softmax(logits, dim=1), k=TOP_K, dim=1).indices
    b, c, h, w = last_map.shape
    maps = torch.bmm(classifier[labels], last_map.reshape(b, c, h * w)).view(b, TOP_K, h, w)
    maps = F.interpolate(maps, size, mode="bilinear", align_corners=True)
    flat = maps.flatten(2)
    lo = flat.amin(2).view(b, TOP_K, 1, 1)
    hi = flat.amax(2).view(b, TOP_K, 1, 1)
    return ((maps - lo) / hi).amax(1), labels


def class_activation_map(
    backbone: Backbone,
    x: torch.Tensor,
    first: BackboneOutput,
    scales: Sequence[float] = (1.0, 1.5, 2.0),
    feature_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, list[list[int]], dict[float, dict[int, torch.Tensor]]]:
    """Multi-scale CAMs of a batch of normalised images ``x`` (B, 3, H, W) of one size.

    ``first`` is the backbone output at scale 1 (with ``last_map`` and ``logits``), which is
    reused instead of running the network twice.  Returns the (B, H, W) maps in [0, 1), each
    image's top-2 ImageNet classes at scale 1 and, for every other scale, the (B, C, h, w)
    maps of ``feature_ids`` captured during that scale's pass (for multi-scale features, at
    no extra network cost).  Every image's map is what it would be alone: the batch only
    shares the network passes.
    """
    size = (int(x.shape[2]), int(x.shape[3]))
    classifier = backbone.classifier_weight()
    total = None
    top_classes: torch.Tensor | None = None
    extra: dict[float, dict[int, torch.Tensor]] = {}
    scaled = x
    for scale in scales:
        if scale == 1.0:
            assert first.last_map is not None and first.logits is not None
            last_map, logits = first.last_map, first.logits
        else:
            scaled = F.interpolate(
                scaled, (int(scale * size[0]), int(scale * size[1])), mode="bilinear", align_corners=True
            )
            out = backbone.extract(scaled, feature_ids, head=True)
            assert out.last_map is not None and out.logits is not None
            last_map, logits = out.last_map, out.logits
            if feature_ids:
                extra[scale] = out.features
        cam, labels = _single_scale_cam(classifier, last_map, logits, size)
        if scale == 1.0:
            top_classes = labels
        total = cam if total is None else total + cam
    assert total is not None
    classes = [[] for _ in range(x.shape[0])] if top_classes is None else _device.to_host(top_classes)[0].tolist()
    peak = total.flatten(1).amax(1).view(-1, 1, 1)
    return total / (peak + 1e-5), classes, extra


def cam_at(cam: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(n,) the CAM (H, W) read at each box centre (x, y), clamped into the image."""
    h, w = cam.shape
    cx = centres[:, 0].long().clamp(0, w - 1).to(cam.device)
    cy = centres[:, 1].long().clamp(0, h - 1).to(cam.device)
    return cam[cy, cx]


def foreground(cam: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(n,) bool: the hyperpixels whose CAM value is above :data:`FOREGROUND`."""
    return cam_at(cam, centres) > FOREGROUND


def marginal_weights(cam: torch.Tensor, centres: torch.Tensor, mode: str = "levels") -> torch.Tensor:
    """Per-hyperpixel weights from the CAM value at each box centre (x, y).

    ``levels`` is the paper's step function; ``linear`` (an option) is ``0.5 + 0.5 * cam``.
    """
    values = cam_at(cam, centres)
    if mode == "linear":
        return BASE_WEIGHT + (1.0 - BASE_WEIGHT) * values.clamp(0.0, 1.0)
    weights = torch.full_like(values, BASE_WEIGHT)
    for above, weight in WEIGHT_LEVELS:
        weights[values > above] = weight
    return weights
