"""Matching extracted images: cost -> OT -> RHM -> keypoint transfer, batched, within memory.

:class:`Matcher` runs the one :class:`~scot.solver.SolverPlan` its configuration chose
(no OT, the in-place kernel path, the general path, or streamed).  It owns what that
takes: the reused N x M workspaces (per thread), the memory estimates that size batches
and decide between the in-memory and the streamed path, halving a batch that runs out of
device memory, and the matrix layout.  Inside it the target's cells are listed in
reverse order (:mod:`scot.cost`, :mod:`scot.rhm`); every result it returns is in the
target's natural row-major order.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from . import device as _device
from .config import SCOTConfig
from .cost import Correlation, cost_from_log2_kernel_, kernel_scale, log2_kernel_
from .errors import ScotError
from .hyperpixels import Hyperpixels
from .ot import Scalings, dampening, kernel_sinkhorn
from .resize import resized_size
from .rhm import GRID_ERROR, HoughWindows, grid_view
from .solver import SolverPlan
from .streaming import streamed_best_matches
from .timing import Clock
from .transfer import clamp_points, image_bounds, mutual_mask, soft_argmax_targets, transfer_keypoints
from .votes import log2_votes, scot_votes

_BLOCK_BYTES = 4 << 20  # rows of the N x M matrix processed together on the CPU (kept in cache)
_DEVICE_BLOCK_BYTES = 256 << 20  # on a GPU: bounds the exp2 temporary of the Sinkhorn sweeps
_DEVICE_RESERVE = 0.1  # share of a GPU's free memory left to the allocator's slack and small temporaries
_ACTIVATION_BYTES = 700  # peak bytes of backbone activations per pixel of the largest network input (measured: 320-600)
_HOST_SHARE = 0.8  # share of the host's available memory a match may plan to use
_DEFAULTS = SCOTConfig()
_DEFAULT_SIDE = _DEFAULTS.image_side  # what the memory check compares an image side with
_DEFAULT_MAX_SCALE = max(_DEFAULTS.cam_scales)  # and the largest enlarged pass the defaults make
_SUBPIXEL_BYTES = 40  # bytes per source hyperpixel and window cell of the sub-pixel refinement's temporaries

logger = logging.getLogger("scot")


@dataclass
class Matched:
    """What matching one pair produced; coordinates of ``*_resized`` are in the resized frames,
    the others in original pixels.  Host tensors unless said otherwise; target indices are
    cells of the target's row-major grid."""

    src: Hyperpixels
    trg: Hyperpixels
    best: torch.Tensor  # (N,) matched target hyperpixel of every source hyperpixel
    best_confidence: torch.Tensor  # (N,)
    votes: torch.Tensor | None = None  # (N, M) transport votes (N·P)^exp2 on the model's device, if kept
    confidence: torch.Tensor | None = None  # (N, M) RHM confidences on the model's device, if kept
    keypoints: torch.Tensor | None = None  # (K, 2) source keypoints, original px
    transferred: torch.Tensor | None = None  # (K, 2) predicted target keypoints, original px
    transferred_resized: torch.Tensor | None = None  # (K, 2) in the resized target frame
    config: SCOTConfig | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, shared by a batch's pairs
    eps_used: float | None = None
    target_tl: torch.Tensor | None = None  # (N, 2) sub-pixel landing points (resized frame), if used
    usable: torch.Tensor | None = None  # (N,) bool mutual matches, if used
    topk_index: torch.Tensor | None = None  # (N, k) most confident targets of every source hyperpixel
    topk_confidence: torch.Tensor | None = None  # (N, k) their confidences
    flipped: bool = False  # the source's mirror was matched and kept (flip='auto'); fields are in the source's frame


R = TypeVar("R", bound=Matched)
Pair = tuple[Hyperpixels, Hyperpixels]


def _marginals(images: Sequence[Hyperpixels], rows: int, device: torch.device, reverse: bool) -> torch.Tensor:
    """(B, rows) normalised marginal weights on ``device``, zero beyond each image's n; with
    ``reverse`` each image's cells in reverse order (the target's layout in the matrix).
    Built from the host weights and copied once."""
    out = torch.zeros(len(images), rows)
    for i, h in enumerate(images):
        w = h.weights.float().cpu()
        w = w.flip(0) if reverse else w
        out[i, : h.n] = w / w.sum()
    return out.to(device)


