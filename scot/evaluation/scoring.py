"""Scoring one matched pair as the paper's evaluation code does: its journal record."""

from __future__ import annotations

from ..datasets import Pair
from ..errors import ScotError
from ..pck import ALPHAS, normalised_distances, pair_pck, pck_threshold


def score_pair(pair: Pair, result, thres: str, alphas=ALPHAS) -> dict:
    """Score one matched pair in the resized target frame; return its journal record."""
    s, t = result.src, result.trg
    _, trg_kps, trg_bbox = pair.oriented(s.original_size[0], t.original_size[0])
    if thres == "bbox" and trg_bbox is None:
        raise ScotError(f"bbox: pair {pair.pair_id} has no target bounding box (annotation files missing?)",
                        option="thres")
    try:
        thr = pck_threshold(thres, t.original_size, trg_bbox)
    except ScotError as exc:
        raise ScotError(f"pair {pair.pair_id} (target {pair.trg}): {exc.message}") from None
    gt_resized = trg_kps * t.ratio
    dist = normalised_distances(result.transferred_resized, gt_resized, thr * t.ratio).tolist()
    rec = {
        "index": pair.index, "pair_id": pair.pair_id, "category": pair.category,
        "src": str(pair.src), "trg": str(pair.trg), "flip": pair.flip, "n_kps": len(dist),
        "thr": thr, "dist": [round(d, 6) for d in dist],
        "pred": [[round(x, 3), round(y, 3)] for x, y in result.transferred.tolist()],
        "gt": [[round(x, 3), round(y, 3)] for x, y in trg_kps.tolist()],
        "pck": {f"{a:.2f}": pair_pck(dist, a) for a in alphas},
    }
    if pair.flags:
        rec["flags"] = pair.flags
    return rec


