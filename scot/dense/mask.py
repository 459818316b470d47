r"""Label masks moved from the source to the target frame along a dense flow.

:func:`transfer_mask` splats every labelled source pixel onto the target pixel nearest to
where it lands (majority vote per target pixel, :func:`splat_labels`) and fills the
enclosed holes that a locally smooth flow leaves between neighbouring landings
(:func:`fill_holes`, radius from :func:`fill_radius`).  Labels are copied, never
interpolated.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage


def flow_step(flow: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Median distance in target pixels between the landing points of 4-neighbour source pixels."""
    f = torch.as_tensor(flow).double()
    steps = [(f[:, 1:] - f[:, :-1]).norm(dim=2).flatten(), (f[1:] - f[:-1]).norm(dim=2).flatten()]
    if valid is not None:
        v = torch.as_tensor(valid).bool()
        steps = [steps[0][(v[:, 1:] & v[:, :-1]).flatten()], steps[1][(v[1:] & v[:-1]).flatten()]]
    s = torch.cat(steps)
    s = s[torch.isfinite(s)]
    return float(s.median()) if s.numel() else 1.0


def fill_radius(flow: torch.Tensor, valid: torch.Tensor | None = None) -> int:
    r"""Default hole-filling radius of :func:`transfer_mask`: :math:`\lceil s/\sqrt 2 + 1 \rceil`.

    With neighbouring source pixels (both in ``valid``) landing :math:`s` apart
    (:func:`flow_step`), a target pixel inside the covered area is at most
    :math:`s/\sqrt 2` from a landing point plus :math:`1/\sqrt 2` of rounding to a pixel.
    """
    return max(1, math.ceil(flow_step(flow, valid) / math.sqrt(2.0) + 1.0))


