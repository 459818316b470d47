"""SPair-71k (Min et al., 2019) in its archive's layout.

``SPair-71k/Layout/large/{split}.txt`` lists pairs as ``000001-2008_002719-2008_004100:aeroplane``;
each has ``PairAnnotation/{split}/<line>.json`` with ``src_imname``, ``trg_imname``,
``src_kps``, ``trg_kps``, ``src_bndbox``, ``trg_bndbox``, ``category`` and the difficulty
flags ``viewpoint_variation``, ``scale_variation``, ``truncation``, ``occlusion``.  Images
live in ``JPEGImages/<category>/<imname>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ScotError
from .base import Dataset, DatasetMissingError, Pair, check_keypoint_counts, require_files

CATEGORIES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dog", "horse",
              "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor"]
SPLITS = ("trn", "val", "test")
FLAGS = ("viewpoint_variation", "scale_variation", "truncation", "occlusion")
REQUIRED = ("src_imname", "trg_imname", "src_kps", "trg_kps", "src_bndbox", "trg_bndbox", "category") + FLAGS


def _box(value, where: str, name: str) -> tuple[float, float, float, float]:
    try:
        box = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ScotError(f"{where}: '{name}' must be 4 numbers") from None
    if len(box) != 4:
        raise ScotError(f"{where}: '{name}' must be 4 numbers")
    return box  # type: ignore[return-value]


def _kps(value, where: str, name: str) -> torch.Tensor:
    try:
        t = torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError):
        raise ScotError(f"{where}: '{name}' must be a list of [x, y] pairs") from None
    if t.dim() != 2 or t.shape[1] != 2:
        raise ScotError(f"{where}: '{name}' must be a list of [x, y] pairs")
    return t


def read_pair_annotation(path: Path) -> dict:
    """Parse and validate one pair json, naming the file in every error."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ScotError(f"SPair-71k: annotation {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScotError(f"SPair-71k: annotation {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ScotError(f"SPair-71k: annotation {path} must hold a JSON object")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ScotError(f"SPair-71k: annotation {path} has no {', '.join(repr(m) for m in missing)}")
    where = f"SPair-71k: annotation {path}"
    out = {
        "src_kps": _kps(data["src_kps"], where, "src_kps"),
        "trg_kps": _kps(data["trg_kps"], where, "trg_kps"),
        "src_bbox": _box(data["src_bndbox"], where, "src_bndbox"),
        "trg_bbox": _box(data["trg_bndbox"], where, "trg_bndbox"),
        "category": str(data["category"]),
        "src_imname": str(data["src_imname"]),
        "trg_imname": str(data["trg_imname"]),
        "flags": {k: int(data[k]) for k in FLAGS},
    }
    check_keypoint_counts(out["src_kps"], out["trg_kps"], where)
    return out


def load_spair(datapath: Path, split: str = "test", pair_list: Path | None = None, check_images: bool = True) -> Dataset:
    root = Path(datapath) / "SPair-71k"
    if split not in SPLITS:
        raise ScotError(f"--split: SPair-71k splits are {', '.join(SPLITS)}, not '{split}'")
    layout = pair_list or root / "Layout" / "large" / f"{split}.txt"
    if not layout.is_file():
        raise DatasetMissingError(f"SPair-71k not found: expected {layout} (put the SPair-71k folder in {Path(datapath)})")
    pairs = []
    for lineno, line in enumerate(layout.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if ":" not in name or name.count("-") < 2:
            raise ScotError(f"{layout} line {lineno}: expected 'NNNNNN-<src>-<trg>:<category>', got '{name}'")
        ann = read_pair_annotation(root / "PairAnnotation" / split / f"{name}.json")
        category = ann["category"]
        pairs.append(Pair(
            index=len(pairs), pair_id=name, category=category,
            src=root / "JPEGImages" / category / ann["src_imname"], trg=root / "JPEGImages" / category / ann["trg_imname"],
            src_kps=ann["src_kps"], trg_kps=ann["trg_kps"], src_bbox=ann["src_bbox"], trg_bbox=ann["trg_bbox"],
            flags=ann["flags"],
        ))
    if not pairs:
        raise ScotError(f"{layout}: no pairs")
    if check_images:
        require_files(sorted({p.src for p in pairs} | {p.trg for p in pairs}), "SPair-71k")
    categories = sorted({p.category for p in pairs} | set(CATEGORIES))
    return Dataset("spair", root, split, pairs, categories, "bbox", layout)
