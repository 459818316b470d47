"""PF-PASCAL (Ham et al., TPAMI 2018) in the HPF/SCOT layout, or with NCNet pair lists.

* ``PF-PASCAL/{split}_pairs.csv`` (split ``test``, ``val`` or ``trn``): columns
  ``source_image,target_image,class`` (1-based index into the 20 VOC classes, in
  alphabetical order) and, for ``trn``, ``flip``.  Keypoints and boxes come from
  ``Annotations/<class>/<basename>.mat`` (``kps``: K x 2 with NaN rows where invisible,
  or K x 3 with a 0/1 visibility column; ``bbox``: x1, y1, x2, y2); only keypoints
  visible in both images are kept.  Anything else in ``kps`` (another shape, infinite
  values, half-NaN rows) is an error naming the file.  ``imsize`` (height, width), when
  present, must be the image's size; visible keypoints and the box must lie in the image
  (by the margin of :func:`~scot.datasets.base.outside_margin`), checked against the image
  file, or against ``imsize`` when the images are not checked.
* NCNet pair lists (``source_image,target_image,class,XA,YA,XB,YB`` with ``;``-separated
  finite coordinates) carry the keypoints themselves; boxes are read from the annotations
  when they are present.

Images live in ``PF-PASCAL/JPEGImages/<basename>``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ScotError
from .base import (
    Box,
    Dataset,
    DatasetMissingError,
    ImageSizes,
    Pair,
    Size,
    check_box_extent,
    check_box_inside,
    check_keypoint_counts,
    check_points_inside,
    checked_box,
    mirror_box,
    mirror_points,
    read_pair_csv,
    text_number,
)

CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
SPLITS = ("test", "val", "trn")


def _numeric(value: Any, where: str, name: str) -> np.ndarray:
    """A .mat variable as a float64 array, refusing cells, structs, strings and booleans."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise ScotError(f"{where}: '{name}' must hold numbers, not {arr.dtype} data")
    return arr.astype(np.float64)


def _keypoints(value: Any, where: str) -> torch.Tensor:
    """``kps`` as (K, 2) float32 with NaN rows for invisible keypoints.

    ``kps`` is K x 2 (x, y per row, a NaN row where the keypoint is invisible) or K x 3
    with a 0/1 visibility flag in the third column (rows flagged 0 become NaN rows).
    """
    arr = _numeric(value, where, "kps")
    if arr.size == 0:
        return torch.zeros(0, 2)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ScotError(f"{where}: 'kps' must be a K x 2 array (x, y per row), got shape {arr.shape}")
    if arr.shape[1] == 3:
        visible = arr[:, 2]
        if not np.isin(visible, (0.0, 1.0)).all():
            raise ScotError(f"{where}: 'kps' has shape {arr.shape} and its third column is not a 0/1 visibility "
                            f"flag; expected K x 2 (x, y per row)")
        arr = arr[:, :2].copy()
        hidden = visible == 0
        arr[hidden] = np.nan
        stray = ~hidden & np.isnan(arr).any(axis=1)
        if stray.any():
            k = int(np.flatnonzero(stray)[0])
            raise ScotError(f"{where}: 'kps' keypoint {k} is flagged visible but its coordinates are NaN")
    if np.isinf(arr).any():
        k = int(np.flatnonzero(np.isinf(arr).any(axis=1))[0])
        raise ScotError(f"{where}: 'kps' keypoint {k} has an infinite coordinate")
    nan = np.isnan(arr)
    partial = nan.any(axis=1) & ~nan.all(axis=1)
    if partial.any():
        k = int(np.flatnonzero(partial)[0])
        raise ScotError(f"{where}: 'kps' keypoint {k} is half NaN ({arr[k, 0]:g}, {arr[k, 1]:g}); "
                        f"an invisible keypoint is a whole NaN row")
    return torch.tensor(arr, dtype=torch.float32)


def _declared_size(value: Any, where: str) -> Size:
    """``imsize`` (height, width[, channels]) as (W, H)."""
    values = _numeric(value, where, "imsize").reshape(-1)
    if len(values) not in (2, 3) or not all(v >= 1 and float(v).is_integer() for v in values[:2]):
        raise ScotError(f"{where}: 'imsize' must be [height, width] in whole pixels, not {values.tolist()[:4]}")
    return int(values[1]), int(values[0])


