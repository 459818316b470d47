r"""Step 1 of the pipeline: from an image to its :class:`~scot.hyperpixels.Hyperpixels`.

The backbone runs once per image (:func:`observe`, batched by :func:`observe_batch`) and
leaves a :class:`NetworkView`; :func:`describe` fuses the maps of the selected ids into
layer groups at their native resolutions (see :mod:`scot.hyperpixels` for the algebra),
choosing per group whether it is correlated through its Gram matrix
(:func:`factorize_groups`).  The same algebra gives, per image:

* the hyperpixel norms :math:`\|f_i\|^2 = \sum_g \|(U_g X_g)_i\|^2`;
* centring: the grid mean of :math:`U_g X_g` is :math:`w_g^\top X_g` with
  :math:`w_g = U_g^\top \mathbb 1 / n`, and since every row of :math:`U_g` sums to one,
  subtracting it from the native cells centres the upsampled features exactly.

:class:`HyperpixelExtractor` turns an image into :class:`~scot.hyperpixels.Hyperpixels` from a
resolved :class:`~scot.config.SCOTConfig`; :class:`~scot.SCOT`, ``scot search-layers`` and
``scot bench`` all describe images through it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F

from . import device as _device
from .backbones import Backbone
from .cam import class_activation_map, foreground, marginal_weights
from .hyperpixels import Hyperpixels, LayerGroup, bilinear_matrix, box_centres, receptive_field_boxes
from .image import ImageLike, load_image
from .precision import fp32_precision
from .timing import Clock

if TYPE_CHECKING:
    from .config import SCOTConfig

_CHANNEL_CHUNK = 512  # channels upsampled at once when computing norms (bounds the temporary)
BATCH_BYTES = 1 << 30
"""Default memory budget of one batched network pass (:meth:`HyperpixelExtractor.views`)."""


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

    def to(self, device: torch.device | str, ids: Sequence[int] | None = None) -> NetworkView:
        """The maps of ``ids`` (default: all) and the CAM on ``device``; itself when nothing moves."""
        device = torch.device(device)
        keep = self.maps if ids is None else {i: self.maps[i] for i in ids}
        tensors = list(keep.values()) + ([self.cam] if self.cam is not None else [])
        if ids is None and all(t.device == device for t in tensors):
            return self
        return dataclasses.replace(self, maps={i: m.to(device) for i, m in keep.items()},
                                   cam=None if self.cam is None else self.cam.to(device))


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
    return observe_batch(backbone, [image01], ids, ratios=[ratio], original_sizes=[original_size],
                         names=[name], use_cam=use_cam, cam_scales=cam_scales, feature_scales=feature_scales,
                         timings=timings)[0]


@torch.inference_mode()
def observe_batch(
    backbone: Backbone,
    images01: Sequence[torch.Tensor],
    ids: Sequence[int],
    *,
    ratios: Sequence[float],
    original_sizes: Sequence[tuple[int, int]],
    names: Sequence[str],
    use_cam: bool = True,
    cam_scales: Sequence[float] = (1.0, 1.5, 2.0),
    feature_scales: Sequence[float] = (1.0,),
    timings: dict[str, float] | None = None,
) -> list[NetworkView]:
    """:func:`observe` for B resized images (3, H, W) of one size, through the network together.

    Every network pass (scale 1, and each CAM and feature scale) runs once on the (B, 3, H, W)
    batch; each returned view holds its image's slices and equals what :func:`observe` gives
    for the image alone, to float rounding.
    """
    sizes = {tuple(im.shape) for im in images01}
    if len(sizes) != 1:
        raise ValueError(f"a batch must share one image size, got {sorted(sizes)}")
    device = next(backbone.parameters()).device
    clock = Clock(timings, device)
    ids = sorted(ids)
    batch = torch.stack([im.to(device) for im in images01])
    x = backbone.normalize(batch).contiguous(memory_format=torch.channels_last)
    out = backbone.extract(x, ids, head=use_cam)
    clock.lap("backbone")
    extra_scales = [s for s in feature_scales if s != 1.0]
    cams: torch.Tensor | None = None
    top_classes: list[list[int]] = [[] for _ in images01]
    extra: dict[float, dict[int, torch.Tensor]] = {}
    if use_cam:
        shared = ids if any(s in cam_scales for s in extra_scales) else ()
        cams, top_classes, extra = class_activation_map(backbone, x, out, cam_scales, shared)
        clock.lap("cam")
    maps = out.features
    if extra_scales:
        size = (int(x.shape[2]), int(x.shape[3]))
        for s in extra_scales:
            if s not in extra:
                xs = F.interpolate(x, (int(s * size[0]), int(s * size[1])), mode="bilinear", align_corners=True)
                extra[s] = backbone.extract(xs, ids, head=False).features
        maps = {
            i: cast(torch.Tensor, sum(
                [maps[i]] + [F.interpolate(extra[s][i], maps[i].shape[-2:], mode="bilinear", align_corners=True)
                             for s in extra_scales]
            )) / len(feature_scales)
            for i in ids
        }
        clock.lap("backbone")
    H, W = int(x.shape[2]), int(x.shape[3])
    return [NetworkView({i: m[b : b + 1] for i, m in maps.items()}, None if cams is None else cams[b],
                        top_classes[b], (W, H), ratios[b], original_sizes[b], names[b])
            for b in range(len(images01))]


def pass_bytes(backbone: Backbone, height: int, width: int) -> int:
    """Bytes of every hyperpixel id's float32 map for one (height, width) input: an upper
    bound of what one image's network pass holds at once (a pass keeps only a few of them)."""
    total = 0
    for hid in range(backbone.num_ids):
        g = backbone.geometry(hid, height, width)
        total += 4 * backbone.channels(hid) * g.height * g.width
    return total


