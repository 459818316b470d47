"""Backbone registry: ``build_backbone(name, weights)``.

``auto`` resolves to ResNet-101 when its ImageNet weights are available (cached, or
downloadable into torchvision's cache) and to EfficientNet-Lite2, whose weights are
embedded, otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ScotError, WeightsUnavailableError
from .base import Backbone, BackboneOutput, Geometry, SpatialOp, propagate_geometry
from .efficientnet_lite import EfficientNetLiteBackbone
from .resnet import ResNetBackbone

__all__ = [
    "Backbone", "BackboneOutput", "Geometry", "SpatialOp", "propagate_geometry",
    "build_backbone", "id_table", "BACKBONE_NAMES", "FALLBACK_BACKBONE",
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
            raise ScotError("give the backbone explicitly when passing a weights file", option="weights")
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
    raise ScotError(f"unknown backbone '{name}' (choose from auto, {', '.join(BACKBONE_NAMES)})", option="backbone")


def id_table(name: str, side: int = 300) -> str:
    """The hyperpixel ids of backbone ``name`` with their stride, receptive field, channels and
    grid on a ``side`` square image (the architecture only: no weights are loaded)."""
    if name not in BACKBONE_NAMES:
        raise ScotError(f"unknown backbone '{name}' (choose from {', '.join(BACKBONE_NAMES)})", option="backbone")
    if side < 32:
        raise ScotError(f"must be at least 32 px, got {side}", option="image_side")
    bb = build_backbone(name, "random")
    lines = [f"{bb.name}: ids 0..{bb.num_ids - 1}, grid for a {side}x{side} image",
             f"{'id':>3}  {'stride':>6}  {'rf':>4}  {'channels':>8}  {'grid':>7}  layer"]
    for hid, label in enumerate(bb.id_names()):
        g = bb.geometry(hid, side, side)
        lines.append(f"{hid:>3}  {g.jump:>6}  {g.rf:>4}  {bb.channels(hid):>8}  {g.height:>3}x{g.width:<3}  {label}")
    return "\n".join(lines)