def read_annotation(path: Path, image: Path | None = None, sizes: ImageSizes | None = None
                    ) -> tuple[torch.Tensor, Box | None]:
    """Read and validate one ``Annotations/<class>/<name>.mat``, naming the file in every error.

    Args:
        path: the .mat file.
        image: the image it annotates; with ``sizes``, its keypoints and box are checked
            to lie in it (and ``imsize`` to be its size).
        sizes: the sizes of the benchmark's images (see :class:`~scot.datasets.base.ImageSizes`).

    Returns:
        (kps, bbox): float32 (K, 2) keypoints with NaN rows where invisible, and the
        object box (x1, y1, x2, y2) or None when the file has no ``bbox``.
    """
    import scipy.io

    where = f"PF-PASCAL: annotation {path}"
    if not path.is_file():
        problem = "is not a regular file" if path.exists() else "is missing"
        raise ScotError(f"{where} {problem}")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:
        raise ScotError(f"{where} cannot be read as a MATLAB file ({type(exc).__name__}: {exc})") from None
    if "kps" not in mat:
        raise ScotError(f"{where} has no 'kps'")
    kps = _keypoints(mat["kps"], where)
    bbox = None
    if "bbox" in mat:
        values = _numeric(mat["bbox"], where, "bbox").reshape(-1)
        bbox = check_box_extent(checked_box(values.tolist(), where, "bbox"), where, "bbox")
    if image is not None and sizes is not None:
        declared = _declared_size(mat["imsize"], where) if "imsize" in mat else None
        size = sizes(image, where, declared, "imsize")
        if size is not None:
            check_points_inside(kps, size, image, where, lambda k: f"'kps' keypoint {k}")
            if bbox is not None:
                check_box_inside(bbox, size, image, where, "bbox")
    return kps, bbox


def _coords(text: str, where: str, name: str) -> list[float]:
    """A ``;``-separated coordinate list (a trailing ``;`` allowed) as finite floats."""
    items = [v.strip() for v in text.split(";")]
    if items and not items[-1]:
        items.pop()
    for i, item in enumerate(items):
        if not item:
            raise ScotError(f"{where}: column {name} has an empty value at position {i + 1}")
    return [text_number(item, where, f"column {name} value {i + 1}") for i, item in enumerate(items)]


def _flip(text: str | None, where: str) -> bool:
    value = (text or "0").strip()
    if value not in ("0", "1"):
        raise ScotError(f"{where}: flip must be 0 or 1, got '{value}'")
    return value == "1"


def _image_name(text: str, where: str, column: str) -> str:
    name = Path(text.strip()).name
    if not name:
        raise ScotError(f"{where}: {column} is empty")
    return name


def load_pfpascal(datapath: Path, split: str = "test", pair_list: Path | None = None,
                  check_images: bool = True) -> Dataset:
    """Load PF-PASCAL's ``split`` (or the pairs of ``pair_list``) from ``datapath/PF-PASCAL``.

    Args:
        datapath: the folder holding ``PF-PASCAL/``.
        split: ``test``, ``val`` or ``trn``.
        pair_list: a csv replacing ``{split}_pairs.csv`` (HPF columns or NCNet's with XA..YB).
        check_images: require every image to exist, and check the annotations against its size.
    """
    root = Path(datapath) / "PF-PASCAL"
    if split not in SPLITS:
        raise ScotError(f"PF-PASCAL splits are {', '.join(SPLITS)}, not '{split}'", option="split")
    csv_path = pair_list or root / f"{split}_pairs.csv"
    if not csv_path.is_file():
        raise DatasetMissingError(f"PF-PASCAL not found: expected {csv_path} (put the PF-PASCAL folder in "
                                  f"{Path(datapath)})")
    sizes = ImageSizes("PF-PASCAL", read=check_images)
    pairs = read_pair_csv(csv_path, lambda fh: _read_pairs(csv.DictReader(fh), csv_path, root, split, sizes))
    return Dataset("pfpascal", root, split, pairs, CLASSES, "img", csv_path)


