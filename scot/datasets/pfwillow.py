"""PF-WILLOW (Ham et al., CVPR 2016) in the HPF/SCOT layout.

``PF-WILLOW/test_pairs.csv`` has columns ``imageA,imageB,XA1..XA10,YA1..YA10,XB1..XB10,
YB1..YB10``; image paths look like ``PF-dataset/car(G)/Cars_006a.png``: the first
component is dropped and the second is the class.  All 10 keypoints are valid, so every
coordinate must be a finite number, within the image by the margin of
:func:`~scot.datasets.base.outside_margin` (the images carry their sizes; the csv declares
none).  The PCK box is the one spanned by the target's keypoints, as in the reference code,
so those must span at least a pixel.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ScotError
from ..pck import keypoint_box
from .base import (
    Dataset,
    DatasetMissingError,
    ImageSizes,
    Pair,
    check_keypoint_counts,
    check_points_inside,
    check_threshold_extent,
    read_pair_csv,
    text_number,
)

CLASSES = ["car(G)", "car(M)", "car(S)", "duck(S)", "motorbike(G)", "motorbike(M)", "motorbike(S)",
           "winebottle(M)", "winebottle(wC)", "winebottle(woC)"]
N_KPS = 10
COLUMNS = (["imageA", "imageB"] + [f"XA{i}" for i in range(1, 11)] + [f"YA{i}" for i in range(1, 11)]
           + [f"XB{i}" for i in range(1, 11)] + [f"YB{i}" for i in range(1, 11)])


def load_pfwillow(datapath: Path, split: str = "test", pair_list: Path | None = None,
                  check_images: bool = True) -> Dataset:
    """Load PF-WILLOW's pairs from ``datapath/PF-WILLOW/test_pairs.csv`` (or ``pair_list``).

    Args:
        datapath: the folder holding ``PF-WILLOW/``.
        split: ``test`` (the only split; any name is accepted with ``pair_list``).
        pair_list: a csv in the same format replacing ``test_pairs.csv``.
        check_images: require every image to exist, and check the keypoints against its size.
    """
    root = Path(datapath) / "PF-WILLOW"
    if split != "test" and pair_list is None:
        raise ScotError(f"PF-WILLOW only has a 'test' split, not '{split}'", option="split")
    csv_path = pair_list or root / "test_pairs.csv"
    if not csv_path.is_file():
        raise DatasetMissingError(f"PF-WILLOW not found: expected {csv_path} (put the PF-WILLOW folder in "
                                  f"{Path(datapath)})")
    sizes = ImageSizes("PF-WILLOW", read=check_images)
    pairs = read_pair_csv(csv_path, lambda fh: _read_pairs(csv.reader(fh), csv_path, root, sizes))
    return Dataset("pfwillow", root, split, pairs, CLASSES, "bbox", csv_path)


def _columns(side: str) -> Callable[[int], str]:
    """Names keypoint row k of image ``side`` (``A``: source, ``B``: target) by its csv columns."""
    which = "source" if side == "A" else "target"
    return lambda k: f"{which} keypoint {k + 1} (columns X{side}{k + 1}, Y{side}{k + 1})"


def _read_pairs(reader: Any, csv_path: Path, root: Path, sizes: ImageSizes) -> list[Pair]:
    pairs: list[Pair] = []
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != COLUMNS:
        raise ScotError(f"{csv_path}: header must be imageA,imageB,XA1..XA10,YA1..YA10,XB1..XB10,YB1..YB10")
    for row in reader:
        if not any(c.strip() for c in row):
            continue
        where = f"{csv_path} line {reader.line_num}"
        if len(row) != len(COLUMNS):
            raise ScotError(f"{where}: expected {len(COLUMNS)} columns, got {len(row)} (truncated or malformed row)")
        values = [text_number(v, where, f"column {c}") for c, v in zip(COLUMNS[2:], row[2:])]
        src_kps = torch.tensor([values[0:10], values[10:20]], dtype=torch.float32).t()
        trg_kps = torch.tensor([values[20:30], values[30:40]], dtype=torch.float32).t()
        check_keypoint_counts(src_kps, trg_kps, where)
        parts_a, parts_b = Path(row[0].strip()).parts, Path(row[1].strip()).parts
        if len(parts_a) < 3 or len(parts_b) < 3:
            raise ScotError(f"{where}: image paths must look like PF-dataset/<class>/<name>.png")
        if ".." in parts_a or ".." in parts_b:
            raise ScotError(f"{where}: image paths must stay inside the dataset folder (no '..')")
        category = parts_a[1]
        if category not in CLASSES:
            raise ScotError(f"{where}: unknown PF-WILLOW class '{category}'")
        src, trg = root.joinpath(*parts_a[1:]), root.joinpath(*parts_b[1:])
        check_threshold_extent(trg_kps, where, "the target keypoints (columns XB1..YB10)")
        for image, kps, side in ((src, src_kps, "A"), (trg, trg_kps, "B")):
            size = sizes(image, where)
            if size is not None:
                check_points_inside(kps, size, image, where, _columns(side))
        pairs.append(Pair(
            index=len(pairs), pair_id=f"{Path(parts_a[-1]).stem}-{Path(parts_b[-1]).stem}:{category}",
            category=category,
            src=src, trg=trg, src_kps=src_kps, trg_kps=trg_kps,
            src_bbox=keypoint_box(src_kps), trg_bbox=keypoint_box(trg_kps),
        ))
    return pairs
