r"""Step 1 of the pipeline: hyperpixels, i.e. multi-layer features on a regular grid.

The selected backbone maps are bilinearly upsampled (``align_corners=True``) to the grid
of the first (shallowest) selected id and concatenated along channels without per-layer
normalisation.  Each grid cell (x, y) is a hyperpixel with the receptive-field box

.. math::
    [x j + o_x - r//2,\; y j + o_y - r//2,\; x j + o_x + r//2,\; y j + o_y + r//2]

where jump ``j``, receptive field ``r`` and centre offset ``o`` come from the
architecture at the first selected id (``o = 0`` for ResNets, as in the reference).  The
box centre is ``x1 + (x2 - x1) // 2``.

An image's hyperpixels (unit-norm features, boxes, CAM marginal weights and image
metadata) are computed once and reused for every pair the image appears in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from .backbones import Backbone, Geometry
from .cam import class_activation_map, marginal_weights
from .cost import l2_normalize, make_operand


@dataclass
class Hyperpixels:
    """Everything the matcher needs about one image, in the resized frame."""

    features: torch.Tensor  # (n, D) unit-norm rows (zero rows where the feature is zero)
    xs: torch.Tensor  # (w,) x of the grid columns' box centres
    ys: torch.Tensor  # (h,) y of the grid rows' box centres
    boxes: torch.Tensor  # (n, 4) x1, y1, x2, y2 (CPU, float32)
    weights: torch.Tensor  # (n,) unnormalised marginal weights (CPU, float32)
    size: tuple[int, int]  # (W, H) after resizing
    ratio: float  # resized / original
    original_size: tuple[int, int]  # (W, H) as loaded
    geometry: Geometry
    name: str = "image"
    cam: torch.Tensor | None = None  # (H, W) on CPU
    top_classes: list[int] = field(default_factory=list)
    cost_dtype: str = "float32"
    _operands: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the hyperpixel grid."""
        return len(self.ys), len(self.xs)

    @property
    def centres(self) -> torch.Tensor:
        """(n, 2) box centres (x, y), row-major over the grid."""
        return box_centres(self.boxes)

    def operand(self, role: str) -> torch.Tensor:
        """The padded matmul operand for this image as ``src`` or ``trg`` (built once, kept)."""
        key = role if self.cost_dtype == "bfloat16" else "any"
        op = self._operands.get(key)
        if op is None:
            op = make_operand(self.features, role, self.cost_dtype)
            self._operands[key] = op
        return op

    def nbytes(self) -> int:
        tensors = [self.boxes, self.weights, *self._operands.values()]
        if not any(self.features.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in self._operands.values()):
            tensors.append(self.features)
        return sum(t.element_size() * t.nelement() for t in tensors)


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """Centres ``x1 + (x2 - x1) // 2`` of (n, 4) boxes, as the reference computes them."""
    x = boxes[:, 0] + torch.div(boxes[:, 2] - boxes[:, 0], 2, rounding_mode="floor")
    y = boxes[:, 1] + torch.div(boxes[:, 3] - boxes[:, 1], 2, rounding_mode="floor")
    return torch.stack((x, y), dim=1)


def receptive_field_boxes(geometry: Geometry, height: int, width: int) -> torch.Tensor:
    """(height * width, 4) receptive-field boxes of a grid, row-major."""
    half = geometry.rf // 2
    x = torch.arange(width, dtype=torch.float32) * geometry.jump + geometry.offset_x
    y = torch.arange(height, dtype=torch.float32) * geometry.jump + geometry.offset_y
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    return torch.stack((xx - half, yy - half, xx + half, yy + half), dim=1)


def fuse(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Upsample (bilinear, align_corners=True) to the first map's grid and concatenate: (1, D, h, w)."""
    size = tuple(maps[0].shape[-2:])
    resized = [maps[0]] + [
        m if tuple(m.shape[-2:]) == size else F.interpolate(m, size, mode="bilinear", align_corners=True) for m in maps[1:]
    ]
    return torch.cat(resized, dim=1)


@torch.inference_mode()
def extract_hyperpixels(
    backbone: Backbone,
    image01: torch.Tensor,
    ids: Sequence[int],
    *,
    ratio: float,
    original_size: tuple[int, int],
    use_cam: bool = True,
    cam_scales: Sequence[float] = (1.0, 1.5, 2.0),
    cost_dtype: str = "float32",
    name: str = "image",
) -> Hyperpixels:
    """Hyperpixels of a resized RGB image (3, H, W) in [0, 1] on the backbone's device."""
    ids = sorted(ids)
    device = next(backbone.parameters()).device
    x = backbone.normalize(image01.unsqueeze(0).to(device))
    out = backbone.extract(x, ids, head=use_cam)

    fused = fuse([out.features[i] for i in ids])[0]  # (D, h, w)
    d, h, w = fused.shape
    unit = l2_normalize(fused.reshape(d, h * w).t())
    # Keep the features only inside their (padded) source operand: no second copy.
    src_operand = make_operand(unit, "src", cost_dtype)
    del unit, fused
    features = src_operand[: h * w, :d]

    H, W = int(image01.shape[1]), int(image01.shape[2])
    geometry = backbone.geometry(ids[0], H, W)
    if (geometry.height, geometry.width) != (h, w):
        raise RuntimeError(f"{backbone.name}: geometry predicts a {geometry.height}x{geometry.width} grid, network gave {h}x{w}")
    boxes = receptive_field_boxes(geometry, h, w)
    centres = box_centres(boxes)

    cam = None
    top_classes: list[int] = []
    if use_cam:
        cam, top_classes = class_activation_map(backbone, x, out, cam_scales)
        weights = marginal_weights(cam, centres).float().cpu()
        cam = cam.float().cpu()
    else:
        weights = torch.ones(h * w)

    return Hyperpixels(
        features=features,
        xs=centres[:w, 0].clone(),
        ys=centres[::w, 1].clone(),
        boxes=boxes,
        weights=weights,
        size=(W, H),
        ratio=ratio,
        original_size=original_size,
        geometry=geometry,
        name=name,
        cam=cam,
        top_classes=top_classes,
        cost_dtype=cost_dtype,
        _operands={"src" if cost_dtype == "bfloat16" else "any": src_operand},
    )