def _read_pairs(reader: csv.DictReader, csv_path: Path, root: Path, split: str, sizes: ImageSizes) -> list[Pair]:
    pairs: list[Pair] = []
    fields = [f.strip() for f in (reader.fieldnames or [])]
    if fields[:3] != ["source_image", "target_image", "class"]:
        raise ScotError(f"{csv_path}: header must start with source_image,target_image,class")
    ncnet = all(c in fields for c in ("XA", "YA", "XB", "YB"))
    for row in reader:
        where = f"{csv_path} line {reader.line_num}"
        if None in row or any(row.get(f) is None for f in fields):
            raise ScotError(f"{where}: expected {len(fields)} columns (truncated or malformed row)")
        try:
            cls_id = int(row["class"])
        except ValueError:
            raise ScotError(f"{where}: class must be an integer 1..20, got '{row['class'].strip()}'") from None
        if not 1 <= cls_id <= len(CLASSES):
            raise ScotError(f"{where}: class {cls_id} is not in 1..20")
        category = CLASSES[cls_id - 1]
        src_name = _image_name(row["source_image"], where, "source_image")
        trg_name = _image_name(row["target_image"], where, "target_image")
        flip = _flip(row.get("flip"), where) if split == "trn" else False
        ann = root / "Annotations" / category
        src_mat, trg_mat = ann / f"{Path(src_name).stem}.mat", ann / f"{Path(trg_name).stem}.mat"
        src, trg = root / "JPEGImages" / src_name, root / "JPEGImages" / trg_name
        src_bbox = trg_bbox = None
        if ncnet:
            xa, ya = _coords(row["XA"], where, "XA"), _coords(row["YA"], where, "YA")
            xb, yb = _coords(row["XB"], where, "XB"), _coords(row["YB"], where, "YB")
            if len(xa) != len(ya):
                raise ScotError(f"{where}: XA has {len(xa)} values but YA has {len(ya)}")
            if len(xb) != len(yb):
                raise ScotError(f"{where}: XB has {len(xb)} values but YB has {len(yb)}")
            src_kps = torch.tensor([xa, ya], dtype=torch.float32).t().reshape(-1, 2)
            trg_kps = torch.tensor([xb, yb], dtype=torch.float32).t().reshape(-1, 2)
            if src_mat.is_file() and trg_mat.is_file():
                src_bbox, trg_bbox = read_annotation(src_mat, src, sizes)[1], read_annotation(trg_mat, trg, sizes)[1]
            for image, kps, side in ((src, src_kps, "A"), (trg, trg_kps, "B")):
                size = sizes(image, where)
                if size is not None:
                    check_points_inside(kps, size, image, where, _columns(side))
        else:
            src_kps, src_bbox = read_annotation(src_mat, src, sizes)
            trg_kps, trg_bbox = read_annotation(trg_mat, trg, sizes)
        check_keypoint_counts(src_kps, trg_kps, where)
        valid = ~(torch.isnan(src_kps).any(1) | torch.isnan(trg_kps).any(1))
        src_kps, trg_kps = src_kps[valid], trg_kps[valid]
        if len(src_kps) == 0:
            raise ScotError(f"{where}: no keypoint is visible in both images")
        pairs.append(Pair(
            index=len(pairs), pair_id=f"{Path(src_name).stem}-{Path(trg_name).stem}:{category}", category=category,
            src=src, trg=trg,
            src_kps=src_kps, trg_kps=trg_kps, src_bbox=src_bbox, trg_bbox=trg_bbox, flip=flip,
        ))
    return pairs


def _columns(side: str) -> Callable[[int], str]:
    """Names keypoint row k of an NCNet list's image ``side`` (``A``: source, ``B``: target) by its columns."""
    which = "source" if side == "A" else "target"
    return lambda k: f"{which} keypoint {k + 1} (columns X{side}, Y{side} value {k + 1})"


def flip_keypoints(kps: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror x as the reference does for flipped training pairs: x' = W - x.

    Kept for existing callers; :meth:`Pair.oriented` mirrors a whole pair.
    """
    return mirror_points(kps, width)


def flip_box(box: Box | None, width: int) -> Box | None:
    """Mirror a box (x1, y1, x2, y2) horizontally; kept for existing callers (see :meth:`Pair.oriented`)."""
    return mirror_box(box, width)