def _natural(column: torch.Tensor, m: int) -> torch.Tensor:
    """Target cell indices of columns of the reversed layout (column j is cell m - 1 - j)."""
    return m - 1 - column


class Matcher(Generic[R]):
    """Matches pairs of :class:`Hyperpixels` as a resolved configuration says.

    Args:
        config: a resolved :class:`~scot.config.SCOTConfig`.
        device: where the matrices live.
        notice: receives one-line notices (the fallback to streaming).
        result: the type of the results: :class:`Matched` or a subclass.
    """

    def __init__(self, config: SCOTConfig, device: torch.device, notice: Callable[[str], None],
                 result: type[R]) -> None:
        self.config, self.device, self._notice, self._result = config, device, notice, result
        self.plan = SolverPlan.of(config)
        self._exp2 = float(config.exp2 if config.exp2 is not None else 1.0)
        self._workspace = threading.local()

    # ------------------------------------------------------------------------------------
    def match(self, pairs: Sequence[Pair], kps: Sequence[torch.Tensor | None], keep: bool, topk: int) -> list[R]:
        """Match ``pairs`` and transfer each pair's keypoints (K, 2) in original source pixels.

        Pairs of different sizes are zero-padded (padding carries no mass, so every result
        equals matching the pair alone).  On a GPU as few batches as its free memory allows
        (:meth:`batch_limit`), halved on out-of-memory; on the CPU one batch, or the
        streamed path when the largest pair does not fit (:meth:`_fits_in_memory`).
        ``keep``: return the (N, M) ``votes`` and ``confidence``; ``topk`` > 0: each source
        hyperpixel's ``topk`` most confident targets.
        """
        pairs, kps = list(pairs), list(kps)
        if self.plan.kind == "streamed" or (not _device.is_accelerator(self.device)
                                            and not self._fits_in_memory(pairs, keep)):
            return [self._streamed_or_explain(s, t, k) for (s, t), k in zip(pairs, kps)]
        size = self.batch_limit(pairs, keep)
        results: list[R] = []
        for i in range(0, len(pairs), size):
            results += self._halving(pairs[i : i + size], kps[i : i + size], keep, topk)
        return results

    # ------------------------------------------------------------------------------------
    # Memory
    def batch_limit(self, pairs: Sequence[Pair], keep: bool = False) -> int:
        """How many of ``pairs`` to match together: all on the CPU; on a GPU, as many as its
        free memory holds by :meth:`pair_bytes` (at least one)."""
        free = _device.free_memory(self.device)
        if free is None or not pairs:
            return max(1, len(pairs))
        held = sum(buf.numel() * buf.element_size() for buf in self._workspace.__dict__.values())
        usable = (free + held) * (1.0 - _DEVICE_RESERVE) - _DEVICE_BLOCK_BYTES
        n, m = max(s.n for s, _ in pairs), max(t.n for _, t in pairs)
        moved = max(self._moved_bytes(s, t) for s, t in pairs)
        return int(max(1, min(len(pairs), usable // self.pair_bytes(n, m, keep, moved))))

    def pair_bytes(self, n: int, m: int, keep: bool = False, moved: int = 0) -> int:
        """Estimated device bytes one pair of ``n`` x ``m`` hyperpixels takes in a batch: the
        float32 N x M matrices the plan keeps at once (workspaces, the solver's temporaries,
        the kept votes), the sub-pixel window's temporaries and ``moved`` bytes of operands
        copied to the device."""
        if self.plan.kind in ("none", "kernel"):
            copies = 2.0 if self.plan.two_way else 1.0  # the log-kernel (and the reverse votes), votes in place
        else:
            copies = 6.0 + (3.0 if self.plan.two_way else 0.0)  # cost, log-kernel, kernel or LSE terms, plan, votes
        copies += 2.0 if keep else 0.0  # votes and confidence copies handed out
        copies += 0.5  # the correlation's per-pair temporaries and RHM's sums
        return int(copies * 4 * n * m) + self._subpixel_bytes(n) + moved

    def _subpixel_bytes(self, n: int) -> int:
        return _SUBPIXEL_BYTES * n * self.config.subpixel ** 2

    def _fits_in_memory(self, pairs: Sequence[Pair], keep: bool) -> bool:
        """On the CPU, before any N x M matrix exists: True when the largest pair fits in the
        host's available memory.  If it does not, low-memory streaming is used when the
        plan allows it (False, with a notice), else a one-line error naming the options
        that cannot stream."""
        available = _device.available_memory(self.device)
        if available is None:
            return True
        s, t = max(pairs, key=lambda p: p[0].n * p[1].n)
        need = self.pair_bytes(s.n, t.n, keep)
        if need <= _HOST_SHARE * available:
            return True
        what = f"matching {s.name} -> {t.name} ({s.n} x {t.n} hyperpixels) needs about {_device.format_gb(need)} " \
               f"but {_device.format_gb(available)} is available"
        if self._subpixel_bytes(s.n) > need / 2:
            raise ScotError(f"{what}, most of it for a sub-pixel window of {self.config.subpixel} x "
                            f"{self.config.subpixel} cells; use a smaller window", option="subpixel")
        if keep or not self.plan.can_stream:
            raise ScotError(f"{what}, and low memory cannot stream {self._unstreamable(keep)}; use a smaller "
                            "image_side", option="image_side")
        self._notice(f"notice: {s.n} x {t.n} hyperpixels need about {_device.format_gb(need)} in memory "
                     f"({_device.format_gb(available)} available): matching one way in low-memory mode")
        return False

    def _unstreamable(self, keep: bool) -> str:
        """What keeps this call from streaming: the plan's blocking options, or kept votes."""
        return ", ".join(([self.plan.blocker_text()] if self.plan.blockers else []) + (["kept votes"] if keep else []))

    def check_sizes(self, *sizes: tuple[int, int]) -> None:
        """Refuse, before any work, images the machine cannot describe: the backbone's
        activations at the largest input scale must fit in the available memory.  The
        error names the option that sets that scale.

        Args:
            sizes: (W, H) of the original images.
        """
        available = _device.available_memory(self.device)
        if available is None:
            return
        cfg = self.config
        scales = {"feature_scales": max(cfg.feature_scales or (1.0,)),
                  "cam_scales": max(cfg.cam_scales) if cfg.cam else 1.0}
        scale = max(1.0, *scales.values())
        # blame the option furthest beyond what the defaults ask (their side, passes at up to 2x); image_side on a tie
        beyond = {"image_side": cfg.image_side / _DEFAULT_SIDE,
                  **{k: v / _DEFAULT_MAX_SCALE for k, v in scales.items()}}
        blamed = max(beyond, key=lambda k: beyond[k])
        for w, h in sizes:
            rw, rh = resized_size(w, h, cfg.image_side)
            need = _ACTIVATION_BYTES * (scale * rw) * (scale * rh)
            if need > _HOST_SHARE * available:
                fix = "a smaller image_side" if blamed == "image_side" else f"smaller {blamed} or a smaller image_side"
                raise ScotError(f"a {w}x{h} image resized to {rw}x{rh} needs about {_device.format_gb(need)} for the "
                                f"network (at scale {scale:g}) but {_device.format_gb(available)} is available; use "
                                f"{fix}", option=blamed)

    def _moved_bytes(self, s: Hyperpixels, t: Hyperpixels) -> int:
        """Operand bytes :meth:`Hyperpixels.to` and the reversed operand create on the device."""
        return sum(h.operand_nbytes() for h in (s, t) if h.device != self.device)

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

    def _block_rows(self, matrix: torch.Tensor) -> int:
        """Rows of the (B, N, M) matrix processed together: a few MB on the CPU (kept in cache);
        on a GPU at most 256 MB (the whole matrix when it is smaller), which bounds the
        temporary the Sinkhorn sweeps take beside the matrix."""
        row = matrix.element_size() * matrix.shape[0] * matrix.shape[2]
        if matrix.device.type != "cpu":
            return max(1, min(matrix.shape[1], _DEVICE_BLOCK_BYTES // row))
        return max(16, _BLOCK_BYTES // row)

    # ------------------------------------------------------------------------------------
    # In memory
    def _halving(self, pairs: list[Pair], kps: list[torch.Tensor | None], keep: bool, topk: int) -> list[R]:
        """:meth:`_together`; on out-of-memory, the two halves one after the other."""
        try:
            return self._together(pairs, kps, keep, topk)
        except torch.OutOfMemoryError:
            pass  # leave the handler first: its traceback holds the failed batch's tensors
        self.release_memory()
        _device.release_cached(self.device)
        if len(pairs) == 1:
            s, t = pairs[0]
            streams = self.plan.can_stream and not keep
            fix = "low-memory mode (--low-memory) streams it in blocks" if streams else \
                f"low memory cannot stream {self._unstreamable(keep)}; use a smaller image_side"
            raise ScotError(
                f"pair {s.name} -> {t.name} ({s.n} x {t.n} hyperpixels) does not fit in the memory of {self.device} "
                f"even alone (about {_device.format_gb(self.pair_bytes(s.n, t.n, keep))} needed, "
                f"{_device.format_gb(_device.free_memory(self.device))} free); {fix}",
                option="low_memory" if streams else "image_side")
        half = (len(pairs) + 1) // 2
        logger.info("out of memory with %d pairs on %s: matching %d and %d", len(pairs), self.device, half,
                    len(pairs) - half)
        return self._halving(pairs[:half], kps[:half], keep, topk) + self._halving(pairs[half:], kps[half:], keep, topk)

    def _together(self, pairs: list[Pair], kps: list[torch.Tensor | None], keep: bool, topk: int) -> list[R]:
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
        votes, votes_back, eps_used, finite = self._votes(log2k, mu, nu, alpha)
        clock.lap("ot")

        device_parts: list[list[torch.Tensor]] = []  # per pair, what comes to the host
        kept = []
        for b, (s, t) in enumerate(zip(srcs, trgs)):
            v = votes[b, : s.n, : t.n]
            natural_votes = v.flip(-1) if keep else None  # a copy in the natural target order
            conf = self._confidence(v, s, t)
            if votes_back is not None:  # two-way: add the reverse confidences, each scaled to max 1
                back = self._confidence(votes_back[b, : s.n, : t.n], s, t, reverse=True)
                conf.div_(conf.amax().clamp_min(1e-30)).addcdiv_(back, back.amax().clamp_min(1e-30))
            best_conf, best_col = conf.max(dim=-1)
            parts = [_natural(best_col, t.n), best_conf.float()]
            if cfg.subpixel:
                parts.append(soft_argmax_targets(conf, best_col, t.grid, t.boxes.flip(0), cfg.subpixel))
            if cfg.mutual:
                parts.append(mutual_mask(conf, best_col))
            if topk > 0:
                values, columns = conf.topk(min(topk, t.n), dim=-1)
                parts += [_natural(columns, t.n), values.float()]
            device_parts.append(parts)
            kept.append((natural_votes, conf.flip(-1) if keep else None))
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
            kept_votes, confidence = kept[b]
            result = self._result(src=s, trg=t, best=best, best_confidence=best_conf, votes=kept_votes,
                                  confidence=confidence, config=cfg, timings=timings, eps_used=eps_used[b],
                                  target_tl=target_tl, usable=usable)
            if topk > 0:
                result.topk_index, result.topk_confidence = host.pop(0), host.pop(0)
            self._transfer(result, kps[b])
            results.append(result)
        clock.lap("transfer")
        return results

    def _votes(self, log2k: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor,
               alpha: float) -> tuple[torch.Tensor, torch.Tensor | None, list, torch.Tensor | None]:
        """Transport votes (B, N, M) from a log2-kernel the call consumes, with two-way matching
        the target -> source votes transposed to (B, N, M), the ε used per pair, and for the
        kernel path a 0-dim flag on the device, true when every scaling is finite (the
        caller reads it with the batch's results)."""
        cfg, plan = self.config, self.plan
        batch = log2k.shape[0]
        if plan.kind == "none":  # HPF's similarity: clamp(cos, 0) ** exp1, with log2k = clamp(cos, 0) - 1 (alpha = 1)
            votes = log2k.add_(1.0)
            if cfg.exp1 != 1.0:
                votes.pow_(cfg.exp1)
            return votes, votes.clone() if plan.two_way else None, [None] * batch, None
        if plan.kind == "kernel":  # SCOT's solver on the stored log-kernel, block by block, votes formed in place
            back = self._buffer("back", tuple(log2k.shape)) if plan.two_way else None
            exp2 = self._exp2

            def final(r0: int, r1: int, block: torch.Tensor, sc: Scalings) -> None:
                if back is not None:  # first: the forward votes overwrite the block
                    log2_votes(block, sc.log2_rows(r0, r1, reverse=True), sc.log2_cols(reverse=True), exp2,
                               out=back[:, r0:r1])
                log2_votes(block, sc.log2_rows(r0, r1), sc.log2_cols(), exp2, out=block)

            scalings = kernel_sinkhorn(lambda r0, r1: log2k[:, r0:r1], mu, nu, num_iters=cfg.sinkhorn_iters,
                                       fi=dampening(cfg.eps, cfg.unbalanced_tau), two_way=plan.two_way,
                                       block_rows=self._block_rows(log2k), on_final_block=final)
            return log2k, back, [cfg.eps] * batch, scalings.finite()
        cost = cost_from_log2_kernel_(log2k, alpha)
        back = None
        if plan.two_way:  # solve the transposed problem explicitly
            back_cost = cost.transpose(1, 2).contiguous()
            back = self._solve(back_cost, nu, mu)[0].transpose(1, 2).contiguous()
        votes, eps_used = self._solve(cost, mu, nu)
        return votes, back, eps_used, None

    def _solve(self, cost: torch.Tensor, mu: torch.Tensor, nu: torch.Tensor) -> tuple[torch.Tensor, list]:
        cfg = self.config
        votes, stats = scot_votes(cost, mu, nu, eps=cfg.eps, exp2=self._exp2, num_iters=cfg.sinkhorn_iters,
                                  tol=cfg.sinkhorn_tol, method=self.plan.method, tau=cfg.unbalanced_tau,
                                  max_doublings=cfg.max_eps_doublings)
        return votes, stats.eps_used

    def _hough(self, s: Hyperpixels, t: Hyperpixels, reverse: bool = False) -> HoughWindows:
        """The pair's Hough tables on the device.  Both grids are regular by construction
        (:func:`~scot.hyperpixels.receptive_field_boxes`); their spacing is the geometry's
        jump, compared here without reading a tensor."""
        if s.geometry.jump != t.geometry.jump:
            raise ValueError(GRID_ERROR)
        return HoughWindows.build(s.xs, s.ys, t.xs, t.ys, s.size, t.size, self.config.rhm_cells, self.device, reverse,
                                  check=False)

    def _confidence(self, votes: torch.Tensor, s: Hyperpixels, t: Hyperpixels, reverse: bool = False) -> torch.Tensor:
        """RHM confidences of one pair's (n, m) votes in the matrix layout, in place (the
        votes themselves with RHM off); ``reverse``: the transposed target -> source votes."""
        if not self.config.rhm:
            return votes
        grid = grid_view(votes, s.grid, t.grid)
        self._hough(s, t, reverse).confidence(grid, self.config.rhm_kernel, out=grid)
        return votes

    def _transfer(self, result: R, kps: torch.Tensor | None) -> None:
        """Transfer source keypoints ``kps`` (original pixels) through ``result``'s matches, in place."""
        if kps is None:
            return
        s, t = result.src, result.trg
        pred = transfer_keypoints(s.boxes, t.boxes, result.best, kps * s.ratio, result.target_tl, result.usable,
                                  how=self.config.transfer or "mean", confidence=result.best_confidence,
                                  bounds=image_bounds(t.original_size, t.ratio))
        original = clamp_points(pred / t.ratio, image_bounds(t.original_size))  # inside after rounding too
        result.keypoints, result.transferred_resized, result.transferred = kps, pred, original

    # ------------------------------------------------------------------------------------
    # Streamed
    def _streamed_or_explain(self, s: Hyperpixels, t: Hyperpixels, kps: torch.Tensor | None) -> R:
        """:meth:`_streamed`; out of memory even so, a one-line error naming the block size."""
        try:
            return self._streamed(s, t, kps)
        except torch.OutOfMemoryError:
            pass  # leave the handler first: its traceback holds the failed pair's tensors
        self.release_memory()
        _device.release_cached(self.device)
        raise ScotError(f"pair {s.name} -> {t.name} ({s.n} x {t.n} hyperpixels) does not fit in the memory of "
                        f"{self.device} even in low-memory mode with blocks of {self.config.low_memory_rows} rows; "
                        f"use fewer rows per block or a smaller image_side", option="low_memory_rows")

    def _streamed(self, s: Hyperpixels, t: Hyperpixels, kps: torch.Tensor | None) -> R:
        """Low-memory matching, one way: no N x M matrix is ever held."""
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
        best, best_conf = _device.to_host(_natural(best_col, t.n), best_conf.float())
        result = self._result(src=s, trg=t, best=best, best_confidence=best_conf, config=cfg, timings=timings,
                              eps_used=eps_used)
        self._transfer(result, kps)
        clock.lap("transfer")
        return result
