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

_BLOCK = 1 << 20  # source pixels handled at once: temporaries stay a few MB whatever the image size


def _row_blocks(height: int, width: int) -> list[tuple[int, int]]:
    """(start, stop) rows of blocks of about :data:`_BLOCK` pixels over a ``height`` x ``width`` image."""
    step = max(1, _BLOCK // max(1, width))
    return [(r0, min(r0 + step, height)) for r0 in range(0, height, step)]


def flow_step(flow: torch.Tensor | np.ndarray, valid: torch.Tensor | np.ndarray | None = None) -> float:
    """Median distance in target pixels between the landing points of 4-neighbour source pixels.

    Only pairs of neighbours both in ``valid`` (default all) with finite landings count; the
    lower middle value for an even count; 1.0 when there is none.  Computed over blocks of
    rows, in float64: no full-size temporary beyond the steps kept.
    """
    f = torch.as_tensor(flow)
    v = None if valid is None else torch.as_tensor(valid).bool()
    height, width = int(f.shape[0]), int(f.shape[1])
    kept = []
    for r0, r1 in _row_blocks(height, width):
        block = f[r0 : min(r1 + 1, height)].double()  # one row more: the vertical steps across the block's end
        rows = r1 - r0
        across = (block[:rows, 1:] - block[:rows, :-1]).norm(dim=2)
        down = (block[1:] - block[:-1]).norm(dim=2)
        if v is not None:
            vb = v[r0 : min(r1 + 1, height)]
            across, down = across[vb[:rows, 1:] & vb[:rows, :-1]], down[vb[1:] & vb[:-1]]
        for s in (across.flatten(), down.flatten()):
            kept.append(s[torch.isfinite(s)])
    steps = torch.cat(kept) if kept else torch.zeros(0)
    return float(steps.median()) if steps.numel() else 1.0


def fill_radius(flow: torch.Tensor | np.ndarray, valid: torch.Tensor | np.ndarray | None = None) -> int:
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

    The votes are gathered over blocks of source rows as one int64 key per landing
    (target pixel x L + label) and counted after one sort: memory is the voting pixels'
    keys and the (Ht, Wt) results, whatever the number of labels L.

    Args:
        labels: (H, W) integer label indices 0..L-1.
        flow: (H, W, 2) float target (x, y).
        target_size: (Wt, Ht).
        voting: (H, W) bool source pixels that vote (default all).

    Returns:
        winner: (Ht, Wt) int32 label index (-1 where nothing landed).
        votes: (Ht, Wt) int32 number of source pixels that landed.
    """
    wt, ht = int(target_size[0]), int(target_size[1])
    height, width = labels.shape[:2]
    n_labels = int(labels.max()) + 1 if labels.size else 1
    key = np.empty(int(np.count_nonzero(voting)) if voting is not None else labels.size, dtype=np.int64)
    n = 0
    for r0, r1 in _row_blocks(height, width):
        x, y = np.rint(flow[r0:r1, :, 0]), np.rint(flow[r0:r1, :, 1])
        ok = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (y >= 0) & (x <= wt - 1) & (y <= ht - 1)
        if voting is not None:
            ok &= np.asarray(voting[r0:r1], dtype=bool)
        pix = y[ok].astype(np.int64) * wt + x[ok].astype(np.int64)
        key[n : n + len(pix)] = pix * n_labels + labels[r0:r1][ok]
        n += len(pix)
    winner = np.full(ht * wt, -1, dtype=np.int32)
    votes = np.zeros(ht * wt, dtype=np.int32)
    if n:
        key = key[:n]
        key.sort()
        new = np.empty(n, dtype=bool)  # the first landing of each (pixel, label) run
        new[0] = True
        np.not_equal(key[1:], key[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        del new
        counts = np.diff(starts, append=n).astype(np.int32)
        runs = key[starts]
        del key, starts
        pix, lab = (runs // n_labels).astype(np.int32), (runs % n_labels).astype(np.int32)
        del runs
        first = np.empty(len(pix), dtype=bool)  # runs of one pixel, labels ascending
        first[0] = True
        np.not_equal(pix[1:], pix[:-1], out=first[1:])
        heads = np.flatnonzero(first)
        group = np.cumsum(first, dtype=np.int32) - 1
        del first
        best = np.flatnonzero(counts == np.maximum.reduceat(counts, heads)[group])  # runs with the most votes
        best = best[np.concatenate(([True], group[best[1:]] != group[best[:-1]]))]  # per pixel, the lowest label
        winner[pix[best]] = lab[best]
        votes[pix[heads]] = np.add.reduceat(counts, heads)
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
    grow the outline of the labelled area.  Both lie in the bounding box of the labelled
    pixels, so the work is done there (in place in ``winner``, which is returned).
    """
    labelled = winner >= 0
    if radius < 1 or labelled.all() or not labelled.any():
        return winner
    rows, cols = np.flatnonzero(labelled.any(1)), np.flatnonzero(labelled.any(0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    inner, holes = winner[box], ~labelled[box]
    del labelled
    ys, xs = np.nonzero(holes & bridged(~holes, radius))
    iy, ix = ndimage.distance_transform_edt(holes, return_distances=False, return_indices=True)[:, ys, xs]
    near = (iy - ys) ** 2 + (ix - xs) ** 2 <= radius * radius  # the nearest labelled pixel is within the radius
    inner[ys[near], xs[near]] = inner[iy[near], ix[near]]
    return winner


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
    mask = src_mask if isinstance(src_mask, torch.Tensor) else torch.from_numpy(np.asarray(src_mask))
    f = torch.as_tensor(flow).detach().cpu()
    if f.shape != (*mask.shape, 2):
        raise ValueError(f"flow {tuple(f.shape)} does not match mask {tuple(mask.shape)} (expected (H, W, 2))")
    m = mask.detach().cpu().numpy()
    voting = m != background
    r = fill_radius(f, voting) if radius is None else float(radius)
    values, index = label_indices(m, voting)
    winner, _ = splat_labels(index, f.numpy(), target_size, voting)
    del index, voting
    winner = fill_holes(winner, r)
    out = np.full(winner.shape, background, dtype=m.dtype)
    placed = winner >= 0
    out[placed] = values[winner[placed]]
    return torch.from_numpy(out)


def label_indices(labels: np.ndarray, voting: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct label values of the ``voting`` pixels, and every voting pixel's index among them.

    Args:
        labels: (H, W) integer or bool labels.
        voting: (H, W) bool.

    Returns:
        values: (L,) the sorted distinct values of ``labels[voting]``, in ``labels``' dtype.
        index: (H, W) int32 index into ``values`` (0 where not voting).  Labels of 16 bits
            or fewer are counted in one pass; other values are sorted.
    """
    index = np.zeros(labels.shape, dtype=np.int32)
    if not voting.any():
        return np.zeros(0, dtype=labels.dtype), index
    small = labels.dtype == np.bool_ or (np.issubdtype(labels.dtype, np.integer) and int(labels.min()) >= 0
                                          and int(labels.max()) < 1 << 16)
    if small:
        lookup = labels.view(np.uint8) if labels.dtype == np.bool_ else labels
        present = np.zeros(int(lookup.max()) + 1, dtype=bool)
        blocks = _row_blocks(*labels.shape[:2])
        for r0, r1 in blocks:
            present[lookup[r0:r1][voting[r0:r1]]] = True
        values = np.flatnonzero(present).astype(labels.dtype)
        position = (np.cumsum(present) - 1).astype(np.int32)
        for r0, r1 in blocks:
            index[r0:r1] = np.where(voting[r0:r1], position[lookup[r0:r1]], 0)
        return values, index
    values, inverse = np.unique(labels[voting], return_inverse=True)
    index[voting] = inverse.ravel()
    return values, index