def _group_maps(maps: Sequence[torch.Tensor]) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """Maps (1, C, h, w) grouped by resolution, each group as (cells, channels), finest first."""
    by_shape: dict[tuple[int, int], list[torch.Tensor]] = {}
    for m in maps:
        by_shape.setdefault((int(m.shape[2]), int(m.shape[3])), []).append(m[0].flatten(1).t())
    ordered = sorted(by_shape.items(), key=lambda kv: -kv[0][0] * kv[0][1])
    return [(shape, torch.cat(parts, 1) if len(parts) > 1 else parts[0].contiguous()) for shape, parts in ordered]


def _squared_norms(group: LayerGroup) -> torch.Tensor:
    """(h * w,) squared norms of the group's rows on the grid, upsampling a few channels at a time."""
    total = None
    for c0 in range(0, group.channels, _CHANNEL_CHUNK):
        part = group.upsampled(c0, c0 + _CHANNEL_CHUNK).square().sum(1)
        total = part if total is None else total.add_(part)
    assert total is not None
    return total


FACTORIZED_COLUMN_COST = 1.6
"""Cost of one native column of a factorized group, in channels of the dense product.

The last interpolation step is a batched matmul whose inner size is the group's native
width ``w_g``; on the CPU it runs at about 1/1.6 of the large dense matmul's speed per
multiply-add (``scot bench pairs`` prints both paths)."""


def factorize_groups(channels: Sequence[int], shapes: Sequence[tuple[int, int]], mode: str = "auto") -> list[bool]:
    """Which layer groups to correlate through their native Gram matrices.

    Args:
        channels: ``C_g`` of each group, the grid's own resolution first.
        shapes: ``(h_g, w_g)`` of each group on a nominal square image.
        mode: ``auto``, ``always`` or ``never``.

    Returns:
        One flag per group.  The first group (the grid's resolution) is never factorized.
        With ``auto``, group g is factorized when its estimated cost per matrix entry,
        ``FACTORIZED_COLUMN_COST * w_g + C_g * (h_g w_g)^2 / (h w)^2`` (the last
        interpolation step and the Gram matrix), is below the dense product's ``C_g``.
    """
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"factorize must be auto, always or never, got {mode!r}")
    h, w = shapes[0]
    flags = [False]
    for c, (h_g, w_g) in zip(channels[1:], shapes[1:]):
        if mode == "auto":
            gram = c * (h_g * w_g) ** 2 / (h * w) ** 2
            flags.append(FACTORIZED_COLUMN_COST * w_g + gram < c)
        else:
            flags.append(mode == "always")
    return flags


