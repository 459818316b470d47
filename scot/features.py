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

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from .backbones import Backbone, Geometry
from .cam import class_activation_map, marginal_weights
from .cost import make_operand, normalize_rows_, padded_rows


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


class _Clock:
    """Accumulates stage durations into an optional dict (synchronising CUDA first)."""

    def __init__(self, sink: dict[str, float] | None) -> None:
        self.sink = sink
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.sink is None:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.sink[name] = self.sink.get(name, 0.0) + now - self.t
        self.t = now


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


def fuse(maps: Sequence[torch.Tensor], rows: int | None = None) -> torch.Tensor:
    """The hyperpixel table: maps upsampled to the first map's grid, concatenated per cell.

    Each map is upsampled bilinearly (``align_corners=True``) in channels-last memory
    (an order of magnitude faster on CPU than NCHW, bit-identical) and written straight
    into its column block of a (rows, D) table whose row ``y * w + x`` is grid cell
    (x, y); rows beyond ``h * w`` (padding, see :mod:`scot.cost`) are zero.  No
    intermediate list or concatenation is materialised.
    """
    _, _, h, w = maps[0].shape
    n = h * w
    d = sum(int(m.shape[1]) for m in maps)
    table = torch.empty(rows or n, d, dtype=maps[0].dtype, device=maps[0].device)
    table[n:].zero_()
    col = 0
    for m in maps:
        c = int(m.shape[1])
        m = m.contiguous(memory_format=torch.channels_last)
        if tuple(m.shape[-2:]) != (h, w):
            m = F.interpolate(m, (h, w), mode="bilinear", align_corners=True)
        table[:n, col : col + c].copy_(m.permute(0, 2, 3, 1).reshape(n, c))
        col += c
    return table


@dataclass
class NetworkView:
    """What the backbone produced for one resized image, before choosing how to fuse it.

    Keeping this per image lets a layer search try many id sets with one network pass.
    """

    maps: dict[int, torch.Tensor]  # id -> (1, C, h, w) feature map
    cam: torch.Tensor | None  # (H, W) class activation map on the backbone's device
    top_classes: list[int]
    size: tuple[int, int]  # (W, H) after resizing
    ratio: float
    original_size: tuple[int, int]
    name: str = "image"

    def nbytes(self) -> int:
        tensors = list(self.maps.values()) + ([self.cam] if self.cam is not None else [])
        return sum(t.element_size() * t.nelement() for t in tensors)


