"""Scoring one matched pair as the paper's evaluation code does: its journal record, and
the digest of the inputs it was scored from."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..datasets import Pair
from ..errors import ScotError
from ..pck import ALPHAS, normalised_distances, pair_pck, pck_threshold

if TYPE_CHECKING:
    import torch

    from ..model import SCOT, MatchResult


def mirror_keypoints(model: SCOT, pair: Pair, src_width: int) -> torch.Tensor | None:
    """What a kept mirror transfers for ``pair`` (see :meth:`SCOT.__call__ <scot.model.SCOT.__call__>`):
    the sided parts' partners with ``flip='auto'`` and ``sided_parts='swap'`` where the
    benchmark names them (:attr:`~scot.datasets.base.Pair.src_mirror_kps`), else None."""
    cfg = model.config
    if cfg.flip != "auto" or cfg.sided_parts != "swap":
        return None
    return pair.oriented_mirror_kps(src_width)


def score_pair(pair: Pair, result: MatchResult, thres: str, alphas: Sequence[float] = ALPHAS) -> dict:
    """Score one matched pair in the resized target frame; return its journal record."""
    s, t = result.src, result.trg
    assert result.transferred is not None and result.transferred_resized is not None, "a match without keypoints"
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
        "src": str(pair.src), "trg": str(pair.trg), "flip": pair.flip, "flipped": result.flipped, "n_kps": len(dist),
        "thr": thr, "dist": [round(d, 6) for d in dist],
        "pred": [[round(x, 3), round(y, 3)] for x, y in result.transferred.tolist()],
        "gt": [[round(x, 3), round(y, 3)] for x, y in trg_kps.tolist()],
        "pck": {f"{a:.2f}": pair_pck(dist, a) for a in alphas},
    }
    if pair.flags:
        rec["flags"] = pair.flags
    return rec


class PairInputs:
    """Digests of what each pair's score depends on besides the model and the run's settings.

    A pair's digest covers its annotations as loaded (name, class, image paths, keypoints,
    boxes, difficulty flags, mirroring, sided parts' partners) and the bytes of its two images (SHA-256, each
    file read once per process), so it changes when an annotation or an image changes,
    whatever the file format, and not when a file is only touched or reformatted.  A run
    records it with every scored pair (``inputs``) and ``--resume`` scores again the
    pairs whose digest no longer matches.

    Args:
        pairs: the pairs of the run, by their ``index``.
    """

    def __init__(self, pairs: Iterable[Pair]) -> None:
        self._pairs = {p.index: p for p in pairs}
        self._files: dict[str, str] = {}

    def digest(self, index: int) -> str | None:
        """The digest (32 hex digits) of pair ``index``, or None when the run has no such pair."""
        pair = self._pairs.get(index)
        if pair is None:
            return None
        boxes = [None if b is None else [float(v) for v in b] for b in (pair.src_bbox, pair.trg_bbox)]
        doc = [pair.pair_id, pair.category, str(pair.src), str(pair.trg), bool(pair.flip), pair.src_kps.tolist(),
               pair.trg_kps.tolist(), boxes, sorted((k, int(v)) for k, v in pair.flags.items()),
               self._file(pair.src), self._file(pair.trg)]
        if pair.src_mirror_kps is not None:  # only then, so the digests of other benchmarks stay as they were
            doc.append(pair.src_mirror_kps.tolist())
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:32]

    def _file(self, path: Path) -> str:
        key = str(path)
        if key not in self._files:
            try:
                digest = hashlib.sha256()
                with open(path, "rb") as fh:  # hashlib.file_digest is Python 3.11+
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
                self._files[key] = digest.hexdigest()
            except OSError as exc:
                raise ScotError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        return self._files[key]
