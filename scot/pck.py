r"""Step 6: PCK, scored exactly as the SCOT/HPF evaluation code scores it.

A predicted keypoint is correct when its distance to the ground truth is at most
:math:`\alpha \cdot \text{thr}`, both measured in the target image resized to the
pipeline's 300 px frame.  The threshold is computed on the original target and scaled by
the target's resize ratio:

* ``bbox``: ``max(w, h)`` of the target bounding box (SPair-71k's default).  PF-WILLOW has
  no boxes; like the reference, its loader uses the box spanned by the target's
  ground-truth keypoints, so the threshold is the longer side of that box;
* ``img``: ``max(H, W)`` of the target image (PF-PASCAL's default).

A pair's PCK is its fraction of correct keypoints.  The paper averages over pairs; the
average over all keypoints is reported beside it and labelled as such.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from .errors import ScotError

ALPHAS = (0.05, 0.10, 0.15)
HEADLINE_ALPHA = 0.10


def keypoint_box(kps: torch.Tensor) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) of the axis-aligned box spanned by (K, 2) keypoints."""
    lo, hi = kps.min(0).values, kps.max(0).values
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def pck_threshold(rule: str, trg_size: tuple[int, int], trg_bbox: Sequence[float] | None) -> float:
    """The PCK normaliser on the original target image.

    Args:
        rule: ``img`` or ``bbox``.
        trg_size: (W, H) of the original target image.
        trg_bbox: (x1, y1, x2, y2) target box, for ``bbox``.

    Raises:
        ScotError: the threshold is not a positive finite number of pixels (a box without
            extent): every distance divided by it would be infinite or NaN.
    """
    if rule == "img":
        thr = float(max(trg_size))
    elif rule == "bbox":
        if trg_bbox is None:
            raise ValueError("the 'bbox' PCK threshold needs a target bounding box")
        x1, y1, x2, y2 = (float(v) for v in trg_bbox)
        thr = max(x2 - x1, y2 - y1)
    else:
        raise ValueError(f"unknown PCK threshold rule {rule!r}")
    if not (math.isfinite(thr) and thr > 0):
        shown = f"box {tuple(trg_bbox or ())}" if rule == "bbox" else f"image size {tuple(trg_size)}"
        raise ScotError(f"the PCK threshold is {thr:g} px (the '{rule}' rule on the target's {shown}); "
                        f"PCK needs a positive threshold")
    return thr


def normalised_distances(pred: torch.Tensor, gt: torch.Tensor, thr: float) -> torch.Tensor:
    """L2 distances of (K, 2) predictions divided by the threshold (same frame)."""
    return torch.linalg.vector_norm(pred.double() - gt.double(), dim=1) / thr


def correct(dist_over_thr: Iterable[float], alpha: float) -> list[bool]:
    return [d <= alpha for d in dist_over_thr]


def pair_pck(dist_over_thr: Sequence[float], alpha: float) -> float:
    """Fraction of a pair's keypoints within ``alpha · thr``."""
    if not dist_over_thr:
        return 0.0
    return sum(d <= alpha for d in dist_over_thr) / len(dist_over_thr)


@dataclass
class PCKTable:
    """Accumulates per-pair normalised distances and reports every PCK view."""

    alphas: tuple[float, ...] = ALPHAS
    records: list[tuple[str, dict[str, int], list[float]]] = field(default_factory=list)

    def add(self, category: str, dist_over_thr: Sequence[float], flags: dict[str, int] | None = None) -> None:
        self.records.append((category, dict(flags or {}), [float(d) for d in dist_over_thr]))

    def __len__(self) -> int:
        return len(self.records)

    def mean_over_pairs(self, alpha: float, records=None) -> float:
        recs = self.records if records is None else records
        return 100.0 * sum(pair_pck(d, alpha) for _, _, d in recs) / len(recs) if recs else float("nan")

    def mean_over_keypoints(self, alpha: float, records=None) -> float:
        recs = self.records if records is None else records
        total = sum(len(d) for _, _, d in recs)
        return 100.0 * sum(sum(x <= alpha for x in d) for _, _, d in recs) / total if total else float("nan")

    def by_category(self) -> dict[str, list]:
        groups: dict[str, list] = defaultdict(list)
        for rec in self.records:
            groups[rec[0]].append(rec)
        return dict(sorted(groups.items()))

    def by_flag(self) -> dict[str, dict[int, list]]:
        groups: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
        for rec in self.records:
            for name, value in rec[1].items():
                groups[name][int(value)].append(rec)
        return {k: dict(sorted(v.items())) for k, v in sorted(groups.items())}

    def summary(self) -> dict:
        """PCK tables in percent: overall (both conventions), per category and per flag."""
        def row(recs):
            return {
                "pairs": len(recs),
                "keypoints": sum(len(d) for _, _, d in recs),
                "pck_mean_over_pairs": {f"{a:.2f}": self.mean_over_pairs(a, recs) for a in self.alphas},
                "pck_mean_over_keypoints": {f"{a:.2f}": self.mean_over_keypoints(a, recs) for a in self.alphas},
            }

        out = {"overall": row(self.records), "per_category": {c: row(r) for c, r in self.by_category().items()}}
        flags = self.by_flag()
        if flags:
            out["per_flag"] = {name: {str(v): row(r) for v, r in levels.items()} for name, levels in flags.items()}
        return out

    def curve(self, alphas: Sequence[float]) -> dict[str, list[float]]:
        return {
            "mean over pairs": [self.mean_over_pairs(a) for a in alphas],
            "mean over keypoints": [self.mean_over_keypoints(a) for a in alphas],
        }
