"""Backbone registry: ``build_backbone(name, weights)``.

``auto`` resolves to ResNet-101 when its ImageNet weights are available (cached, or
downloadable into torchvision's cache) and to EfficientNet-Lite2, whose weights are
embedded, otherwise.
"""

from __future__ import annotations

from typing import Callable

from ..errors import ScotError, WeightsUnavailableError
from .base import Backbone, BackboneOutput, Geometry, SpatialOp, propagate_geometry
from .efficientnet_lite import EfficientNetLiteBackbone
from .resnet import ResNetBackbone

__all__ = [
    "Backbone", "BackboneOutput", "Geometry", "SpatialOp", "propagate_geometry",
    "build_backbone", "BACKBONE_NAMES", "FALLBACK_BACKBONE",
]

BACKBONE_NAMES = ("resnet101", "resnet50", "efficientnet-lite0", "efficientnet-lite2")
FALLBACK_BACKBONE = "efficientnet-lite2"


def build_backbone(
    name: str,
    weights: str | None = None,
    notice: Callable[[str], None] | None = None,
) -> Backbone:
    """Build a backbone in eval mode on the CPU.

    ``notice`` receives the one-line message printed when ``auto`` falls back.
    """
    if name == "auto":
        if weights is not None:
            raise ScotError("--weights: give --backbone explicitly when passing a weights file")
        try:
            return ResNetBackbone("resnet101", None)
        except WeightsUnavailableError as exc:
            if notice is not None:
                notice(f"notice: resnet101 ImageNet weights are unavailable ({exc.short}); "
                       f"using {FALLBACK_BACKBONE} with its embedded ImageNet weights (choose with --backbone)")
            return EfficientNetLiteBackbone(FALLBACK_BACKBONE, None)
    if name in ("resnet50", "resnet101"):
        return ResNetBackbone(name, weights)
    if name in ("efficientnet-lite0", "efficientnet-lite2"):
        return EfficientNetLiteBackbone(name, weights)
    raise ScotError(f"--backbone: unknown backbone '{name}' (choose from auto, {', '.join(BACKBONE_NAMES)})")
