"""Your own annotated pairs: a JSON list or JSON Lines file, one object per pair.

::

    {"source": "a.jpg", "target": "b.jpg",
     "source_keypoints": [[x, y], ...], "target_keypoints": [[x, y], ...],
     "target_bbox": [x1, y1, x2, y2], "category": "bird"}

* ``source``, ``target``: image files; a relative path resolves from the pair file's folder.
* ``source_keypoints``, ``target_keypoints``: equally long lists, row k of one matching row
  k of the other, in original pixels of the image as displayed (EXIF orientation applied).
  A row is ``null`` in either list where the keypoint is not visible in both images; such
  rows are left out of the score (and counted, see :attr:`~.base.Pair.hidden_kps`).
* ``target_bbox`` (optional): the target object's box, the PCK threshold of ``bbox``.
* ``category`` (optional): the class of the per-class tables (``all`` when absent).

The file is a JSON list of such objects when its first character (after blanks) is ``[``,
otherwise JSON Lines (one object per line; blank lines are skipped).  Every value is
checked, and an impossible one is a one-line error naming the file, the pair (its
position, its line in JSON Lines, and its images) and the field: keypoints or a box
outside the image by more than :data:`~scot.datasets.base.OUTSIDE_MARGIN` of its longer side, a box of no extent
(longer side under one pixel), an unknown field (a misspelt ``target_bbox`` would
otherwise silently change the threshold).

The default PCK threshold is ``bbox`` when every pair has a ``target_bbox``, else ``img``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ScotError
from ..io import open_regular_file
from .base import Box, Dataset, Pair, check_box_extent, checked_box, json_number, outside_margin

REQUIRED = ("source", "target", "source_keypoints", "target_keypoints")
OPTIONAL = ("target_bbox", "category")
DEFAULT_CATEGORY = "all"
MAX_FILE_BYTES = 1 << 30


def load_custom(datapath: Path | None, split: str = "test", pair_list: Path | None = None,
                check_images: bool = True) -> Dataset:
    """Load the pairs of a custom pair file (the module docstring describes the format).

    Args:
        datapath: unused (images resolve from the pair file's folder).
        split: must be ``test`` (the default); the dataset's split is the pair file's name.
        pair_list: the JSON or JSON Lines file.
        check_images: require every image to be readable, and every keypoint and box to
            lie in its image (up to :data:`~scot.datasets.base.OUTSIDE_MARGIN`).

    Returns:
        :class:`Dataset` ``custom`` whose split is the file's name.
    """
    if pair_list is None:
        raise ScotError("the custom dataset needs its pair file (JSON or JSON Lines)", option="pair_list")
    if split != "test":
        raise ScotError(f"a custom pair file has no splits (got '{split}'); leave the split out", option="split")
    path = Path(pair_list)
    objects = _read_objects(path)
    sizes: dict[Path, tuple[int, int]] = {}

    def size_of(image: Path, where: str, name: str) -> tuple[int, int] | None:
        if not check_images:
            return None
        if image not in sizes:
            from ..image import image_size

            try:
                sizes[image] = image_size(image)
            except ScotError as exc:
                raise ScotError(f"{where}: '{name}' {exc.message}") from None
        return sizes[image]

    pairs: list[Pair] = []
    ids: set[str] = set()
    for n, (where, obj) in enumerate(objects):
        pair = _pair(obj, n, where, path.parent, size_of)
        pair.pair_id = _unique_id(pair, obj, ids)
        pairs.append(pair)
    if not pairs:
        raise ScotError(f"{path}: no pairs")
    categories = sorted({p.category for p in pairs})
    thres = "bbox" if all(p.trg_bbox is not None for p in pairs) else "img"
    return Dataset("custom", path.parent, path.name, pairs, categories, thres, path)


def _read_objects(path: Path) -> list[tuple[str, Any]]:
    """The file's pair objects, each with the place errors name it by (``FILE pair N`` / ``FILE line L``)."""
    with open_regular_file(path, f"pair file {path}", max_bytes=MAX_FILE_BYTES) as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ScotError(f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ScotError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(data, list):
            raise ScotError(f"{path} must hold a JSON list of pair objects")
        return [(f"{path} pair {n}", obj) for n, obj in enumerate(data)]
    objects: list[tuple[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            objects.append((f"{path} line {lineno} (pair {len(objects)})", json.loads(line)))
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ScotError(f"{path} line {lineno} is not valid JSON ({exc}); the file is read as JSON Lines, "
                            f"one pair object per line (or a JSON list starting with '[')") from None
    return objects


def _image(value: Any, where: str, name: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ScotError(f"{where}: '{name}' must be an image path, not {json.dumps(value)[:40]}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _inside(x: float, y: float, size: tuple[int, int] | None) -> bool:
    if size is None:
        return True
    w, h = size
    m = outside_margin(size)
    return -m <= x <= w + m and -m <= y <= h + m


def _keypoints(value: Any, where: str, name: str, size: tuple[int, int] | None) -> list[tuple[float, float] | None]:
    """A keypoint list: ``[x, y]`` rows in the image (up to the loaders' outside margin), ``null`` where not visible."""
    if not isinstance(value, list) or not value:
        raise ScotError(f"{where}: '{name}' must be a non-empty list of [x, y] rows (null where not visible), "
                        f"not {json.dumps(value)[:40]}")
    rows: list[tuple[float, float] | None] = []
    for k, item in enumerate(value):
        if item is None:
            rows.append(None)
            continue
        if not isinstance(item, list) or len(item) != 2:
            raise ScotError(f"{where}: '{name}' row {k} must be [x, y] or null, not {json.dumps(item)[:40]}")
        x, y = (json_number(v, where, f"'{name}' row {k}") for v in item)
        if not _inside(x, y, size):
            assert size is not None
            raise ScotError(f"{where}: '{name}' row {k} ({x:g}, {y:g}) lies outside the {size[0]}x{size[1]} image")
        rows.append((x, y))
    return rows


def _box(value: Any, where: str, size: tuple[int, int] | None) -> Box:
    name = "target_bbox"
    if not isinstance(value, list):
        raise ScotError(f"{where}: '{name}' must be 4 numbers [x1, y1, x2, y2], not {json.dumps(value)[:40]}")
    box = check_box_extent(checked_box([json_number(v, where, f"'{name}' value") for v in value], where, name),
                           where, name)
    x1, y1, x2, y2 = box
    if not (_inside(x1, y1, size) and _inside(x2, y2, size)):
        assert size is not None
        raise ScotError(f"{where}: '{name}' ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the "
                        f"{size[0]}x{size[1]} target image")
    return box


def _pair(obj: Any, index: int, where: str, base: Path,
          size_of: Callable[[Path, str, str], tuple[int, int] | None]) -> Pair:
    if not isinstance(obj, dict):
        raise ScotError(f"{where} must be a JSON object with {', '.join(REQUIRED)}, not {json.dumps(obj)[:40]}")
    unknown = [k for k in obj if k not in REQUIRED + OPTIONAL]
    if unknown:
        raise ScotError(f"{where}: unknown field '{unknown[0]}' (fields: {', '.join(REQUIRED + OPTIONAL)})")
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise ScotError(f"{where} has no {', '.join(repr(m) for m in missing)}")
    src, trg = _image(obj["source"], where, "source", base), _image(obj["target"], where, "target", base)
    where = f"{where} ({obj['source']} -> {obj['target']})"
    src_size, trg_size = size_of(src, where, "source"), size_of(trg, where, "target")
    src_rows = _keypoints(obj["source_keypoints"], where, "source_keypoints", src_size)
    trg_rows = _keypoints(obj["target_keypoints"], where, "target_keypoints", trg_size)
    if len(src_rows) != len(trg_rows):
        raise ScotError(f"{where}: 'source_keypoints' has {len(src_rows)} rows but 'target_keypoints' has "
                        f"{len(trg_rows)}; row k of one matches row k of the other (null where not visible)")
    both = [(s, t) for s, t in zip(src_rows, trg_rows) if s is not None and t is not None]
    if not both:
        raise ScotError(f"{where}: no keypoint is visible in both images (every row is null in one of the lists)")
    category = obj.get("category", DEFAULT_CATEGORY)
    if not isinstance(category, str) or not category.strip():
        raise ScotError(f"{where}: 'category' must be a non-empty string, not {json.dumps(category)[:40]}")
    bbox = _box(obj["target_bbox"], where, trg_size) if obj.get("target_bbox") is not None else None
    return Pair(
        index=index, pair_id="", category=category, src=src, trg=trg,
        src_kps=torch.tensor([s for s, _ in both], dtype=torch.float32),
        trg_kps=torch.tensor([t for _, t in both], dtype=torch.float32),
        trg_bbox=bbox, hidden_kps=len(src_rows) - len(both),
    )


def _unique_id(pair: Pair, obj: dict, taken: set[str]) -> str:
    """``<source stem>-<target stem>:<category>`` as the benchmarks name pairs; the paths as
    written when two pairs share those stems; then a ``#n`` suffix."""
    name = f"{pair.src.stem}-{pair.trg.stem}:{pair.category}"
    if name in taken:
        name = f"{obj['source']}-{obj['target']}:{pair.category}"
    base, n = name, 2
    while name in taken:
        name, n = f"{base}#{n}", n + 1
    taken.add(name)
    return name