@torch.inference_mode()
def describe(
    view: NetworkView,
    backbone: Backbone,
    ids: Sequence[int],
    *,
    cam_weighting: str = "levels",
    center: bool = False,
    factorize: str = "auto",
    timings: dict[str, float] | None = None,
) -> Hyperpixels:
    """The :class:`Hyperpixels` of the maps of ``ids`` in ``view``: groups, norms, boxes, weights.

    Args:
        view: the backbone's output for one image (:func:`observe`).
        backbone: the network that produced it (for the receptive-field geometry).
        ids: selected hyperpixel ids; the grid is that of the shallowest.
        cam_weighting: ``levels`` or ``linear`` (see :mod:`scot.cam`).
        center: subtract the image's mean hyperpixel (computed on the grid) before the
            cosine, so matches are scored on what distinguishes a location.
        factorize: ``auto`` (each group by the cost estimate of
            :func:`factorize_groups`), ``always`` or ``never`` (the classic dense
            table; the result is the same up to float rounding).
    """
    ids = sorted(ids)
    clock = Clock(timings, next(backbone.parameters()).device)
    grouped = _group_maps([view.maps[i] for i in ids])
    (h, w), _ = grouped[0]
    W, H = view.size
    geometry = backbone.geometry(ids[0], H, W)
    if (geometry.height, geometry.width) != (h, w):
        raise RuntimeError(
            f"{backbone.name}: geometry predicts a {geometry.height}x{geometry.width} grid, network gave {h}x{w}"
        )
    device = grouped[0][1].device
    side = max(W, H)
    nominal = [backbone.geometry(min(i for i in ids if tuple(view.maps[i].shape[-2:]) == shape), side, side)
               for shape, _ in grouped]
    plan = factorize_groups([x.shape[1] for _, x in grouped], [(g.height, g.width) for g in nominal], factorize)

    groups = []
    for ((h_g, w_g), x), fact in zip(grouped, plan):
        groups.append(
            LayerGroup(x.float(), (h_g, w_g), bilinear_matrix(h, h_g, device), bilinear_matrix(w, w_g, device), fact)
        )
    if center:
        n = h * w
        for g in groups:
            weight = torch.outer(g.rows.sum(0), g.cols.sum(0)).reshape(-1) / n  # U_g^T 1 / n
            g.maps = g.maps - weight @ g.maps
    sq = None
    for g in groups:
        part = _squared_norms(g)
        sq = part if sq is None else sq.add_(part)
    assert sq is not None
    finite = torch.isfinite(sq).all()
    norms = sq.sqrt_()
    inv_norms = torch.where(norms > 0, norms.reciprocal(), torch.zeros((), device=device))
    parts = [g.upsampled() for g in groups if not g.factorized]
    dense = (torch.cat(parts, 1) if len(parts) > 1 else parts[0].clone()).mul_(inv_norms.unsqueeze(1))

    boxes = receptive_field_boxes(geometry, h, w)
    centres = box_centres(boxes)
    if view.cam is not None:  # everything the host keeps comes over in one copy
        finite, weights, on_object, cam = _device.to_host(
            finite, marginal_weights(view.cam, centres, cam_weighting).float(), foreground(view.cam, centres),
            view.cam.float())
    else:
        (finite,) = _device.to_host(finite)
        weights, on_object, cam = torch.ones(h * w), None, None
    if not bool(finite):
        from .errors import ScotError

        raise ScotError(f"{view.name}: the backbone's features are not finite (NaN or infinite); its weights "
                        f"({getattr(backbone, 'weights_source', 'unknown')}) are broken", option="weights")
    clock.lap("fusion")
    return Hyperpixels(
        dense=dense, factorized=[g for g in groups if g.factorized], inv_norms=inv_norms,
        layout=[(g.shape, g.channels, g.factorized) for g in groups], dense_reversed=dense.flip(0),
        xs=centres[:w, 0].clone(), ys=centres[::w, 1].clone(), boxes=boxes,
        weights=weights, size=view.size, ratio=view.ratio, original_size=view.original_size, geometry=geometry,
        name=view.name, cam=cam, top_classes=view.top_classes, on_object=on_object,
    )