@torch.inference_mode()
def observe(
    backbone: Backbone,
    image01: torch.Tensor,
    ids: Sequence[int],
    *,
    ratio: float,
    original_size: tuple[int, int],
    use_cam: bool = True,
    cam_scales: Sequence[float] = (1.0, 1.5, 2.0),
    feature_scales: Sequence[float] = (1.0,),
    name: str = "image",
    timings: dict[str, float] | None = None,
) -> NetworkView:
    """Run the backbone on a resized RGB image (3, H, W) in [0, 1]: maps of ``ids`` and the CAM.

    With ``feature_scales`` beyond 1, each id's map is the mean of its maps at those input
    scales, resampled to the scale-1 grid; scales that the CAM also uses share its passes.
    """
    device = next(backbone.parameters()).device
    clock = _Clock(timings)
    ids = sorted(ids)
    if device.type == "cuda":
        image01 = image01.pin_memory()  # page-locked, so the copy below is asynchronous
    x = backbone.normalize(image01.unsqueeze(0).to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
    out = backbone.extract(x, ids, head=use_cam)
    clock.lap("backbone")
    extra_scales = [s for s in feature_scales if s != 1.0]
    cam, top_classes, extra = None, [], {}
    if use_cam:
        shared = ids if any(s in cam_scales for s in extra_scales) else ()
        cam, top_classes, extra = class_activation_map(backbone, x, out, cam_scales, shared)
        clock.lap("cam")
    maps = out.features
    if extra_scales:
        size = (int(x.shape[2]), int(x.shape[3]))
        for s in extra_scales:
            if s not in extra:
                xs = F.interpolate(x, (int(s * size[0]), int(s * size[1])), mode="bilinear", align_corners=True)
                extra[s] = backbone.extract(xs, ids, head=False).features
        maps = {
            i: sum([maps[i]] + [F.interpolate(extra[s][i], maps[i].shape[-2:], mode="bilinear", align_corners=True)
                                for s in extra_scales]) / len(feature_scales)
            for i in ids
        }
        clock.lap("backbone")
    H, W = int(image01.shape[1]), int(image01.shape[2])
    return NetworkView(maps, cam, top_classes, (W, H), ratio, original_size, name)


@torch.inference_mode()
def hyperpixels_from_view(
    view: NetworkView,
    backbone: Backbone,
    ids: Sequence[int],
    cost_dtype: str = "float32",
    timings: dict[str, float] | None = None,
    cam_weighting: str = "levels",
    center: bool = False,
) -> Hyperpixels:
    """Fuse the maps of ``ids`` into hyperpixels with boxes and CAM marginal weights.

    With ``center`` the image's mean hyperpixel is subtracted (per channel) before the
    rows are normalised, so the cosine compares deviations from the image's average
    appearance rather than a component that every hyperpixel shares.
    """
    ids = sorted(ids)
    clock = _Clock(timings)
    maps = [view.maps[i] for i in ids]
    h, w = maps[0].shape[-2:]
    table = fuse(maps, rows=padded_rows(h * w))
    del maps
    d = table.shape[1]
    if center:
        table[: h * w].sub_(table[: h * w].mean(0, keepdim=True))
    # The features live only inside their (padded, normalised) source operand: no second copy.
    if cost_dtype != "bfloat16":  # float32 / tf32: the table is the operand
        src_operand = normalize_rows_(table)
    else:
        src_operand = make_operand(table[: h * w], "src", cost_dtype, normalize=True)
        del table
    features = src_operand[: h * w, :d]

    W, H = view.size
    geometry = backbone.geometry(ids[0], H, W)
    if (geometry.height, geometry.width) != (h, w):
        raise RuntimeError(f"{backbone.name}: geometry predicts a {geometry.height}x{geometry.width} grid, network gave {h}x{w}")
    boxes = receptive_field_boxes(geometry, h, w)
    centres = box_centres(boxes)
    if view.cam is not None:
        weights = marginal_weights(view.cam, centres, cam_weighting).float().cpu()
    else:
        weights = torch.ones(h * w)
    clock.lap("fusion")

    return Hyperpixels(
        features=features,
        xs=centres[:w, 0].clone(),
        ys=centres[::w, 1].clone(),
        boxes=boxes,
        weights=weights,
        size=view.size,
        ratio=view.ratio,
        original_size=view.original_size,
        geometry=geometry,
        name=view.name,
        cam=None if view.cam is None else view.cam.float().cpu(),
        top_classes=view.top_classes,
        cost_dtype=cost_dtype,
        _operands={"src" if cost_dtype == "bfloat16" else "any": src_operand},
    )


def extract_hyperpixels(
    backbone: Backbone,
    image01: torch.Tensor,
    ids: Sequence[int],
    *,
    ratio: float,
    original_size: tuple[int, int],
    use_cam: bool = True,
    cam_scales: Sequence[float] = (1.0, 1.5, 2.0),
    feature_scales: Sequence[float] = (1.0,),
    cam_weighting: str = "levels",
    center: bool = False,
    cost_dtype: str = "float32",
    name: str = "image",
    timings: dict[str, float] | None = None,
) -> Hyperpixels:
    """Hyperpixels of a resized RGB image (3, H, W) in [0, 1]: :func:`observe` then fuse.

    ``timings``, if given, receives the seconds spent in ``backbone``, ``cam`` (the extra
    CAM scales included) and ``fusion``.
    """
    view = observe(backbone, image01, ids, ratio=ratio, original_size=original_size, use_cam=use_cam,
                   cam_scales=cam_scales, feature_scales=feature_scales, name=name, timings=timings)
    return hyperpixels_from_view(view, backbone, ids, cost_dtype, timings, cam_weighting, center)
