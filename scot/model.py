"""The public API: ``SCOT(config)(src, trg, keypoints)`` -> :class:`MatchResult`.

The call runs the pipeline in the order the package is laid out::

    features  ->  cost  ->  ot  ->  rhm  ->  transfer
    (+ cam for the OT marginals)

:class:`SCOT` is a facade: :class:`~scot.features.HyperpixelExtractor` describes images
and :class:`~scot.matcher.Matcher` matches them.  :meth:`SCOT.extract` and
:meth:`SCOT.match` expose the two halves separately, so callers that see an image in many
pairs (``scot eval``) extract it once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from . import device as _device
from .backbones import Backbone, build_backbone
from .config import SCOTConfig
from .device import resolve_device
from .errors import ScotError
from .features import HyperpixelExtractor
from .hyperpixels import Hyperpixels
from .image import ImageLike, image_size
from .matcher import Matched, Matcher
from .mirror import keep_mirror, kept_mirror, mirror_pixels
from .precision import fp32_precision
from .timing import Clock
from .transfer import Rule

logger = logging.getLogger("scot")


def as_keypoints(keypoints: Any, size: tuple[int, int] | None = None, name: str = "keypoints") -> torch.Tensor:
    """Validate (K, 2) keypoints (x, y) in original pixels; ``size`` = (W, H) bounds them.

    Checked in NumPy on the host (a tensor anywhere is copied there first); returns a
    float32 CPU tensor.
    """
    if isinstance(keypoints, torch.Tensor):
        keypoints = keypoints.detach().cpu().double().numpy()
    try:
        kps = np.asarray(keypoints, dtype=np.float64).astype(np.float32)
    except (TypeError, ValueError):
        raise ScotError(f"{name}: keypoints must be numbers arranged as (K, 2) x, y pairs") from None
    if kps.size == 0:
        return torch.zeros(0, 2)
    if kps.ndim != 2 or kps.shape[1] != 2:
        raise ScotError(f"{name}: keypoints must have shape (K, 2), got {tuple(kps.shape)}")
    if not np.isfinite(kps).all():
        raise ScotError(f"{name}: keypoints contain NaN or infinite values")
    if size is not None:
        w, h = size
        outside = (kps[:, 0] < 0) | (kps[:, 1] < 0) | (kps[:, 0] > w) | (kps[:, 1] > h)
        if outside.any():
            k = int(np.flatnonzero(outside)[0])
            x, y = (float(v) for v in kps[k])
            raise ScotError(f"{name}: keypoint {k} at ({x:g}, {y:g}) lies outside the {w}x{h} source image")
    return torch.from_numpy(np.ascontiguousarray(kps))


class MatchResult(Matched):
    """The outcome of matching one image pair (its fields: :class:`~scot.matcher.Matched`).

    Coordinates in the resized frames (``*_resized``) are what the pipeline works in;
    :meth:`matches` and :attr:`transferred` are in original image pixels.

    With :attr:`flipped` (``flip='auto'`` kept the source's mirror), ``src`` describes the
    mirrored source and per-cell fields index its cells; :meth:`matches`,
    :meth:`source_centres`, :meth:`flow` and ``keypoints`` are in the source's own frame.
    """

    def source_centres(self) -> torch.Tensor:
        """(N, 2) source hyperpixel centres (x, y) in original source pixels, in the source's
        own frame (mirrored back when :attr:`flipped`), in the order of the cells."""
        xy = self.src.centres / self.src.ratio
        return mirror_pixels(xy, self.src.original_size[0]) if self.flipped else xy

    def flow(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense correspondence by the keypoint transfer rule: ``(flow (H, W, 2), confidence (H, W))``.

        ``flow[v, u]`` is where source pixel (u, v) lands in the target, in original target
        pixels; at a keypoint it equals :attr:`transferred` (see :mod:`scot.dense`).
        """
        from .dense import dense_flow

        # the configuration's transfer was validated against the same choices as the Rule literal
        how = cast(Rule, (self.config.transfer if self.config is not None else None) or "mean")
        flow, confidence = dense_flow(self.src.boxes, self.trg.boxes, self.best, self.src.grid, self.src.original_size,
                                      self.src.ratio, self.trg.ratio, how=how, confidence=self.best_confidence,
                                      usable=self.usable, target_tl=self.target_tl,
                                      target_size=self.trg.original_size)
        if self.flipped:  # computed over the mirrored source: pixel column u is column W - 1 - u there
            return flow.flip(1), confidence.flip(1)
        return flow, confidence

    def warp(self, target_image: Any, flow: torch.Tensor | None = None) -> torch.Tensor:
        """(3, H, W) the target image (a path, PIL image, array or tensor) warped into the source
        frame through :meth:`flow`; zero where the flow leaves the target."""
        from .dense import warp_image
        from .image import load_image

        target = load_image(target_image, "target_image")
        if target.size != self.trg.original_size:
            raise ScotError(f"the image is {target.size[0]}x{target.size[1]} pixels but the matched target is "
                            f"{self.trg.original_size[0]}x{self.trg.original_size[1]}", option="target_image")
        flow = self.flow()[0] if flow is None else flow
        return warp_image(target.tensor, flow)

    def transfer_mask(self, mask: Any, flow: torch.Tensor | None = None) -> torch.Tensor:
        """A binary or label mask (H, W) of the source moved into the target frame (Ht, Wt);
        label values are kept, never interpolated (see :func:`scot.dense.transfer_mask`)."""
        from .dense import transfer_mask

        flow = self.flow()[0] if flow is None else flow
        labels = torch.as_tensor(np.asarray(mask))
        w, h = self.src.original_size
        if tuple(labels.shape) != (h, w):
            raise ScotError(f"the mask is {tuple(labels.shape[::-1])} pixels but the source image is {w}x{h}",
                            option="mask")
        return transfer_mask(labels, flow, self.trg.original_size)

    def foreground(self) -> torch.Tensor:
        """(N,) bool: source hyperpixels on the object, i.e. CAM above 0.4 (all if CAM is off)."""
        if self.src.on_object is None:
            return torch.ones(self.src.n, dtype=torch.bool)
        return self.src.on_object

    def matches(self, top_k: int | None = None, foreground_only: bool = False) -> torch.Tensor:
        """(k, 5) rows ``src_x, src_y, trg_x, trg_y, confidence`` in original pixels, most confident first.

        Every source hyperpixel has one match (its most confident target).  With
        ``foreground_only``, hyperpixels off the object (CAM <= 0.4) are left out; image
        borders otherwise collect confident but meaningless matches.
        """
        if top_k is not None and top_k < 1:
            raise ScotError(f"must be at least 1, got {top_k}", option="top_k")
        conf = self.best_confidence.float().cpu()
        order = torch.argsort(conf, descending=True, stable=True)
        if foreground_only:
            keep = self.foreground()[order]
            if int(keep.sum()) > 0:
                order = order[keep]
        if top_k is not None:
            order = order[:top_k]
        src_xy = self.source_centres()[order]
        trg_xy = self.trg.centres[self.best.cpu()[order]] / self.trg.ratio
        return torch.cat((src_xy, trg_xy, conf[order].unsqueeze(1)), dim=1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of this match, as ``scot match`` writes it without the model and
        the paths (:func:`scot.record.match_record`; strict JSON, never NaN)."""
        from .record import match_record

        return match_record(self)



class SCOT:
    """Semantic correspondence by optimal transport (Liu et al., CVPR 2020).

    >>> model = SCOT(SCOTConfig(backbone="efficientnet-lite2"))  # doctest: +SKIP
    >>> result = model("cat1.jpg", "cat2.jpg", keypoints=[[40, 60]])  # doctest: +SKIP
    >>> result.transferred  # (1, 2) in the target's pixels  # doctest: +SKIP

    Args:
        config: the options (defaults reproduce the paper); keyword ``overrides`` replace
            single fields.
        backbone: an already built backbone to reuse (its weights win over the config's).
        notice: receives one-line notices (e.g. the ``auto`` backbone's fallback).
        factorize: how the correlation treats each layer group: ``auto`` (by a cost
            estimate), ``always`` or ``never`` (the classic dense table); all give the same
            results up to float rounding (see :mod:`scot.cost`).
    """

    def __init__(self, config: SCOTConfig | None = None, *, backbone: Backbone | None = None,
                 notice: Callable[[str], None] | None = None, factorize: str = "auto", **overrides: Any) -> None:
        cfg = config if config is not None else SCOTConfig()
        if overrides:
            cfg = cfg.replace(**overrides)
        cfg.validate()
        self.device = resolve_device(cfg.device)
        notice = notice or logger.warning
        if backbone is None:
            backbone = build_backbone(cfg.backbone, cfg.weights, notice=notice)
        # Channels-last convolutions are faster on CPU (ResNet-101 ~12 %, EfficientNet-Lite2 ~1.7x).
        # Module.to accepts a device and a memory format together; torch's overload stubs do not list it
        self.backbone = backbone.to(self.device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        self.config = cfg.resolve(backbone.name)
        if cfg.dropped_by_low_memory(backbone.name):
            notice(f"notice: low-memory mode matches one way; the preset's two-way matching of {backbone.name} is off")
        self.backbone.check_ids(self.hyperpixel_ids)
        self.extractor = HyperpixelExtractor(self.backbone, self.config, factorize)
        self.matcher = Matcher(self.config, self.device, notice, MatchResult)

    @property
    def hyperpixel_ids(self) -> tuple[int, ...]:
        assert self.config.hyperpixel_ids is not None
        return self.config.hyperpixel_ids

    def __call__(self, src: ImageLike, trg: ImageLike, keypoints: Any = None, keep_plan: bool = True,
                 topk: int = 0, mirror_keypoints: Any = None) -> MatchResult:
        """Match two images: the one entry point for images (:meth:`extract` then :meth:`match`).

        Args:
            src, trg: a path, a PIL image, an (H, W[, 3|4]) array or a (3, H, W) / (H, W, 3)
                tensor each (see :func:`scot.image.load_image`).
            keypoints: (K, 2) source points (x, y) in original source pixels, or None.
            keep_plan: also return the (N, M) ``votes`` and ``confidence`` (on the model's
                device); off saves memory.
            topk: > 0 keeps every source hyperpixel's ``topk`` most confident targets.
            mirror_keypoints: (K, 2) or None: for each keypoint, the source point whose
                mirror image looks like it (for a left eye, the right eye; for a part
                without a side, the keypoint itself).  With ``flip='auto'``, a kept mirror
                transfers these instead of ``keypoints``, so a keypoint lands on its own
                part rather than on its mirrored look-alike.  None: ``keypoints``.

        Returns:
            A :class:`MatchResult` with N source and M target hyperpixels:
            ``best`` (N,) target cell of each source cell and ``best_confidence`` (N,);
            ``transferred`` (K, 2) target points in original target pixels (and
            ``transferred_resized`` (K, 2)); ``votes`` and ``confidence`` (N, M) if kept;
            ``topk_index`` / ``topk_confidence`` (N, topk); ``target_tl`` (N, 2) with
            ``subpixel``; ``usable`` (N,) with ``mutual``; ``eps_used``; ``timings``
            (seconds per stage); ``src``/``trg`` the :class:`Hyperpixels`.
        """
        self.matcher.check_sizes(*(image_size(x) for x in (src, trg) if isinstance(x, (str, Path))))
        features: dict[str, float] = {}
        clock = Clock(features, self.device)
        s = self.extract(src, with_mirror=self.config.flip == "auto")
        t = self.extract(trg)
        clock.lap("features")
        result = self.match(s, t, keypoints, keep_plan=keep_plan, topk=topk, mirror_keypoints=mirror_keypoints)
        result.timings = {**features, **result.timings}
        return result

    def extract(self, image: ImageLike, name: str | None = None, flip: bool = False,
                timings: dict[str, float] | None = None, with_mirror: bool = False) -> Hyperpixels:
        """Load, resize (``flip``: mirror) and describe one image (features, boxes, CAM weights);
        ``with_mirror`` also describes its mirror (:attr:`Hyperpixels.mirror`), which a source
        needs with ``flip='auto'``."""
        h = self.extractor(image, name=name, flip=flip, timings=timings)
        if with_mirror:
            h.mirror = self.extractor(image, name=name, flip=not flip, timings=timings)
        return h

    def extract_many(self, images: Sequence[ImageLike], flips: Sequence[bool] | None = None) -> list[Hyperpixels]:
        """:meth:`extract` of many images, in their order; images of one resized size share the
        network passes (see :meth:`HyperpixelExtractor.views <scot.features.HyperpixelExtractor.views>`)."""
        return self.extractor.extract_many(images, flips=flips)

    def match(self, src: Hyperpixels, trg: Hyperpixels, keypoints: Any = None, keep_plan: bool = True,
              check_bounds: bool = True, topk: int = 0, mirror_keypoints: Any = None) -> MatchResult:
        """Match two extracted images (:meth:`extract`); arguments and result as for :meth:`__call__`.

        ``check_bounds=False`` accepts keypoints outside the source image (benchmark
        annotations sometimes are).
        """
        return self.match_batch([(src, trg, keypoints)], keep_plan=keep_plan, check_bounds=check_bounds, topk=topk,
                                mirror_keypoints=[mirror_keypoints])[0]

    @torch.inference_mode()
    def match_batch(self, items: Sequence[tuple[Hyperpixels, Hyperpixels, Any]], keep_plan: bool = False,
                    check_bounds: bool = True, topk: int = 0,
                    mirror_keypoints: Sequence[Any] | None = None) -> list[MatchResult]:
        """Match several (src, trg, keypoints) items of extracted images (see :meth:`match`).

        ``mirror_keypoints``, one per item (each (K, 2) or None), are what a kept mirror
        transfers (see :meth:`__call__`).

        Pairs of different sizes are solved together, each result equal to matching the
        pair alone; on a GPU in as few batches as its free memory allows, halved on
        out-of-memory (:class:`~scot.matcher.Matcher`).  The timings of a batch are shared
        by its results.  Results are on the host; ``votes`` and ``confidence`` stay on the
        model's device.
        """
        if not items:
            raise ScotError("no pairs to match (give at least one (src, trg, keypoints) item)", option="items")
        pairs = [_checked_pair(i, s, t) for i, (s, t, _) in enumerate(items)]
        kps = [None if k is None else as_keypoints(k, s.original_size if check_bounds else None) for s, _, k in items]
        partners = _mirror_keypoints(items, kps, mirror_keypoints, check_bounds)
        with fp32_precision(self.device, self.config.tf32):
            plain = self.matcher.match(pairs, kps, keep_plan, topk)
            if self.config.flip != "auto":
                return plain
            mirrors = [(_mirror_of(i, s), t) for i, (s, t) in enumerate(pairs)]
            width = [s.original_size[0] for s, _ in pairs]
            mirrored = self.matcher.match(mirrors, [None if k is None else mirror_pixels(k, w)
                                                    for k, w in zip(partners, width)], keep_plan, topk)
        margin = self.config.flip_margin
        return [kept_mirror(m, k) if keep_mirror(p, m, margin) else p for p, m, k in zip(plain, mirrored, kps)]

    def release_memory(self) -> None:
        """Free the matching workspaces this thread keeps between calls."""
        self.matcher.release_memory()

    def device_info(self) -> dict[str, str | None]:
        """The device the model runs on and, on CUDA, the GPU's name (for run reports)."""
        return _device.device_info(self.device)

    def describe(self) -> dict[str, Any]:
        """Backbone name, weights source and resolved options, for recording in outputs."""
        return {
            "backbone": self.backbone.name,
            "weights": self.backbone.weights_source,
            "device": str(self.device),
            "config": self.config.to_dict(),
        }


def _mirror_keypoints(items: Sequence[tuple[Hyperpixels, Hyperpixels, Any]], kps: list[torch.Tensor | None],
                      given: Sequence[Any] | None, check_bounds: bool) -> list[torch.Tensor | None]:
    """The keypoints a kept mirror transfers, item by item: ``given``'s where set, else the keypoints."""
    if given is None:
        return kps
    if len(given) != len(items):
        raise ScotError(f"{len(given)} sets of mirror keypoints for {len(items)} pairs", option="mirror_keypoints")
    out = []
    for i, ((s, _, _), k, m) in enumerate(zip(items, kps, given)):
        if m is None:
            out.append(k)
            continue
        m = as_keypoints(m, s.original_size if check_bounds else None, name="mirror_keypoints")
        if k is None or len(m) != len(k):
            raise ScotError(f"item {i}: {len(m)} mirror keypoints for {0 if k is None else len(k)} keypoints "
                            "(one per keypoint)", option="mirror_keypoints")
        out.append(m)
    return out


def _mirror_of(index: int, src: Hyperpixels) -> Hyperpixels:
    """The description of a source's mirror, which ``flip='auto'`` matches too."""
    if src.mirror is None:
        raise ScotError(f"item {index}: flip='auto' also matches the mirrored source, but {src.name} was described "
                        "without it; describe sources with SCOT.extract(image, with_mirror=True)", option="src")
    return src.mirror


def _checked_pair(index: int, src: Any, trg: Any) -> tuple[Hyperpixels, Hyperpixels]:
    """An item's images, checked: extracted :class:`Hyperpixels` of one model."""
    for role, h in (("src", src), ("trg", trg)):
        if not isinstance(h, Hyperpixels):
            raise ScotError(f"item {index}: {role} is a {type(h).__name__}, not extracted features; describe images "
                            "with SCOT.extract(image) first, or match two images with model(src, trg)", option=role)
    if src.origin != trg.origin:
        raise ScotError(f"item {index}: the images were described by different models: {src.name} by "
                        f"{src.origin or 'an unknown model'}, {trg.name} by {trg.origin or 'an unknown model'}",
                        option="trg")
    return src, trg
