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

Parts with a side (a left and a right wing tip) are listed per category in
:data:`SIDED_PARTS`.  With ``kps_ids`` and the source's ``ImageAnnotation`` file, the
loader gives every pair :attr:`~scot.datasets.base.Pair.src_mirror_kps`: for each keypoint,
the source point whose mirror image looks like it (its partner's, when the source shows
the partner), which a kept mirror transfers instead (``sided_parts='swap'``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

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

SIDED_PARTS: dict[str, tuple[tuple[int, int], ...]] = {
    "aeroplane": ((4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19), (20, 21)),
    "bicycle": ((2, 3), (6, 7), (9, 10)),
    "bird": ((1, 2), (4, 5), (7, 8), (10, 11), (12, 13), (14, 15)),
    "boat": ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)),
    "bottle": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)),
    "bus": ((0, 1), (2, 3), (5, 6), (10, 20), (11, 21), (12, 22), (13, 23), (14, 24), (15, 25), (16, 17),
            (18, 19), (26, 27), (28, 29)),
    "car": ((0, 1), (2, 3), (6, 7), (10, 20), (11, 21), (12, 22), (13, 23), (14, 24), (15, 25), (16, 17),
            (18, 19), (26, 27), (28, 29)),
    "cat": ((0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12)),
    "chair": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13)),
    "cow": ((0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12), (15, 16), (17, 18), (19, 20)),
    "dog": ((0, 1), (2, 3), (4, 5), (9, 10), (11, 12)),
    "horse": ((0, 1), (2, 3), (4, 5), (6, 7), (10, 11), (12, 13), (16, 17), (18, 19)),
    "motorbike": ((0, 1), (2, 3)),
    "person": ((0, 1), (2, 3), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19)),
    "pottedplant": ((0, 2), (4, 5), (6, 8)),
    "sheep": ((0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12), (15, 16), (17, 18), (19, 20)),
    "train": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17)),
    "tvmonitor": ((0, 2), (4, 6), (3, 7), (8, 10), (12, 14), (11, 15)),
}
"""Per category, the SPair-71k keypoint ids (as in ``kps_ids`` and ``ImageAnnotation``) that
swap under a mirror: an object's left and right counterpart of one part (eyes, wing tips,
wheels of one side, a monitor's corners).  Ids not listed lie on the object's axis of
symmetry (a nose, a tail) or have no side.  From SPair-71k's keypoint definitions;
``tests/test_datasets.py`` checks them against annotated left- and right-facing images."""


_PARTNERS = {category: {**{a: b for a, b in pairs}, **{b: a for a, b in pairs}}
             for category, pairs in SIDED_PARTS.items()}


def mirror_partner(category: str) -> dict[int, int]:
    """Keypoint id -> the id it looks like in a mirror, for the sided parts of ``category``
    (:data:`SIDED_PARTS`; empty for a category it does not name).  Built once; do not modify."""
    return _PARTNERS.get(category, {})


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


def _json_object(path: Path, where: str) -> dict:
    """The JSON object an annotation file holds; ``where`` (naming the file) starts every error."""
    with open_regular_file(path, where, max_bytes=MAX_ANNOTATION_BYTES) as fh:
        raw = fh.read()
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ScotError(f"{where} is not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ScotError(f"{where} must hold a JSON object")
    return data


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
        (the declared (W, H), or None), ``kps_ids`` (int per row, or None when absent).
    """
    where = f"SPair-71k: annotation {path}"
    data = _json_object(path, where)
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
    out["kps_ids"] = None if ids is None else [_keypoint_id(v, where) for v in ids]
    if category is not None and out["category"] != category:
        raise ScotError(f"{where}: 'category' is '{out['category']}' but the layout line says '{category}'")
    return out


def _keypoint_id(value: Any, where: str) -> int:
    """One ``kps_ids`` entry (SPair writes them as strings, ``"13"``) as an int."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not text.isdigit():
        raise ScotError(f"{where}: 'kps_ids' entries must be keypoint numbers, not {json.dumps(value)[:40]}")
    return int(text)


def read_image_keypoints(path: Path) -> dict[int, tuple[float, float]]:
    """The keypoints an ``ImageAnnotation/<category>/<image>.json`` file shows (id -> x, y;
    invisible ones, null in the file, left out), naming the file in every error."""
    where = f"SPair-71k: image annotation {path}"
    kps = _json_object(path, where).get("kps")
    if not isinstance(kps, dict):
        raise ScotError(f"{where} must hold an object with 'kps' (keypoint id -> [x, y] or null)")
    out = {}
    for key, value in kps.items():
        if value is None:
            continue
        point = json_points([value], where, f"kps {key}")[0]
        out[_keypoint_id(key, where)] = (float(point[0]), float(point[1]))
    return out


def mirror_keypoints(src_kps: torch.Tensor, ids: list[int] | None, category: str,
                     shown: dict[int, tuple[float, float]]) -> torch.Tensor | None:
    """For each source keypoint, the point whose mirror image looks like it.

    Args:
        src_kps: (K, 2) the pair's source keypoints, row k being keypoint ``ids[k]``.
        ids: the SPair id of each row (``kps_ids``), or None.
        category: the pair's category (:data:`SIDED_PARTS`).
        shown: the keypoints the source image shows (:func:`read_image_keypoints`), beyond
            the pair's own rows.

    Returns:
        (K, 2): row k is the position of keypoint k's mirror partner where it has one and
        the source shows it (in the pair's rows or in ``shown``), else row k itself; None
        without ``ids`` or when the category has no sided parts.
    """
    partner = mirror_partner(category)
    if ids is None or not partner:
        return None
    known = dict(shown)
    known.update({k: (float(x), float(y)) for k, (x, y) in zip(ids, src_kps.tolist())})
    out = src_kps.clone()
    for row, k in enumerate(ids):
        p = partner.get(k)
        if p is not None and p in known:
            out[row] = torch.tensor(known[p], dtype=out.dtype)
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
    shown: dict[Path, dict[int, tuple[float, float]]] = {}  # per source image, read once
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
            flags=ann["flags"], src_mirror_kps=_mirror_keypoints(ann, root, category, shown),
        ))
    if not pairs:
        raise ScotError(f"{layout}: no pairs")
    categories = sorted({p.category for p in pairs} | set(CATEGORIES))
    return Dataset("spair", root, split, pairs, categories, "bbox", layout)


def _mirror_keypoints(ann: dict, root: Path, category: str,
                      shown: dict[Path, dict[int, tuple[float, float]]]) -> torch.Tensor | None:
    """:func:`mirror_keypoints` of one pair, reading its source's ``ImageAnnotation`` file
    (once per image; a missing one limits the partners to the pair's own rows)."""
    if ann["kps_ids"] is None or not mirror_partner(category):
        return None
    image = root / "ImageAnnotation" / category / (Path(ann["src_imname"]).stem + ".json")
    if image not in shown:
        shown[image] = read_image_keypoints(image) if image.exists() else {}
    return mirror_keypoints(ann["src_kps"], ann["kps_ids"], category, shown[image])


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
