"""The public API: ``SCOT(config)(src, trg, keypoints)`` -> :class:`MatchResult`.

The call runs the pipeline in the order the package is laid out::

    features  ->  cost  ->  ot  ->  rhm  ->  transfer
    (+ cam for the OT marginals)

:meth:`SCOT.extract` and :meth:`SCOT.match` expose the two halves separately, so callers
that see an image in many pairs (``scot eval``) extract it once.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import device as _device
from .backbones import Backbone, build_backbone
from .config import SCOTConfig
from .cost import Correlation, cost_from_log2_kernel_, kernel_scale, log2_kernel_
from .errors import ScotError
from .features import Clock, HyperpixelExtractor, Hyperpixels
from .image import ImageLike, image_size, resized_size
from .precision import fp32_precision
from .ot import Scalings, dampening, kernel_sinkhorn, log2_votes, scot_votes
from .rhm import GRID_ERROR, HoughWindows, grid_view
from .streaming import streamed_best_matches
from .transfer import mutual_mask, soft_argmax_targets, transfer_keypoints

# Largest 1/ε for which exp(-C/ε) with C <= 1 stays a normal float32: the solver on the
# stored log-kernel cannot produce a non-finite scaling there (see SCOT._votes).
_SAFE_INV_EPS = 80.0
_BLOCK_BYTES = 4 << 20  # rows of the N x M matrix processed together on the CPU (kept in cache)
_DEVICE_BLOCK_BYTES = 256 << 20  # on a GPU: bounds the exp2 temporary of the Sinkhorn sweeps
_DEVICE_RESERVE = 0.1  # share of a GPU's free memory left to the allocator's slack and small temporaries
_ACTIVATION_BYTES = 700  # peak bytes of backbone activations per pixel of the largest network input (measured: 320-600)
_HOST_SHARE = 0.8  # share of the host's available memory a match may plan to use

logger = logging.getLogger("scot")


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` names, checked: ``cpu``, ``cuda`` or ``cuda:INDEX`` of a present GPU.

    ``cuda`` is the current GPU with its index filled in, so that the model's device
    compares equal to its tensors' devices.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ScotError(f"'{name}' is not a device (use cpu, cuda or cuda:INDEX)", option="device") from None
    if device.type not in ("cpu", "cuda"):
        raise ScotError(f"'{name}' is not supported (use cpu, cuda or cuda:INDEX)", option="device")
    if device.type == "cpu":
        return torch.device("cpu")  # one host device: an index (cpu:0) would only defeat device comparisons
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ScotError("CUDA was requested but no CUDA GPU is available; use cpu", option="device")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ScotError(f"'{name}' does not exist: this machine has {count} CUDA GPU{'s' if count != 1 else ''} "
                            f"(cuda:0{f'..cuda:{count - 1}' if count > 1 else ''})", option="device")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


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


@dataclass
class MatchResult:
    """The outcome of matching one image pair.

    Coordinates in the resized frames (``*_resized``) are what the pipeline works in;
    :meth:`matches` and :attr:`transferred` are in original image pixels.
    """

    src: Hyperpixels
    trg: Hyperpixels
    best: torch.Tensor  # (N,) matched target hyperpixel of every source hyperpixel
    best_confidence: torch.Tensor  # (N,)
    plan: torch.Tensor | None = None  # (N, M) transport votes (N·P)^exp2, if kept
    confidence: torch.Tensor | None = None  # (N, M) RHM confidences, if kept
    keypoints: torch.Tensor | None = None  # (K, 2) source keypoints, original px
    transferred: torch.Tensor | None = None  # (K, 2) predicted target keypoints, original px
    transferred_resized: torch.Tensor | None = None  # (K, 2) in the resized target frame
    config: SCOTConfig | None = None
    timings: dict[str, float] = field(default_factory=dict)
    eps_used: float | None = None
    target_tl: torch.Tensor | None = None  # (N, 2) sub-pixel landing points (resized frame), if used
    usable: torch.Tensor | None = None  # (N,) bool mutual matches, if used
    topk_index: torch.Tensor | None = None  # (N, k) most confident targets of every source hyperpixel
    topk_confidence: torch.Tensor | None = None  # (N, k) their confidences

    def flow(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense correspondence by the keypoint transfer rule: ``(flow (H, W, 2), confidence (H, W))``.

        ``flow[v, u]`` is where source pixel (u, v) lands in the target, in original target
        pixels; at a keypoint it equals :attr:`transferred` (see :mod:`scot.dense`).
        """
        from .dense import dense_flow

        how = (self.config.transfer if self.config is not None else None) or "mean"
        return dense_flow(self.src.boxes, self.trg.boxes, self.best, self.src.grid, self.src.original_size,
                          self.src.ratio, self.trg.ratio, how=how, confidence=self.best_confidence,
                          usable=self.usable, target_tl=self.target_tl)

    def warp(self, target_image: Any, flow: torch.Tensor | None = None) -> torch.Tensor:
        """(3, H, W) the target image (a path, PIL image, array or tensor) warped into the source
        frame through :meth:`flow`; zero where the flow leaves the target."""
        from .dense import warp_image
        from .image import load_image

        flow = self.flow()[0] if flow is None else flow
        return warp_image(load_image(target_image).tensor, flow)

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
        src_xy = self.src.centres[order] / self.src.ratio
        trg_xy = self.trg.centres[self.best.cpu()[order]] / self.trg.ratio
        return torch.cat((src_xy, trg_xy, conf[order].unsqueeze(1)), dim=1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record: image sizes, config, every match and the transferred keypoints."""
        order = torch.argsort(self.best_confidence.float().cpu(), descending=True, stable=True)
        fg = self.foreground()[order].tolist()
        m = self.matches()
        out: dict[str, Any] = {
            "source": {"name": self.src.name, "width": self.src.original_size[0], "height": self.src.original_size[1],
                       "resized": list(self.src.size), "hyperpixels": self.src.n},
            "target": {"name": self.trg.name, "width": self.trg.original_size[0], "height": self.trg.original_size[1],
                       "resized": list(self.trg.size), "hyperpixels": self.trg.n},
            "config": self.config.to_dict() if self.config else None,
            "matches": [
                {"source": [round(r[0], 3), round(r[1], 3)], "target": [round(r[2], 3), round(r[3], 3)],
                 "confidence": r[4], "foreground": f}
                for r, f in zip(m.tolist(), fg)
            ],
            "keypoints": None,
        }
        if self.keypoints is not None and self.transferred is not None:
            out["keypoints"] = [
                {"index": k, "source": [round(s[0], 3), round(s[1], 3)], "target": [round(t[0], 3), round(t[1], 3)]}
                for k, (s, t) in enumerate(zip(self.keypoints.tolist(), self.transferred.tolist()))
            ]
        return out


def _marginals(images: Sequence[Hyperpixels], rows: int, device: torch.device, reverse: bool) -> torch.Tensor:
    """(B, rows) normalised marginal weights on ``device``, zero beyond each image's n; with
    ``reverse`` each image's cells in reverse order (the target's layout in the matching
    matrix).  Built from the host weights and copied once."""
    out = torch.zeros(len(images), rows)
    for i, h in enumerate(images):
        w = h.weights.float().cpu()
        w = w.flip(0) if reverse else w
        out[i, : h.n] = w / w.sum()
    return out.to(device)


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

    def __init__(
        self,
        config: SCOTConfig | None = None,
        *,
        backbone: Backbone | None = None,
        notice: Callable[[str], None] | None = None,
        factorize: str = "auto",
        **overrides: Any,
    ) -> None:
        cfg = config if config is not None else SCOTConfig()
        if overrides:
            cfg = cfg.replace(**overrides)
        cfg.validate()
        self.device = resolve_device(cfg.device)
        if backbone is None:
            backbone = build_backbone(cfg.backbone, cfg.weights, notice=notice or logger.warning)
        self._notice = notice or logger.warning
        # Channels-last convolutions are faster on CPU (ResNet-101 ~12 %, EfficientNet-Lite2 ~1.7x).
        self.backbone = backbone.to(self.device, memory_format=torch.channels_last).eval()
        self.config = cfg.resolve(backbone.name)
        if cfg.dropped_by_low_memory(backbone.name):
            (notice or logger.warning)(f"notice: low-memory mode matches one way; the preset's two-way matching of "
                                       f"{backbone.name} is off")
        assert self.config.hyperpixel_ids is not None
        self.backbone.check_ids(self.config.hyperpixel_ids)
        self.extractor = HyperpixelExtractor(self.backbone, self.config, factorize)
        self._workspace = threading.local()

    # ------------------------------------------------------------------------------------
    @property
    def hyperpixel_ids(self) -> tuple[int, ...]:
        assert self.config.hyperpixel_ids is not None
        return self.config.hyperpixel_ids

    def extract(self, image: ImageLike, name: str | None = None, flip: bool = False,
                timings: dict[str, float] | None = None) -> Hyperpixels:
        """Load, resize (``flip``: mirror) and describe one image (features, boxes, CAM weights)."""
        return self.extractor(image, name=name, flip=flip, timings=timings)

    def extract_many(self, images: Sequence[ImageLike], flips: Sequence[bool] | None = None) -> list[Hyperpixels]:
        """:meth:`extract` of many images, in their order; images of one resized size share the
        network passes (see :meth:`HyperpixelExtractor.views <scot.features.HyperpixelExtractor.views>`)."""
        return self.extractor.extract_many(images, flips=flips)

    @torch.inference_mode()
    def match(
        self,
        src: Hyperpixels,
        trg: Hyperpixels,
        keypoints: Any = None,
        keep_plan: bool = True,
        check_bounds: bool = True,
        topk: int = 0,
    ) -> MatchResult:
        """Match two extracted images and transfer ``keypoints`` (K, 2) given in source pixels.

        ``keep_plan=False`` returns no (N, M) ``plan`` and ``confidence`` (less memory).
        ``check_bounds=False`` accepts keypoints outside the source image (benchmark
        annotations sometimes are).  ``topk`` > 0 keeps every source hyperpixel's ``topk``
        most confident targets (``topk_index``/``topk_confidence``, for the viewer).
        """
        return self.match_batch([(src, trg, keypoints)], keep_plan=keep_plan, check_bounds=check_bounds, topk=topk)[0]

    @torch.inference_mode()
    def match_batch(
        self,
        items: Sequence[tuple[Hyperpixels, Hyperpixels, Any]],
        keep_plan: bool = False,
        check_bounds: bool = True,
        topk: int = 0,
    ) -> list[MatchResult]:
        """Match several (src, trg, keypoints) pairs through the batched solver.

        Pairs of different sizes are zero-padded; padded hyperpixels carry no mass, so every
        pair's result equals matching it alone.  On a GPU the pairs are matched in as few
        batches as its free memory allows (:meth:`batch_limit`); a batch that still runs
        out of memory is halved and retried, and a pair that does not fit alone raises a
        :class:`ScotError` suggesting low-memory mode.  The timings of a batch are shared by
        its results.  Results (matches, transferred keypoints) are on the host; ``plan`` and
        ``confidence`` stay on the model's device.
        """
        cfg = self.config
        kps_list = [
            None if k is None else as_keypoints(k, s.original_size if check_bounds else None) for s, _, k in items
        ]
        pairs = [(s, t) for s, t, _ in items]
        results: list[MatchResult] = []
        with fp32_precision(self.device, cfg.tf32):
            if cfg.low_memory:
                return [self._match_streamed_or_explain(s, t, k) for (s, t), k in zip(pairs, kps_list)]
            if not _device.is_accelerator(self.device) and not self._fits_in_memory(pairs, keep_plan):
                return [self._match_streamed_or_explain(s, t, k) for (s, t), k in zip(pairs, kps_list)]
            size = self.batch_limit(pairs, keep_plan)
            for i in range(0, len(pairs), size):
                results += self._match_halving(pairs[i : i + size], kps_list[i : i + size], keep_plan, topk)
        return results

    def batch_limit(self, pairs: Sequence[tuple[Hyperpixels, Hyperpixels]], keep_plan: bool = False) -> int:
        """How many of ``pairs`` to match together: all on the CPU; on a GPU, as many as its
        free memory holds by :meth:`pair_bytes` (at least one)."""
        free = _device.free_memory(self.device)
        if free is None or not pairs:
            return max(1, len(pairs))
        held = sum(buf.numel() * buf.element_size() for buf in self._workspace.__dict__.values())
        usable = (free + held) * (1.0 - _DEVICE_RESERVE) - _DEVICE_BLOCK_BYTES
        n, m = max(s.n for s, _ in pairs), max(t.n for _, t in pairs)
        moved = max(self._moved_bytes(s, t) for s, t in pairs)
        return int(max(1, min(len(pairs), usable // self.pair_bytes(n, m, keep_plan, moved))))

    def pair_bytes(self, n: int, m: int, keep_plan: bool = False, moved: int = 0) -> int:
        """Estimated device bytes one pair of ``n`` x ``m`` hyperpixels takes in a batch: the
        float32 N x M matrices the configuration keeps at once (workspaces, the solver's
        temporaries, the kept plan) and ``moved`` bytes of operands copied to the device."""
        cfg = self.config
        two_way = bool(cfg.symmetric)
        if not cfg.ot:
            copies = 2.0 if two_way else 1.0
        elif cfg.sinkhorn_mode == "plain" and cfg.sinkhorn_tol is None and 1.0 / cfg.eps <= _SAFE_INV_EPS:
            copies = 2.0 if two_way else 1.0  # the log-kernel (and the reverse votes), votes in place
        else:
            copies = 6.0 + (3.0 if two_way else 0.0)  # cost, log-kernel, kernel or log-sum-exp terms, plan, votes
        copies += 2.0 if keep_plan else 0.0  # plan and confidence copies handed out
        copies += 0.5  # the correlation's per-pair temporaries and RHM's sums
        return int(copies * 4 * n * m) + moved

    def _fits_in_memory(self, pairs: Sequence[tuple[Hyperpixels, Hyperpixels]], keep_plan: bool) -> bool:
        """On the CPU, before any N x M matrix exists: True when the largest pair fits in the
        host's available memory.  If it does not, low-memory streaming is used when the
        configuration allows it (False, with a notice), else a one-line error."""
        available = _device.available_memory(self.device)
        if available is None:
            return True
        s, t = max(pairs, key=lambda p: p[0].n * p[1].n)
        need = self.pair_bytes(s.n, t.n, keep_plan)
        if need <= _HOST_SHARE * available:
            return True
        cfg = self.config
        if keep_plan or not cfg.ot or cfg.sinkhorn_mode == "log" or cfg.sinkhorn_tol is not None or cfg.subpixel \
                or cfg.mutual:
            raise ScotError(f"matching {s.name} -> {t.name} ({s.n} x {t.n} hyperpixels) needs about "
                            f"{_device.format_gb(need)} but {_device.format_gb(available)} is available, and these "
                            "options cannot stream; use a smaller image_side", option="image_side")
        self._notice(f"notice: {s.n} x {t.n} hyperpixels need about {_device.format_gb(need)} in memory "
                     f"({_device.format_gb(available)} available): matching one way in low-memory mode")
        return False

    def check_sizes(self, *sizes: tuple[int, int]) -> None:
        """Refuse, before any work, images the machine cannot describe: the backbone's
        activations at the largest input scale must fit in the available memory.

        Args:
            sizes: (W, H) of the original images.
        """
        available = _device.available_memory(self.device)
        if available is None:
            return
        cfg = self.config
        scale = max([1.0, *(cfg.feature_scales or ()), *(cfg.cam_scales if cfg.cam else ())])
        for w, h in sizes:
            rw, rh = resized_size(w, h, cfg.image_side)
            need = _ACTIVATION_BYTES * (scale * rw) * (scale * rh)
            if need > _HOST_SHARE * available:
                raise ScotError(f"a {w}x{h} image resized to {rw}x{rh} needs about {_device.format_gb(need)} for the "
                                f"network (at scale {scale:g}) but {_device.format_gb(available)} is available; use a "
                                "smaller image_side", option="image_side")

    def _moved_bytes(self, s: Hyperpixels, t: Hyperpixels) -> int:
        """Operand bytes :meth:`Hyperpixels.to` and the reversed operand create on the model's device."""
        return sum(h.operand_nbytes() for h in (s, t) if h.device != self.device)

    def _match_halving(self, pairs: list[tuple[Hyperpixels, Hyperpixels]], kps: list[torch.Tensor | None],
                       keep_plan: bool, topk: int) -> list[MatchResult]:
        """:meth:`_match_together`; on out-of-memory, the two halves one after the other."""
        try:
            return self._match_together(pairs, kps, keep_plan, topk)
        except torch.OutOfMemoryError:
            pass  # leave the handler first: its traceback holds the failed batch's tensors
        self.release_memory()
        _device.release_cached(self.device)
        if len(pairs) == 1:
            s, t = pairs[0]
            free = _device.free_memory(self.device)
            raise ScotError(
                f"pair {s.name} -> {t.name} ({s.n} x {t.n} hyperpixels) does not fit in the memory of {self.device} "
                f"even alone (about {_device.format_gb(self.pair_bytes(s.n, t.n, keep_plan))} needed, "
                f"{_device.format_gb(free)} free); low-memory mode (--low-memory) streams it in blocks",
                option="low_memory")
        half = (len(pairs) + 1) // 2
        logger.info("out of memory with %d pairs on %s: matching %d and %d", len(pairs), self.device, half,
                    len(pairs) - half)
        return (self._match_halving(pairs[:half], kps[:half], keep_plan, topk)
                + self._match_halving(pairs[half:], kps[half:], keep_plan, topk))

    def _match_together(self, pairs: list[tuple[Hyperpixels, Hyperpixels]], kps_list: list[torch.Tensor | None],
                        keep_plan: bool, topk: int) -> list[MatchResult]:
        """One batch through the solver: everything on the device, then one copy to the host
        (:func:`scot.device.to_host`) and the keypoint transfer there."""
        cfg = self.config
        timings: dict[str, float] = {}
        clock = Clock(timings, self.device)
        srcs = [s.to(self.device) for s, _ in pairs]
        trgs = [t.to(self.device) for _, t in pairs]

        n, m = max(s.n for s in srcs), max(t.n for t in trgs)
        alpha = kernel_scale(cfg.eps) if cfg.ot else 1.0
        log2k = self._buffer("log2k", (len(pairs), n, m))
        if len(pairs) > 1:  # padding must hold finite values (it carries no mass)
            log2k.zero_()
        for b, (s, t) in enumerate(zip(srcs, trgs)):
            Correlation(s, t, alpha).fill(log2k[b, : s.n, : t.n])
        log2_kernel_(log2k, alpha)  # (B, N, M): log2 exp(-C/eps), target cells reversed
        clock.lap("cost")

        mu = _marginals(srcs, n, self.device, reverse=False)
        nu = _marginals(trgs, m, self.device, reverse=True)
        votes, votes_back, eps_used, finite = self._votes(log2k, mu, nu, alpha, two_way=bool(cfg.symmetric))
        clock.lap("ot")

        device_parts: list[list[torch.Tensor]] = []  # per pair, what comes to the host
        kept = []
        for b, (s, t) in enumerate(zip(srcs, trgs)):
            v = votes[b, : s.n, : t.n]
            plan = v.flip(-1) if keep_plan else None  # a copy in the natural target order
            conf = self._confidence(v, s, t)
            if votes_back is not None:  # two-way: add the reverse confidences, each scaled to max 1
                back = self._confidence(votes_back[b, : s.n, : t.n], s, t, reverse=True)
                conf.div_(conf.amax().clamp_min(1e-30)).addcdiv_(back, back.amax().clamp_min(1e-30))
            best_conf, best_col = conf.max(dim=-1)
            parts = [t.n - 1 - best_col, best_conf.float()]
            if cfg.subpixel:
                parts.append(soft_argmax_targets(conf, best_col, t.grid, t.boxes.flip(0), cfg.subpixel))
            if cfg.mutual:
                parts.append(mutual_mask(conf, best_col))
            if topk > 0:
                values, columns = conf.topk(min(topk, t.n), dim=-1)
                parts += [t.n - 1 - columns, values.float()]
            device_parts.append(parts)
            kept.append((plan, conf.flip(-1) if keep_plan else None))
        clock.lap("rhm")

        flat = [x for parts in device_parts for x in parts] + ([finite] if finite is not None else [])
        host = list(_device.to_host(*flat))  # the batch's one device-to-host copy
        if finite is not None and not bool(host.pop()):  # cannot happen for 1/eps <= 80; never return NaN votes
            raise RuntimeError("Sinkhorn produced a non-finite scaling although exp(-C/eps) cannot underflow")
        results = []
        for b, (s, t) in enumerate(zip(srcs, trgs)):
            best, best_conf = host.pop(0), host.pop(0)
            target_tl = host.pop(0) if cfg.subpixel else None
            usable = host.pop(0) if cfg.mutual else None
            plan, confidence = kept[b]
            result = MatchResult(
                src=s, trg=t, best=best, best_confidence=best_conf, plan=plan, confidence=confidence, config=cfg,
                timings=timings, eps_used=eps_used[b], target_tl=target_tl, usable=usable,
            )
            if topk > 0:
                result.topk_index, result.topk_confidence = host.pop(0), host.pop(0)
            if kps_list[b] is not None:
                self._transfer(result, kps_list[b])
            results.append(result)
        clock.lap("transfer")
        return results

    def _votes(
        self, log2k: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor, alpha: float, two_way: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, list, torch.Tensor | None]:
        """Transport votes (B, N, M) from a log2-kernel the call consumes, with ``two_way`` the
        target -> source votes transposed to (B, N, M), the ε used per pair, and for the
        in-place solver a 0-dim flag on the device, true when every scaling is finite (the
        caller reads it with the batch's results)."""
        cfg = self.config
        batch = log2k.shape[0]
        if not cfg.ot:  # HPF's similarity: clamp(cos, 0) ** exp1, with log2k = clamp(cos, 0) - 1 (alpha = 1)
            votes = log2k.add_(1.0)
            if cfg.exp1 != 1.0:
                votes.pow_(cfg.exp1)
            return votes, votes.clone() if two_way else None, [None] * batch, None
        exp2 = self._exp2
        fast = cfg.sinkhorn_mode == "plain" and cfg.sinkhorn_tol is None and 1.0 / cfg.eps <= _SAFE_INV_EPS
        if fast:  # SCOT's solver on the stored log-kernel, block by block, votes formed in place
            back = self._buffer("back", tuple(log2k.shape)) if two_way else None
            rows = self._block_rows(log2k)

            def final(r0: int, r1: int, block: torch.Tensor, sc: Scalings) -> None:
                if back is not None:  # first: the forward votes overwrite the block
                    log2_votes(block, sc.log2_rows(r0, r1, reverse=True), sc.log2_cols(reverse=True), exp2,
                               out=back[:, r0:r1])
                log2_votes(block, sc.log2_rows(r0, r1), sc.log2_cols(), exp2, out=block)

            scalings = kernel_sinkhorn(lambda r0, r1: log2k[:, r0:r1], mu, nu, num_iters=cfg.sinkhorn_iters,
                                       fi=dampening(cfg.eps, cfg.unbalanced_tau), two_way=two_way,
                                       block_rows=rows, on_final_block=final)
            return log2k, back, [cfg.eps] * batch, scalings.finite()
        cost = cost_from_log2_kernel_(log2k, alpha)
        back = None
        if two_way:  # solve the transposed problem explicitly
            back_cost = cost.transpose(1, 2).contiguous()
            back = self._solve(back_cost, nu, mu)[0].transpose(1, 2).contiguous()
        votes, eps_used = self._solve(cost, mu, nu)
        return votes, back, eps_used, None

    def _buffer(self, role: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A reused float32 workspace of ``shape`` for ``role``: a fresh N x M buffer costs as
        much in page faults on the CPU (about 25 ms at 4,000 x 4,000) as a pass over it.
        Kept per thread; :meth:`release_memory` frees them."""
        store = self._workspace.__dict__
        size = math.prod(shape)
        buf = store.get(role)
        if buf is None or buf.numel() < size:
            del buf
            store.pop(role, None)  # freed before its successor is allocated
            buf = store[role] = torch.empty(size, device=self.device)
        return buf[:size].view(shape)

    def release_memory(self) -> None:
        """Free the matching workspaces this thread keeps between calls."""
        self._workspace.__dict__.clear()

    def _solve(self, cost: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor) -> tuple[torch.Tensor, list]:
        cfg = self.config
        votes, stats = scot_votes(
            cost, mu, nu, eps=cfg.eps, exp2=self._exp2, num_iters=cfg.sinkhorn_iters, tol=cfg.sinkhorn_tol,
            log_domain=cfg.sinkhorn_mode == "log", tau=cfg.unbalanced_tau, max_doublings=cfg.max_eps_doublings,
        )
        return votes, stats.eps_used

    def _block_rows(self, matrix: torch.Tensor) -> int:
        """Rows of the (B, N, M) matrix processed together: a few MB on the CPU (kept in cache);
        on a GPU at most 256 MB (the whole matrix when it is smaller), which bounds the
        temporary the Sinkhorn sweeps take beside the matrix."""
        row = matrix.element_size() * matrix.shape[0] * matrix.shape[2]
        if matrix.device.type != "cpu":
            return max(1, min(matrix.shape[1], _DEVICE_BLOCK_BYTES // row))
        return max(16, _BLOCK_BYTES // row)

    @property
    def _exp2(self) -> float:
        return float(self.config.exp2 if self.config.exp2 is not None else 1.0)

    def _transfer(self, result: MatchResult, kps: torch.Tensor) -> None:
        """Transfer source keypoints ``kps`` (original pixels) through ``result``'s matches, in place."""
        s, t = result.src, result.trg
        pred = transfer_keypoints(s.boxes, t.boxes, result.best, kps * s.ratio, result.target_tl, result.usable,
                                  how=self.config.transfer or "mean", confidence=result.best_confidence)
        result.keypoints, result.transferred_resized, result.transferred = kps, pred, pred / t.ratio

    def _hough(self, s: Hyperpixels, t: Hyperpixels, reverse: bool = False) -> HoughWindows:
        """The pair's Hough tables on the model's device.  Both grids are regular by
        construction (:func:`~scot.features.receptive_field_boxes`); their spacing is the
        geometry's jump, compared here without reading a tensor."""
        if s.geometry.jump != t.geometry.jump:
            raise ValueError(GRID_ERROR)
        return HoughWindows.build(s.xs, s.ys, t.xs, t.ys, s.size, t.size, self.config.rhm_cells, self.device, reverse,
                                  check=False)

    def _confidence(self, votes: torch.Tensor, s: Hyperpixels, t: Hyperpixels, reverse: bool = False) -> torch.Tensor:
        """RHM confidences of one pair's (n, m) votes in the matching layout, in place (the
        votes themselves with RHM off); ``reverse``: the transposed target -> source votes."""
        if not self.config.rhm:
            return votes
        grid = grid_view(votes, s.grid, t.grid)
        self._hough(s, t, reverse).confidence(grid, self.config.rhm_kernel, out=grid)
        return votes

    def _match_streamed_or_explain(self, s: Hyperpixels, t: Hyperpixels, kps: torch.Tensor | None) -> MatchResult:
        """:meth:`_match_streamed`; out of memory even so, a one-line error naming the block size."""
        try:
            return self._match_streamed(s, t, kps)
        except torch.OutOfMemoryError:
            pass  # leave the handler first: its traceback holds the failed pair's tensors
        self.release_memory()
        _device.release_cached(self.device)
        raise ScotError(f"pair {s.name} -> {t.name} ({s.n} x {t.n} hyperpixels) does not fit in the memory of "
                        f"{self.device} even in low-memory mode with blocks of {self.config.low_memory_rows} rows; "
                        f"use fewer rows per block or a smaller image_side", option="low_memory_rows")

    def _match_streamed(self, s: Hyperpixels, t: Hyperpixels, kps: torch.Tensor | None) -> MatchResult:
        """Low-memory matching: no N x M matrix is ever held."""
        cfg = self.config
        timings: dict[str, float] = {}
        clock = Clock(timings, self.device)
        s, t = s.to(self.device), t.to(self.device)
        hough = self._hough(s, t) if cfg.rhm else None
        best_col, best_conf, eps_used = streamed_best_matches(
            s, t, _marginals([s], s.n, self.device, False)[0], _marginals([t], t.n, self.device, True)[0],
            eps=cfg.eps, exp2=self._exp2, num_iters=cfg.sinkhorn_iters, tau=cfg.unbalanced_tau, hough=hough,
            kernel_side=cfg.rhm_kernel, block_rows=cfg.low_memory_rows, max_doublings=cfg.max_eps_doublings,
        )
        timings.update(cost=0.0, rhm=0.0)
        clock.lap("ot")
        best, best_conf = _device.to_host(t.n - 1 - best_col, best_conf.float())
        result = MatchResult(src=s, trg=t, best=best, best_confidence=best_conf, config=cfg, timings=timings,
                             eps_used=eps_used)
        if kps is not None:
            self._transfer(result, kps)
        clock.lap("transfer")
        return result

    def __call__(self, src: ImageLike, trg: ImageLike, keypoints: Any = None, keep_plan: bool = True,
                 topk: int = 0) -> MatchResult:
        """Match two images given as paths, PIL images, arrays or tensors (see :meth:`match`)."""
        self.check_sizes(*(image_size(x) for x in (src, trg) if isinstance(x, (str, Path))))
        features: dict[str, float] = {}
        clock = Clock(features, self.device)
        s = self.extract(src)
        t = self.extract(trg)
        clock.lap("features")
        result = self.match(s, t, keypoints, keep_plan=keep_plan, topk=topk)
        result.timings = {**features, **result.timings}
        return result

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
