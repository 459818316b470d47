"""The public API: ``SCOT(config)(src, trg, keypoints)`` -> :class:`MatchResult`.

The call runs the pipeline in the order the package is laid out::

    features  ->  cost  ->  ot  ->  rhm  ->  transfer
    (+ cam for the OT marginals)

:meth:`SCOT.extract` and :meth:`SCOT.match` expose the two halves separately, so callers
that see an image in many pairs (``scot eval``) extract it once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .backbones import Backbone, build_backbone
from .config import SCOTConfig
from .cost import cost_from_operands
from .errors import ScotError
from .features import Hyperpixels, box_centres, extract_hyperpixels
from .image import ImageLike, load_image, resize_longest_side
from .ot import scot_votes, two_way_votes
from .rhm import GridHough, rhm_grid
from .streaming import streamed_best_matches
from .transfer import best_matches, mutual_mask, soft_argmax_targets, transfer_keypoints

logger = logging.getLogger("scot")


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ScotError(f"--device: '{name}' is not a device (use cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ScotError("--device: CUDA was requested but no CUDA GPU is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ScotError(f"--device: '{name}' is not supported (use cpu or cuda)")
    return device


def as_keypoints(keypoints: Any, size: tuple[int, int] | None = None, name: str = "keypoints") -> torch.Tensor:
    """Validate (K, 2) keypoints (x, y) in original pixels; ``size`` = (W, H) bounds them."""
    try:
        kps = torch.as_tensor(np.asarray(keypoints, dtype=np.float64), dtype=torch.float32)
    except (TypeError, ValueError):
        raise ScotError(f"{name}: keypoints must be numbers arranged as (K, 2) x, y pairs") from None
    if kps.numel() == 0:
        return kps.reshape(0, 2)
    if kps.dim() != 2 or kps.shape[1] != 2:
        raise ScotError(f"{name}: keypoints must have shape (K, 2), got {tuple(kps.shape)}")
    if not bool(torch.isfinite(kps).all()):
        raise ScotError(f"{name}: keypoints contain NaN or infinite values")
    if size is not None:
        w, h = size
        outside = (kps[:, 0] < 0) | (kps[:, 1] < 0) | (kps[:, 0] > w) | (kps[:, 1] > h)
        if bool(outside.any()):
            k = int(torch.nonzero(outside)[0])
            x, y = kps[k].tolist()
            raise ScotError(f"{name}: keypoint {k} at ({x:g}, {y:g}) lies outside the {w}x{h} source image")
    return kps


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

    def foreground(self) -> torch.Tensor:
        """(N,) bool: source hyperpixels on the object, i.e. CAM above 0.4 (all if CAM is off)."""
        w = self.src.weights
        if self.config is not None and not self.config.cam:
            return torch.ones_like(w, dtype=torch.bool)
        return w >= 0.8

    def matches(self, top_k: int | None = None, foreground_only: bool = False) -> torch.Tensor:
        """(k, 5) rows ``src_x, src_y, trg_x, trg_y, confidence`` in original pixels, most confident first.

        Every source hyperpixel has one match (its most confident target).  With
        ``foreground_only``, hyperpixels off the object (CAM <= 0.4) are left out; image
        borders otherwise collect confident but meaningless matches.
        """
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


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move to ``device``; host tensors go through page-locked memory to a GPU."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _stack(images: Sequence[Hyperpixels], role: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, D') padded matmul operands and (B, N) marginal weights, zero beyond each image's n."""
    ops = [_to_device(h.operand(role), device) for h in images]
    rows = max(op.shape[0] for op in ops)
    if len(images) == 1:
        feats = ops[0].unsqueeze(0)
    else:
        feats = torch.zeros(len(images), rows, ops[0].shape[1], dtype=ops[0].dtype, device=device)
        for i, op in enumerate(ops):
            feats[i, : op.shape[0]] = op
    weights = torch.zeros(len(images), rows, device=device)
    for i, h in enumerate(images):
        weights[i, : h.n] = h.weights.to(device)
    return feats, weights