class HyperpixelExtractor:
    """Turns images into :class:`Hyperpixels` as a resolved configuration says.

    The one place that knows how an image becomes what the matcher needs: loading,
    the 300-px resize, the backbone and CAM passes (:func:`observe`) and the fusion
    into layer groups (:func:`describe`).

    Args:
        backbone: the network, on its device, in eval mode.
        config: a resolved :class:`~scot.config.SCOTConfig` (``hyperpixel_ids`` set).
        factorize: ``auto``, ``always`` or ``never`` (see :func:`describe`).
    """

    def __init__(self, backbone: Backbone, config: SCOTConfig, factorize: str = "auto") -> None:
        if config.hyperpixel_ids is None:
            raise ValueError("the configuration must be resolved (hyperpixel_ids set)")
        self.backbone = backbone
        self.config = config
        self.factorize = factorize

    @property
    def ids(self) -> tuple[int, ...]:
        assert self.config.hyperpixel_ids is not None
        return self.config.hyperpixel_ids

    @property
    def device(self) -> torch.device:
        """Where the backbone runs."""
        return next(self.backbone.parameters()).device

    def view(self, image: ImageLike, ids: Sequence[int] | None = None, *, name: str | None = None,
             flip: bool = False, timings: dict[str, float] | None = None) -> NetworkView:
        """Load, resize (and with ``flip`` mirror) an image and run the backbone for ``ids``."""
        cfg = self.config
        t0 = time.perf_counter()
        loaded = load_image(image, name, max_side=cfg.image_side)  # huge photos decode reduced
        if flip:
            loaded = dataclasses.replace(loaded, tensor=loaded.tensor.flip(-1))
        resized, ratio = loaded.resized(cfg.image_side)
        if timings is not None:
            timings["load+resize"] = timings.get("load+resize", 0.0) + time.perf_counter() - t0
        with fp32_precision(self.device, cfg.tf32):
            return observe(self.backbone, resized, self.ids if ids is None else ids, ratio=ratio,
                           original_size=loaded.size, use_cam=cfg.cam, cam_scales=cfg.cam_scales,
                           feature_scales=cfg.feature_scales or (1.0,), name=loaded.name, timings=timings)

    def origin(self, ids: Sequence[int] | None = None) -> str:
        """What makes features of ``ids`` (default: the configuration's) what they are: the
        backbone, its weights, the ids and every option that changes features or weights."""
        cfg = self.config

        def listed(values: Sequence[float]) -> str:
            return ",".join(f"{v:g}" for v in values)

        cam = f"{listed(cfg.cam_scales)} {cfg.cam_weighting}" if cfg.cam else "off"
        return (f"{self.backbone.name} ({self.backbone.weights_source}), ids {listed(sorted(ids or self.ids))}, "
                f"image_side {cfg.image_side}, feature_scales {listed(cfg.feature_scales or (1.0,))}, "
                f"center_features {'on' if cfg.center_features else 'off'}, cam {cam}, factorize {self.factorize}")

    def views(self, images: Sequence[ImageLike], ids: Sequence[int] | None = None, *,
              flips: Sequence[bool] | None = None, batch_bytes: int = BATCH_BYTES,
              timings: dict[str, float] | None = None) -> list[NetworkView]:
        """:meth:`view` of many images, in their order: images whose resized sizes are equal go
        through the network together (:func:`observe_batch`), as many at once as keep the
        estimated memory of their largest pass (:func:`pass_bytes`) within ``batch_bytes``."""
        cfg = self.config
        flips = [False] * len(images) if flips is None else list(flips)
        if len(flips) != len(images):
            raise ValueError(f"{len(images)} images but {len(flips)} flips")
        t0 = time.perf_counter()
        resized: list[tuple[torch.Tensor, float, tuple[int, int], str]] = []
        for image, flip in zip(images, flips):
            loaded = load_image(image, None, max_side=cfg.image_side)
            if flip:
                loaded = dataclasses.replace(loaded, tensor=loaded.tensor.flip(-1))
            tensor, ratio = loaded.resized(cfg.image_side)
            resized.append((tensor, ratio, loaded.size, loaded.name))
        if timings is not None:
            timings["load+resize"] = timings.get("load+resize", 0.0) + time.perf_counter() - t0
        by_size: dict[tuple[int, int], list[int]] = {}
        for k, (tensor, _, _, _) in enumerate(resized):
            by_size.setdefault((int(tensor.shape[1]), int(tensor.shape[2])), []).append(k)
        scale = max((*cfg.cam_scales, *(cfg.feature_scales or (1.0,))) if cfg.cam else (cfg.feature_scales or (1.0,)))
        out: list[NetworkView | None] = [None] * len(images)
        with fp32_precision(self.device, cfg.tf32):
            for (h, w), members in by_size.items():
                per_image = pass_bytes(self.backbone, int(scale * h), int(scale * w))
                step = max(1, batch_bytes // max(per_image, 1))
                for i in range(0, len(members), step):
                    chunk = members[i : i + step]
                    views = observe_batch(
                        self.backbone, [resized[k][0] for k in chunk], self.ids if ids is None else ids,
                        ratios=[resized[k][1] for k in chunk], original_sizes=[resized[k][2] for k in chunk],
                        names=[resized[k][3] for k in chunk], use_cam=cfg.cam, cam_scales=cfg.cam_scales,
                        feature_scales=cfg.feature_scales or (1.0,), timings=timings)
                    for k, v in zip(chunk, views):
                        out[k] = v
        return [v for v in out if v is not None]

    def extract_many(self, images: Sequence[ImageLike], *, flips: Sequence[bool] | None = None,
                     batch_bytes: int = BATCH_BYTES, timings: dict[str, float] | None = None) -> list[Hyperpixels]:
        """:meth:`__call__` of many images, in their order, with the network passes batched
        (see :meth:`views`)."""
        with torch.inference_mode():
            return [self.describe(v, timings=timings)
                    for v in self.views(images, flips=flips, batch_bytes=batch_bytes, timings=timings)]

    def describe(self, view: NetworkView, ids: Sequence[int] | None = None,
                 timings: dict[str, float] | None = None) -> Hyperpixels:
        """Fuse ``ids`` (default: the configuration's) of a view into hyperpixels (on the view's device)."""
        with fp32_precision(self.device, self.config.tf32):
            described = describe(view, self.backbone, self.ids if ids is None else ids,
                                 cam_weighting=self.config.cam_weighting, center=bool(self.config.center_features),
                                 factorize=self.factorize, timings=timings)
        described.origin = self.origin(ids)
        return described

    def __call__(self, image: ImageLike, *, name: str | None = None, flip: bool = False,
                 timings: dict[str, float] | None = None) -> Hyperpixels:
        """Load, resize and describe one image.

        ``timings``, if given, receives the seconds spent in ``load+resize``, ``backbone``,
        ``cam`` (the extra CAM scales included) and ``fusion``.
        """
        with torch.inference_mode():
            return self.describe(self.view(image, name=name, flip=flip, timings=timings), timings=timings)
