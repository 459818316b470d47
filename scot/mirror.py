r"""Mirror-aware matching (``flip='auto'``): match the source and its mirror, keep one.

Two photos of one kind of object often face opposite ways (a car driving left, another
driving right).  Matching by appearance then pairs the front of one with the front of the
other, and the correspondence reverses left and right; regularized Hough matching, which
votes for one consistent translation and scale, fights it.  Matching the *mirrored*
source instead turns such a pair into one that faces the same way.

The hard part is deciding when.  Picking whichever orientation is more confident flips
far too often, because a mirrored match is often about as confident.  The criterion here
asks what a right correspondence between objects that face the same way must do: keep
left-right order.  For each orientation, the foreground source cells (CAM above the
foreground level) and their best targets give the weighted correlation

.. math::
    \rho = \frac{\sum_i c_i (x_i - \bar x)(x'_i - \bar x')}
                {\sqrt{\sum_i c_i (x_i - \bar x)^2 \sum_i c_i (x'_i - \bar x')^2}}

of source and target column positions, weighted by the match confidence :math:`c_i`
(each orientation in its own frame).  The mirror is kept when
:math:`\rho_{mirror} - \rho_{plain}` exceeds a margin (``flip_margin``) and the mirror's
foreground matches are also more confident (:data:`CONFIDENCE_GAIN`).  docs/accuracy.md
gives the criterion's precision and gain on each benchmark's validation pairs.

A kept mirror (:func:`kept_mirror`) is reported in the source's own frame: keypoints are
those given, and matches and the dense flow are mapped back from the mirror (so are masks,
warps and the viewer, which are drawn from them).  A correspondence through a mirror is a
reflection: a point just right of a part in the source lands just left of it in the
target.  Mirroring keeps each part where it is but changes which side of the object it seems to
be on: a car's left headlight, mirrored, looks like a right headlight, and matches the
target's right headlight.  Given each keypoint's mirror partner (``mirror_keypoints``: for
the left headlight, the right one's position; SPair-71k names its sided parts), a kept
mirror moves the keypoint by its partner's match, and it lands on its own part; without
them, a keypoint is moved to where its mirrored look-alike matches.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import torch

from .matcher import Matched

R = TypeVar("R", bound=Matched)

CONFIDENCE_GAIN = 1.05
"""A kept mirror's foreground matches must also be this much more confident on average than
the plain match's (chosen with ``flip_margin`` on the SPair-71k validation pairs; see
docs/accuracy.md)."""


def mirror_pixels(xy: torch.Tensor, width: int) -> torch.Tensor:
    """(K, 2) points x, y of an image ``width`` pixels wide, as they lie in its mirror made by
    flipping the pixel columns: column ``u`` becomes ``W - 1 - u`` (so the dense flow, read at
    a pixel, and the keypoints agree).  Benchmarks that mirror pairs use
    :func:`scot.datasets.base.mirror_points` (the reference's ``W - x``)."""
    out = xy.clone()
    out[:, 0] = (width - 1) - out[:, 0]
    return out


def kept_mirror(result: R, keypoints: torch.Tensor | None) -> R:
    """A match of the mirrored source, kept: ``flipped`` set, ``keypoints`` the source
    keypoints as given (in the source's own frame).

    The other fields stay those of the mirrored match: ``src`` describes the mirrored
    image and per-cell fields (``best``, rows of ``votes``...) index its cells;
    ``transferred`` is in the target's frame.  :class:`~scot.model.MatchResult` maps its
    source-side outputs (:meth:`~scot.model.MatchResult.matches`, the dense flow) back to
    the source's own frame.
    """
    return dataclasses.replace(result, keypoints=keypoints, flipped=True)


def _foreground(result: Matched) -> torch.Tensor:
    """(N,) bool: the source cells on the object (CAM above the foreground level), or every
    cell when there is no CAM or fewer than two are on the object."""
    fg = result.src.on_object
    if fg is None or int(fg.sum()) < 2:
        return torch.ones(result.src.n, dtype=torch.bool)
    return fg


def confidence(result: Matched) -> float:
    """The mean best-match confidence of the foreground source cells."""
    return float(result.best_confidence.float().cpu()[_foreground(result)].mean())


def left_right_order(result: Matched) -> float:
    """:math:`\\rho`, the confidence-weighted correlation of source and matched target x over
    the foreground source cells (all cells without a CAM), each in its matched frame; 0 when
    either side has no spread."""
    fg = _foreground(result)
    best = result.best.cpu()[fg]
    c = result.best_confidence.float().cpu()[fg].double().clamp_min(0)
    if float(c.sum()) <= 0:
        return 0.0
    c = c / c.sum()
    xs = result.src.centres[fg, 0].double()
    xt = result.trg.centres[best, 0].double()
    ds, dt = xs - (c * xs).sum(), xt - (c * xt).sum()
    spread = float(((c * ds * ds).sum() * (c * dt * dt).sum()).sqrt())
    return float((c * ds * dt).sum()) / spread if spread > 0 else 0.0


def keep_mirror(plain: Matched, mirror: Matched, margin: float) -> bool:
    """True when the mirrored match keeps left-right order better than the plain one by
    more than ``margin`` (:func:`left_right_order`) and its foreground matches are at
    least :data:`CONFIDENCE_GAIN` times as confident (:func:`confidence`).  A margin of
    -2 keeps every mirror."""
    if margin <= -2:
        return True
    return (left_right_order(mirror) - left_right_order(plain) > margin
            and confidence(mirror) >= CONFIDENCE_GAIN * confidence(plain))