class SCOT:
    """Semantic correspondence by optimal transport (Liu et al., CVPR 2020).

    >>> model = SCOT(SCOTConfig(backbone="efficientnet-lite2"))  # doctest: +SKIP
    >>> result = model("cat1.jpg", "cat2.jpg", keypoints=[[40, 60]])  # doctest: +SKIP
    >>> result.transferred  # (1, 2) in the target's pixels  # doctest: +SKIP
    """

    default_conf = SCOTConfig()

    def __init__(
        self,
        config: SCOTConfig | None = None,
        *,
        backbone: Backbone | None = None,
        notice: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> None:
        cfg = config if config is not None else SCOTConfig()
        if overrides:
            cfg = cfg.replace(**overrides)
        cfg.validate()
        self.device = resolve_device(cfg.device)
        if backbone is None:
            backbone = build_backbone(cfg.backbone, cfg.weights, notice=notice or logger.warning)
        # Channels-last convolutions are faster on CPU (ResNet-101 ~12 %, EfficientNet-Lite2 ~1.7x).
        self.backbone = backbone.to(self.device, memory_format=torch.channels_last).eval()
        self.config = cfg.resolve(backbone.name)
        if cfg.dropped_by_low_memory(backbone.name):
            (notice or logger.warning)(f"--low-memory matches one way: the preset's two-way matching of {backbone.name} is off")
        assert self.config.hyperpixel_ids is not None
        self.backbone.check_ids(self.config.hyperpixel_ids)

    # ------------------------------------------------------------------------------------
    @property
    def hyperpixel_ids(self) -> tuple[int, ...]:
        assert self.config.hyperpixel_ids is not None
        return self.config.hyperpixel_ids

    @torch.inference_mode()
    def extract(self, image: ImageLike, name: str | None = None) -> Hyperpixels:
        """Load, resize and describe one image (features, boxes, CAM weights)."""
        loaded = load_image(image, name)
        resized, ratio = resize_longest_side(loaded.tensor, self.config.image_side)
        return extract_hyperpixels(
            self.backbone,
            resized,
            self.hyperpixel_ids,
            ratio=ratio,
            original_size=loaded.size,
            use_cam=self.config.cam,
            cam_scales=self.config.cam_scales,
            feature_scales=self.config.feature_scales,
            cam_weighting=self.config.cam_weighting,
            center=bool(self.config.center_features),
            cost_dtype=self.config.cost_dtype,
            name=loaded.name,
        )

    @torch.inference_mode()
    def match(
        self,
        src: Hyperpixels,
        trg: Hyperpixels,
        keypoints: Any = None,
        keep_plan: bool = True,
        check_bounds: bool = True,
    ) -> MatchResult:
        """Match two extracted images and transfer ``keypoints`` (K, 2) given in source pixels.

        ``keep_plan=False`` lets RHM overwrite the plan (less memory; ``plan`` and
        ``confidence`` are then not returned).  ``check_bounds=False`` accepts keypoints
        outside the source image (benchmark annotations sometimes are).
        """
        return self.match_batch([(src, trg, keypoints)], keep_plan=keep_plan, check_bounds=check_bounds)[0]

    @torch.inference_mode()
    def match_batch(
        self,
        items: Sequence[tuple[Hyperpixels, Hyperpixels, Any]],
        keep_plan: bool = False,
        check_bounds: bool = True,
    ) -> list[MatchResult]:
        """Match several (src, trg, keypoints) pairs through the batched cost and solver.

        Pairs of different sizes are zero-padded; padded hyperpixels carry no mass, so every
        pair's result equals matching it alone.  The timings of the batch are shared by its
        results.
        """
        cfg = self.config
        kps_list = [
            None if k is None else as_keypoints(k, s.original_size if check_bounds else None) for s, _, k in items
        ]
        if cfg.stream_block:
            return [self._match_streamed(s, t, k) for (s, t, _), k in zip(items, kps_list)]
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        src_f, src_w = _stack([s for s, _, _ in items], "src", self.device)
        trg_f, trg_w = _stack([t for _, t, _ in items], "trg", self.device)
        cost = cost_from_operands(src_f, trg_f, cfg.cost_dtype)  # (B, N, M), padded
        timings["cost"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        votes, votes_back, eps_used = self._votes(cost, src_w, trg_w, two_way=bool(cfg.symmetric))
        del cost
        timings["ot"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        confidences, bests, refinements = [], [], []
        for b, (s, t, _) in enumerate(items):
            v = votes[b, : s.n, : t.n]
            conf = self._confidence(v, s, t, keep_plan)
            if votes_back is not None:  # two-way: add the reverse confidences, each scaled to max 1
                back = self._confidence(votes_back[b, : s.n, : t.n], s, t, keep_plan=False, reverse=True)
                if conf is v and keep_plan:  # without RHM the plan itself is the confidence: keep it
                    conf = conf.clone()
                conf.div_(conf.max().clamp_min(1e-30)).add_(back, alpha=1.0 / float(back.max().clamp_min(1e-30)))
            confidences.append(conf)
            best = best_matches(conf)
            bests.append(best)
            refinements.append((
                soft_argmax_targets(conf, best[0], t.grid, t.boxes, cfg.subpixel) if cfg.subpixel else None,
                mutual_mask(conf, best[0]) if cfg.mutual else None,
            ))
        timings["rhm"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        results = []
        for b, (s, t, _) in enumerate(items):
            best, best_conf = bests[b]
            result = MatchResult(
                src=s, trg=t, best=best.cpu(), best_confidence=best_conf.float().cpu(),
                plan=votes[b, : s.n, : t.n] if keep_plan else None, confidence=confidences[b] if keep_plan else None,
                config=cfg, timings=timings, eps_used=eps_used[b],
            )
            if kps_list[b] is not None:
                self._transfer(result, kps_list[b], *refinements[b])
            results.append(result)
        timings["transfer"] = time.perf_counter() - t0
        return results

    def _votes(
        self, cost: torch.Tensor, src_w: torch.Tensor, trg_w: torch.Tensor, two_way: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, list]:
        """Transport votes (B, N, M) from a cost the call consumes, per-pair eps used, and with
        ``two_way`` the target -> source votes transposed to (B, N, M) (else None)."""
        cfg = self.config
        mu, nu = src_w / src_w.sum(-1, keepdim=True), trg_w / trg_w.sum(-1, keepdim=True)
        back = None
        if two_way:
            if cfg.ot and cfg.sinkhorn_iters == 1 and cfg.sinkhorn_mode == "plain":  # both from one kernel
                both = two_way_votes(cost, mu, nu, eps=cfg.eps, exp2=self._exp2, tau=cfg.unbalanced_tau, cost_bound=1.0)
                if both is not None:
                    return both[0], both[1], [cfg.eps] * cost.shape[0]
            # any other solver setting: solve the transposed problem explicitly
            back = self._votes(cost.transpose(1, 2).contiguous(), trg_w, src_w)[0].transpose(1, 2).contiguous()
        if not cfg.ot:  # HPF's similarity: clamp(cos, 0) ** exp1 = (1 - C) ** exp1
            votes = cost.neg_().add_(1.0)
            if cfg.exp1 != 1.0:
                votes.pow_(cfg.exp1)
            return votes, back, [None] * cost.shape[0]
        votes, stats = scot_votes(
            cost, mu, nu, eps=cfg.eps, exp2=self._exp2,
            num_iters=cfg.sinkhorn_iters, tol=cfg.sinkhorn_tol,
            log_domain=cfg.sinkhorn_mode == "log", tau=cfg.unbalanced_tau,
            max_doublings=cfg.max_eps_doublings, consume_cost=True, cost_bound=1.0,
        )
        return votes, back, stats.eps_used

    @property
    def _exp2(self) -> float:
        return float(self.config.exp2 if self.config.exp2 is not None else 1.0)

    def _transfer(self, result: MatchResult, kps: torch.Tensor, target_tl: torch.Tensor | None = None,
                  usable: torch.Tensor | None = None) -> None:
        """Transfer source keypoints ``kps`` (original pixels) through ``result``'s matches, in place."""
        s, t = result.src, result.trg
        pred = transfer_keypoints(s.boxes, t.boxes, result.best, kps * s.ratio, target_tl, usable,
                                  how=self.config.transfer or "mean", confidence=result.best_confidence)
        result.keypoints, result.transferred_resized, result.transferred = kps, pred, pred / t.ratio

    def _confidence(self, votes: torch.Tensor, s: Hyperpixels, t: Hyperpixels, keep_plan: bool,
                    reverse: bool = False) -> torch.Tensor:
        """RHM confidences of one pair's (N, M) votes (the votes themselves with RHM off);
        ``reverse``: the votes are the transposed target -> source ones."""
        cfg = self.config
        if not cfg.rhm:
            return votes
        return rhm_grid(votes, s.xs, s.ys, t.xs, t.ys, s.size, t.size, ncells=cfg.rhm_cells,
                        kernel_side=cfg.rhm_kernel, out=None if keep_plan else votes, reverse=reverse)

    def _match_streamed(self, s: Hyperpixels, t: Hyperpixels, kps: torch.Tensor | None) -> MatchResult:
        """Low-memory matching (config.stream_block > 0): no N x M matrix is ever held."""
        cfg = self.config
        t0 = time.perf_counter()
        src_op, src_w = _stack([s], "src", self.device)
        trg_op, trg_w = _stack([t], "trg", self.device)
        hough = None
        if cfg.rhm:
            hough = GridHough.build(s.xs, s.ys, t.xs, t.ys, s.size, t.size, cfg.rhm_cells, self.device)
        best, best_conf, eps_used = streamed_best_matches(
            src_op[0], trg_op[0], src_w[0] / src_w.sum(), trg_w[0] / trg_w.sum(), s.n, t.n,
            dtype=cfg.cost_dtype, eps=cfg.eps, exp2=self._exp2,
            num_iters=cfg.sinkhorn_iters, tau=cfg.unbalanced_tau, hough=hough, kernel_side=cfg.rhm_kernel,
            block_rows=cfg.stream_block, max_doublings=cfg.max_eps_doublings,
        )
        timings = {"cost": 0.0, "ot": time.perf_counter() - t0, "rhm": 0.0}
        result = MatchResult(src=s, trg=t, best=best.cpu(), best_confidence=best_conf.float().cpu(),
                             config=cfg, timings=timings, eps_used=eps_used)
        t0 = time.perf_counter()
        if kps is not None:
            self._transfer(result, kps)
        timings["transfer"] = time.perf_counter() - t0
        return result

    def __call__(self, src: ImageLike, trg: ImageLike, keypoints: Any = None, keep_plan: bool = True) -> MatchResult:
        """Match two images given as paths, PIL images, arrays or tensors."""
        t0 = time.perf_counter()
        s = self.extract(src)
        t = self.extract(trg)
        features_time = time.perf_counter() - t0
        result = self.match(s, t, keypoints, keep_plan=keep_plan)
        result.timings = {"features": features_time, **result.timings}
        return result

    def describe(self) -> dict[str, Any]:
        """Backbone name, weights source and resolved options, for recording in outputs."""
        return {
            "backbone": self.backbone.name,
            "weights": self.backbone.weights_source,
            "device": str(self.device),
            "config": self.config.to_dict(),
        }
