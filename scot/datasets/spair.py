"""SPair-71k (Min et al., 2019) in its archive's layout.

``SPair-71k/Layout/large/{split}.txt`` lists pairs as ``000001-2008_002719-2008_004100:aeroplane``;
each has ``PairAnnotation/{split}/<line>.json`` with ``src_imname``, ``trg_imname``,
``src_kps``, ``trg_kps``, ``src_bndbox``, ``trg_bndbox``, ``category`` and the difficulty
flags ``viewpoint_variation``, ``scale_variation``, ``truncation``, ``occlusion``.  Images
live in ``JPEGImages/<category>/<imname>``.

A pair json lists only the keypoints visible in both images, so ``src_kps`` and
``trg_kps`` are equally long lists of ``[x, y]`` numbers without nulls (the per-image
``ImageAnnotation`` files are the ones with null for invisible keypoints); ``kps_ids``,
when present, names one keypoint per row.  Boxes are ``[x1, y1, x2, y2]`` with positive
size, flags are integers, and ``category`` matches the layout line.  ``src_imsize`` /
``trg_imsize`` (width, height, channels), when present, must be the image's size; the
keypoints and boxes must lie in their images (by the margin of
:func:`~scot.datasets.base.outside_margin`), checked against the image files, or against
the declared sizes when the images are not checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ScotError
from ..io import open_regular_file
from .base import (
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
    json_number,
    json_points,
)

CATEGORIES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dog", "horse",
              "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor"]
SPLITS = ("trn", "val", "test")
FLAGS = ("viewpoint_variation", "scale_variation", "truncation", "occlusion")
REQUIRED = ("src_imname", "trg_imname", "src_kps", "trg_kps", "src_bndbox", "trg_bndbox", "category") + FLAGS
MAX_ANNOTATION_BYTES = 16 * 1024 * 1024


def _box(value: Any, where: str, name: str) -> tuple[float, float, float, float]:
    if not isinstance(value, list):
        raise ScotError(f"{where}: '{name}' must be 4 numbers [x1, y1, x2, y2], not {json.dumps(value)[:40]}")
    box = checked_box([json_number(v, where, f"'{name}' value") for v in value], where, name)
    return check_box_extent(box, where, name)


def _flag(value: Any, where: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScotError(f"{where}: '{name}' must be an integer, not {json.dumps(value)[:40]}")
    return value


def _text(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ScotError(f"{where}: '{name}' must be a non-empty string, not {json.dumps(value)[:40]}")
    return value


def _declared_size(value: Any, where: str, name: str) -> Size | None:
    """``src_imsize`` / ``trg_imsize``, [width, height] or [width, height, channels], as (W, H); None when absent."""
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) not in (2, 3)
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer() or v < 1
                   for v in value)):
        raise ScotError(f"{where}: '{name}' must be [width, height] or [width, height, channels] in whole pixels, "
                        f"not {json.dumps(value)[:40]}")
    return int(value[0]), int(value[1])


def _image_name(value: Any, where: str, name: str) -> str:
    text = _text(value, where, name)
    if "/" in text or "\\" in text or text in (".", ".."):
        raise ScotError(f"{where}: '{name}' must be a file name, not the path '{text}'")
    return text


def read_pair_annotation(path: Path, category: str | None = None) -> dict:
    """Parse and validate one pair json, naming the file in every error.

    Args:
        path: ``PairAnnotation/<split>/<pair>.json``.
        category: the category the layout line names, which the file must repeat
            (None: not checked).

    Returns:
        dict with ``src_kps``, ``trg_kps`` (float32 (K, 2), K >= 1), ``src_bbox``,
        ``trg_bbox`` ((x1, y1, x2, y2) floats), ``category``, ``src_imname``,
        ``trg_imname`` (str), ``flags`` (name -> int) and ``src_imsize``, ``trg_imsize``
        (the declared (W, H), or None).
    """
    where = f"SPair-71k: annotation {path}"
    with open_regular_file(path, where, max_bytes=MAX_ANNOTATION_BYTES) as fh:
        raw = fh.read()
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ScotError(f"{where} is not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ScotError(f"{where} must hold a JSON object")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ScotError(f"{where} has no {', '.join(repr(m) for m in missing)}")
    out: dict[str, Any] = {
        "src_kps": json_points(data["src_kps"], where, "src_kps"),
        "trg_kps": json_points(data["trg_kps"], where, "trg_kps"),
        "src_bbox": _box(data["src_bndbox"], where, "src_bndbox"),
        "trg_bbox": _box(data["trg_bndbox"], where, "trg_bndbox"),
        "category": _text(data["category"], where, "category"),
        "src_imname": _image_name(data["src_imname"], where, "src_imname"),
        "trg_imname": _image_name(data["trg_imname"], where, "trg_imname"),
        "flags": {k: _flag(data[k], where, k) for k in FLAGS},
        "src_imsize": _declared_size(data.get("src_imsize"), where, "src_imsize"),
        "trg_imsize": _declared_size(data.get("trg_imsize"), where, "trg_imsize"),
    }
    check_keypoint_counts(out["src_kps"], out["trg_kps"], where)
    ids = data.get("kps_ids")
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(out["src_kps"])):
        count = len(ids) if isinstance(ids, list) else json.dumps(ids)[:40]
        raise ScotError(f"{where}: 'kps_ids' names {count} keypoints but 'src_kps' has {len(out['src_kps'])}")
    if category is not None and out["category"] != category:
        raise ScotError(f"{where}: 'category' is '{out['category']}' but the layout line says '{category}'")
    return out


def load_spair(datapath: Path, split: str = "test", pair_list: Path | None = None,
               check_images: bool = True) -> Dataset:
    """Load SPair-71k's ``split`` (or the pairs listed in ``pair_list``) from ``datapath/SPair-71k``.

    Args:
        datapath: the folder holding ``SPair-71k/``.
        split: ``trn``, ``val`` or ``test`` (also the ``PairAnnotation`` folder read).
        pair_list: a layout file replacing ``Layout/large/{split}.txt``.
        check_images: require every image to exist, and check the annotations against its size.
    """
    root = Path(datapath) / "SPair-71k"
    if split not in SPLITS:
        raise ScotError(f"SPair-71k splits are {', '.join(SPLITS)}, not '{split}'", option="split")
    layout = pair_list or root / "Layout" / "large" / f"{split}.txt"
    if not layout.is_file():
        raise DatasetMissingError(f"SPair-71k not found: expected {layout} (put the SPair-71k folder in "
                                  f"{Path(datapath)})")
    try:
        lines = layout.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise ScotError(f"{layout}: not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    pairs: list[Pair] = []
    sizes = ImageSizes("SPair-71k", read=check_images)
    for lineno, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        stem, _, line_category = name.partition(":")
        if not line_category or stem.count("-") < 2 or "/" in name or "\\" in name:
            raise ScotError(f"{layout} line {lineno}: expected 'NNNNNN-<src>-<trg>:<category>', got '{name}'")
        path = root / "PairAnnotation" / split / f"{name}.json"
        ann = read_pair_annotation(path, line_category)
        category = ann["category"]
        images = root / "JPEGImages" / category
        src, trg = images / ann["src_imname"], images / ann["trg_imname"]
        _check_in_images(ann, {"src": src, "trg": trg}, sizes, f"SPair-71k: annotation {path}")
        pairs.append(Pair(
            index=len(pairs), pair_id=name, category=category, src=src, trg=trg,
            src_kps=ann["src_kps"], trg_kps=ann["trg_kps"], src_bbox=ann["src_bbox"], trg_bbox=ann["trg_bbox"],
            flags=ann["flags"],
        ))
    if not pairs:
        raise ScotError(f"{layout}: no pairs")
    categories = sorted({p.category for p in pairs} | set(CATEGORIES))
    return Dataset("spair", root, split, pairs, categories, "bbox", layout)


def _keypoint_of(field: str) -> Callable[[int], str]:
    """Names row k of keypoint field ``field``."""
    return lambda k: f"'{field}' keypoint {k}"


def _check_in_images(ann: dict, images: dict[str, Path], sizes: ImageSizes, where: str) -> None:
    """Each side's keypoints and box lie in its image, whose declared size (if any) is its own.

    Args:
        ann: :func:`read_pair_annotation`'s dict.
        images: ``{"src": path, "trg": path}``.
        sizes: the benchmark's image sizes.
        where: the annotation file, starting every message.
    """
    for side, image in images.items():
        size = sizes(image, where, ann[f"{side}_imsize"], f"{side}_imsize")
        if size is not None:
            check_points_inside(ann[f"{side}_kps"], size, image, where, _keypoint_of(f"{side}_kps"))
            check_box_inside(ann[f"{side}_bbox"], size, image, where, f"{side}_bndbox")
