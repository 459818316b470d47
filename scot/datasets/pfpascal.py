"""PF-PASCAL (Ham et al., TPAMI 2018) in the HPF/SCOT layout, or with NCNet pair lists.

* ``PF-PASCAL/{split}_pairs.csv`` (split ``test``, ``val`` or ``trn``): columns
  ``source_image,target_image,class`` (1-based index into the 20 VOC classes, in
  alphabetical order) and, for ``trn``, ``flip``.  Keypoints and boxes come from
  ``Annotations/<class>/<basename>.mat`` (``kps``: K x 2 with NaN rows where invisible,
  ``bbox``); only keypoints valid in both images are kept.
* NCNet pair lists (``source_image,target_image,class,XA,YA,XB,YB`` with ``;``-separated
  coordinates) carry the keypoints themselves; boxes are read from the annotations when
  they are present.

Images live in ``PF-PASCAL/JPEGImages/<basename>``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from ..errors import ScotError
from .base import Dataset, DatasetMissingError, Pair, check_keypoint_counts, require_files

CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
SPLITS = ("test", "val", "trn")


def _read_mat(path: Path) -> tuple[torch.Tensor, tuple[float, float, float, float] | None]:
    import scipy.io

    if not path.is_file():
        raise ScotError(f"PF-PASCAL: annotation {path} is missing")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:
        raise ScotError(f"PF-PASCAL: annotation {path} cannot be read ({type(exc).__name__})") from None
    if "kps" not in mat:
        raise ScotError(f"PF-PASCAL: annotation {path} has no 'kps'")
    kps = torch.tensor(mat["kps"], dtype=torch.float32).reshape(-1, 2)
    bbox = None
    if "bbox" in mat and mat["bbox"].size >= 4:
        bbox = tuple(float(v) for v in mat["bbox"].reshape(-1)[:4])
    return kps, bbox


def _coords(text: str, where: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(";") if v.strip()]
    except ValueError:
        raise ScotError(f"{where}: column {name} must hold ';'-separated numbers") from None


def load_pfpascal(datapath: Path, split: str = "test", pair_list: Path | None = None, check_images: bool = True) -> Dataset:
    root = Path(datapath) / "PF-PASCAL"
    if split not in SPLITS:
        raise ScotError(f"--split: PF-PASCAL splits are {', '.join(SPLITS)}, not '{split}'")
    csv_path = pair_list or root / f"{split}_pairs.csv"
    if not csv_path.is_file():
        raise DatasetMissingError(f"PF-PASCAL not found: expected {csv_path} (put the PF-PASCAL folder in {Path(datapath)})")
    pairs = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if fields[:3] != ["source_image", "target_image", "class"]:
            raise ScotError(f"{csv_path}: header must start with source_image,target_image,class")
        ncnet = all(c in fields for c in ("XA", "YA", "XB", "YB"))
        for lineno, row in enumerate(reader, start=2):
            where = f"{csv_path} line {lineno}"
            if None in row or any(row.get(f) is None for f in fields):
                raise ScotError(f"{where}: expected {len(fields)} columns (truncated or malformed row)")
            try:
                cls_id = int(row["class"])
            except ValueError:
                raise ScotError(f"{where}: class must be an integer 1..20") from None
            if not 1 <= cls_id <= len(CLASSES):
                raise ScotError(f"{where}: class {cls_id} is not in 1..20")
            category = CLASSES[cls_id - 1]
            src_name, trg_name = Path(row["source_image"]).name, Path(row["target_image"]).name
            flip = bool(int(row.get("flip") or 0)) if split == "trn" else False
            ann = root / "Annotations" / category
            src_bbox = trg_bbox = None
            if ncnet:
                xa, ya = _coords(row["XA"], where, "XA"), _coords(row["YA"], where, "YA")
                xb, yb = _coords(row["XB"], where, "XB"), _coords(row["YB"], where, "YB")
                if len(xa) != len(ya) or len(xb) != len(yb):
                    raise ScotError(f"{where}: X and Y coordinate lists differ in length")
                src_kps = torch.tensor([xa, ya], dtype=torch.float32).t()
                trg_kps = torch.tensor([xb, yb], dtype=torch.float32).t()
                if (ann / f"{Path(src_name).stem}.mat").is_file() and (ann / f"{Path(trg_name).stem}.mat").is_file():
                    src_bbox = _read_mat(ann / f"{Path(src_name).stem}.mat")[1]
                    trg_bbox = _read_mat(ann / f"{Path(trg_name).stem}.mat")[1]
            else:
                src_kps, src_bbox = _read_mat(ann / f"{Path(src_name).stem}.mat")
                trg_kps, trg_bbox = _read_mat(ann / f"{Path(trg_name).stem}.mat")
            check_keypoint_counts(src_kps, trg_kps, where)
            valid = ~(torch.isnan(src_kps).any(1) | torch.isnan(trg_kps).any(1))
            src_kps, trg_kps = src_kps[valid], trg_kps[valid]
            if len(src_kps) == 0:
                raise ScotError(f"{where}: no keypoint is visible in both images")
            pairs.append(Pair(
                index=len(pairs), pair_id=f"{Path(src_name).stem}-{Path(trg_name).stem}:{category}", category=category,
                src=root / "JPEGImages" / src_name, trg=root / "JPEGImages" / trg_name,
                src_kps=src_kps, trg_kps=trg_kps, src_bbox=src_bbox, trg_bbox=trg_bbox, flip=flip,
            ))
    if not pairs:
        raise ScotError(f"{csv_path}: no pairs")
    if check_images:
        require_files(sorted({p.src for p in pairs} | {p.trg for p in pairs}), "PF-PASCAL")
    return Dataset("pfpascal", root, split, pairs, CLASSES, "img", csv_path)


def flip_keypoints(kps: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror x as the reference does for flipped training pairs: x' = W - x."""
    out = kps.clone()
    out[:, 0] = width - out[:, 0]
    return out


def flip_box(box: tuple[float, float, float, float] | None, width: int) -> tuple[float, float, float, float] | None:
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return (width - x2, y1, width - x1, y2)