def splat_labels(
    labels: np.ndarray, flow: np.ndarray, target_size: tuple[int, int], voting: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""Majority vote of the label indices landing on each target pixel.

    Source pixel :math:`(u, v)` (where ``voting`` holds) votes for its label at target pixel
    :math:`(\mathrm{rint}(x), \mathrm{rint}(y))`, :math:`(x, y) = \mathrm{flow}[v, u]`
    (non-finite and out-of-frame landings are dropped); each target pixel takes the label
    with most votes, ties going to the lowest label index.

    Args:
        labels: (H, W) int64 label indices 0..L-1.
        flow: (H, W, 2) float target (x, y).
        target_size: (Wt, Ht).
        voting: (H, W) bool source pixels that vote (default all).

    Returns:
        winner: (Ht, Wt) int64 label index (-1 where nothing landed).
        votes: (Ht, Wt) int64 number of source pixels that landed.
    """
    wt, ht = int(target_size[0]), int(target_size[1])
    x, y = np.rint(flow[..., 0]).ravel(), np.rint(flow[..., 1]).ravel()
    ok = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (y >= 0) & (x <= wt - 1) & (y <= ht - 1)
    if voting is not None:
        ok &= np.asarray(voting, dtype=bool).ravel()
    pix = y[ok].astype(np.int64) * wt + x[ok].astype(np.int64)
    lab = labels.ravel()[ok].astype(np.int64)
    n_labels = int(labels.max()) + 1 if labels.size else 1
    pairs, counts = np.unique(pix * n_labels + lab, return_counts=True)
    p, lab_of = pairs // n_labels, pairs % n_labels
    order = np.lexsort((lab_of, -counts, p))
    first = np.unique(p[order], return_index=True)[1]
    winner = np.full(ht * wt, -1, dtype=np.int64)
    winner[p[order][first]] = lab_of[order][first]
    votes = np.bincount(pix, minlength=ht * wt).astype(np.int64)
    return winner.reshape(ht, wt), votes.reshape(ht, wt)


def _shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``out[y, x] = a[y + dy, x + dx]``, False outside."""
    out = np.zeros_like(a)
    h, w = a.shape
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[yd, xd] = a[ys, xs]
    return out


def bridged(labelled: np.ndarray, radius: float) -> np.ndarray:
    r"""(Ht, Wt) bool: pixels lying between two labelled pixels within ``radius`` on a line.

    Pixel :math:`p` is bridged when for one direction
    :math:`d \in \{(1,0), (0,1), (1,1), (1,-1)\}` there are steps
    :math:`1 \le a, b` with :math:`a|d|, b|d| \le` ``radius`` and both
    :math:`p + a d` and :math:`p - b d` labelled.  Gaps inside a labelled area and notches
    in its outline are bridged; pixels just outside a straight or convex outline are not.
    """
    out = np.zeros_like(labelled, dtype=bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        steps = int(math.floor(radius / math.hypot(dy, dx)))
        ahead = np.zeros_like(out)
        behind = np.zeros_like(out)
        for a in range(1, steps + 1):
            ahead |= _shifted(labelled, a * dy, a * dx)
            behind |= _shifted(labelled, -a * dy, -a * dx)
        out |= ahead & behind
    return out


def fill_holes(winner: np.ndarray, radius: float) -> np.ndarray:
    r"""(Ht, Wt) label indices with the enclosed holes (-1) filled by their nearest labelled pixel.

    A hole is filled when it is :func:`bridged` (labelled pixels on both sides along a
    line, within ``radius``); it then takes the index of its nearest labelled pixel
    (Euclidean, within ``radius``).  Unlike a plain nearest-neighbour fill this does not
    grow the outline of the labelled area.
    """
    holes = winner < 0
    if radius < 1 or not holes.any() or holes.all():
        return winner
    dist, (iy, ix) = ndimage.distance_transform_edt(holes, return_indices=True)
    fill = holes & bridged(~holes, radius) & (dist <= radius)
    return np.where(fill, winner[iy, ix], winner)


def transfer_mask(
    src_mask: torch.Tensor | np.ndarray,
    flow: torch.Tensor | np.ndarray,
    target_size: tuple[int, int],
    radius: float | None = None,
    background: int = 0,
) -> torch.Tensor:
    r"""Move a binary or label mask from the source frame to the target frame.

    Forward splatting with a majority vote, then filling of enclosed holes:

    1. every source pixel not labelled ``background`` votes for its label at the target
       pixel nearest to where it lands (:func:`splat_labels`); a target pixel takes its
       most voted label.  Background pixels do not vote: with imperfect matches they
       land scattered over the target and would punch holes in the objects;
    2. a target pixel no vote reached takes the label of its nearest voted pixel when
       voted pixels lie on both sides of it along a line within ``radius`` (:func:`fill_holes`;
       default radius :func:`fill_radius` of the flow over the voting pixels, which covers
       the gaps a locally smooth flow leaves between neighbouring landings), else
       ``background``.

    Labels are copied, never interpolated: the output values are input values, plus
    ``background`` where nothing reaches.

    Args:
        src_mask: (H, W) integer or bool labels.
        flow: (H, W, 2) target (x, y) of every source pixel, in target pixels.
        target_size: (Wt, Ht).
        radius: hole-filling radius in target pixels (below 1 disables filling).
        background: the label that does not vote and fills the rest of the target.

    Returns:
        (Ht, Wt) tensor of the mask's dtype.
    """
    mask = src_mask if isinstance(src_mask, torch.Tensor) else torch.from_numpy(np.array(src_mask))
    f = torch.as_tensor(flow).detach().double().cpu()
    if f.shape != (*mask.shape, 2):
        raise ValueError(f"flow {tuple(f.shape)} does not match mask {tuple(mask.shape)} (expected (H, W, 2))")
    m = mask.cpu().numpy()
    voting = m != background
    values, inverse = np.unique(m, return_inverse=True)
    winner, _ = splat_labels(inverse.reshape(m.shape), f.numpy(), target_size, voting)
    r = fill_radius(f, torch.from_numpy(voting)) if radius is None else float(radius)
    winner = fill_holes(winner, r)
    out = np.where(winner >= 0, values[np.clip(winner, 0, None)] if values.size else background, background)
    return torch.from_numpy(np.ascontiguousarray(out)).to(mask.dtype)
