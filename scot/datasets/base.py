"""What every benchmark loader produces: a list of annotated image pairs, and the checks it makes.

The loaders refuse an annotation that no real benchmark holds, with one line naming the
file and the field, rather than score it:

* a value that is not a finite number, or beyond any image (``|value| > 2**24``);
* a box without extent (x2 <= x1 or y2 <= y1), or whose longer side, a PCK threshold, is
  under :data:`MIN_THRESHOLD_PX`;
* a keypoint, or a box corner, outside its image by more than :func:`outside_margin`
  (:data:`OUTSIDE_MARGIN` of the image's longer side), the image's size read from its
  file, or where the images are not checked, from the size the annotation declares;
* a declared image size that is not the image file's (annotations of another resolution).

:class:`ImageSizes`, :func:`check_points_inside`, :func:`check_box_inside`,
:func:`check_box_extent` and :func:`check_threshold_extent` are the checks; a loader
supplies only the names of its fields.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ScotError
from ..image import image_size
from ..io import MAX_COORDINATE

OUTSIDE_MARGIN = 0.02
"""How far beyond its image an annotation may reach, as a fraction of the image's longer side
(6 px on a 300-px image): hand-placed points on an object's edge, not a misplaced value."""

MIN_THRESHOLD_PX = 1.0
"""The least extent, in pixels, of what a PCK threshold is measured on (a box's longer side)."""


class DatasetMissingError(ScotError):
    """The benchmark's files are not where they should be."""


Box = tuple[float, float, float, float]
Size = tuple[int, int]


def mirror_points(kps: torch.Tensor, width: int) -> torch.Tensor:
    """Keypoints as they lie in the horizontally mirrored image, as the reference mirrors them.

    Args:
        kps: (K, 2) x, y in pixels of an image ``width`` pixels wide.
        width: the image's width W in pixels.

    Returns:
        (K, 2) copy with x replaced by ``W - x`` (y unchanged).
    """
    out = kps.clone()
    out[:, 0] = width - out[:, 0]
    return out


def mirror_box(box: Box | None, width: int) -> Box | None:
    """A box (x1, y1, x2, y2) as it lies in the horizontally mirrored image (None stays None).

    Args:
        box: (x1, y1, x2, y2) in pixels, or None.
        width: the image's width W in pixels.

    Returns:
        (W - x2, y1, W - x1, y2), still with x1 < x2, or None.
    """
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return (width - x2, y1, width - x1, y2)


@dataclass
class Pair:
    """One annotated pair; keypoints (K, 2) and boxes (x1, y1, x2, y2) in original image pixels.

    Attributes:
        index: position in the dataset's pair list.
        pair_id: the benchmark's name for the pair.
        category: the object class.
        src, trg: image files.
        src_kps, trg_kps: float32 (K, 2) x, y, row k of one matching row k of the other.
        src_bbox, trg_bbox: object boxes, or None where the benchmark has none.
        flags: SPair-71k difficulty flags (name -> int).
        flip: both images are used mirrored horizontally (PF-PASCAL training pairs); the
            annotations above are those of the stored images, see :meth:`oriented`.
        hidden_kps: keypoints the pair's annotation lists but that are not visible in both
            images, so not in ``src_kps``/``trg_kps`` and not scored (counted where a loader knows).
        src_mirror_kps: float32 (K, 2) or None: for each source keypoint, the source point
            whose mirror image looks like it: its symmetric partner's (a right wing tip for a
            left one) where the benchmark names one and the source shows it, else its own.
            A kept mirror (``flip='auto'``) transfers these with ``sided_parts='swap'``.
            None where the benchmark names no sided parts.
    """

    index: int
    pair_id: str
    category: str
    src: Path
    trg: Path
    src_kps: torch.Tensor
    trg_kps: torch.Tensor
    src_bbox: Box | None = None
    trg_bbox: Box | None = None
    flags: dict[str, int] = field(default_factory=dict)
    flip: bool = False
    hidden_kps: int = 0
    src_mirror_kps: torch.Tensor | None = None

    @property
    def src_key(self) -> tuple[str, bool]:
        return str(self.src), self.flip

    @property
    def trg_key(self) -> tuple[str, bool]:
        return str(self.trg), self.flip

    @property
    def src_mirror_key(self) -> tuple[str, bool]:
        """The key of the source as mirrored relative to :attr:`src_key` (``flip='auto'`` matches it too)."""
        return str(self.src), not self.flip

    def oriented(self, src_width: int, trg_width: int) -> tuple[torch.Tensor, torch.Tensor, Box | None]:
        """The annotations as they lie in the images the pair is matched on.

        For a pair with ``flip`` both images are mirrored horizontally, so are their
        keypoints and the target box (x' = W - x, as the reference does); otherwise the
        stored annotations are returned unchanged.

        Args:
            src_width: width W of the source image in original pixels.
            trg_width: width W of the target image in original pixels.

        Returns:
            (src_kps (K, 2), trg_kps (K, 2), trg_bbox (x1, y1, x2, y2) or None).
        """
        if not self.flip:
            return self.src_kps, self.trg_kps, self.trg_bbox
        return (mirror_points(self.src_kps, src_width), mirror_points(self.trg_kps, trg_width),
                mirror_box(self.trg_bbox, trg_width))

    def oriented_mirror_kps(self, src_width: int) -> torch.Tensor | None:
        """:attr:`src_mirror_kps` as they lie in the source the pair is matched on (see
        :meth:`oriented`), or None."""
        if self.src_mirror_kps is None or not self.flip:
            return self.src_mirror_kps
        return mirror_points(self.src_mirror_kps, src_width)


@dataclass
class Dataset:
    name: str
    root: Path
    split: str
    pairs: list[Pair]
    categories: list[str]
    default_thres: str  # "img" or "bbox"
    source_file: Path | None = None
    listed: int | None = None  # pairs in the pair file, before :meth:`select` (None: ``len(pairs)``)

    def __len__(self) -> int:
        return len(self.pairs)

    def select(self, category: str | None = None, limit: int | None = None, sample: int | None = None,
               option: str = "limit") -> Dataset:
        """A subset: only ``category`` (if given), then ``sample`` pairs spread evenly over
        the list (so every class is represented), then the first ``limit`` pairs (errors
        about the limit name ``option``)."""
        pairs = self.pairs
        if category is not None:
            if category not in self.categories:
                raise ScotError(f"'{category}' is not a {self.name} category (one of {', '.join(self.categories)})",
                                option="category")
            pairs = [p for p in pairs if p.category == category]
            if not pairs:
                present = sorted({p.category for p in self.pairs})
                raise ScotError(f"'{category}': no {self.name} pair of that category in "
                                f"{self.source_file or self.root} "
                                f"(its pairs are of: {', '.join(present)})", option="category")
        if sample is not None:
            if sample < 1:
                raise ScotError(f"must be at least 1, got {sample}", option="sample")
            if sample < len(pairs):
                pairs = [pairs[(i * len(pairs)) // sample] for i in range(sample)]
        if limit is not None:
            if limit < 1:
                raise ScotError(f"must be at least 1, got {limit}", option=option)
            pairs = pairs[:limit]
        return dataclasses.replace(self, pairs=pairs, listed=self.pairs_listed)

    @property
    def pairs_listed(self) -> int:
        """How many pairs the dataset's pair file lists (the subset's pairs are among them)."""
        return len(self.pairs) if self.listed is None else self.listed

    def image_keys(self) -> list[tuple[str, bool]]:
        seen: dict[tuple[str, bool], None] = {}
        for p in self.pairs:
            seen.setdefault(p.src_key)
            seen.setdefault(p.trg_key)
        return list(seen)


def read_pair_csv(csv_path: Path, read_rows: Callable[[Any], list[Pair]]) -> list[Pair]:
    """The pairs ``read_rows(file)`` reads from a benchmark's csv pair list, with one-line
    errors for an undecodable or unreadable file and for a list without pairs."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            pairs = read_rows(fh)
    except UnicodeDecodeError as exc:
        raise ScotError(f"{csv_path}: not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    except csv.Error as exc:
        raise ScotError(f"{csv_path}: not a readable csv file ({exc})") from None
    if not pairs:
        raise ScotError(f"{csv_path}: no pairs")
    return pairs


def require_files(paths: list[Path], what: str) -> None:
    """Fail naming the first image that is missing or not a regular file.

    Args:
        paths: the image files.
        what: the benchmark's name, e.g. ``"PF-WILLOW"``, that starts every message.
    """
    for p in paths:
        if not p.is_file():
            problem = "is not a regular file" if p.exists() else "is missing"
            raise ScotError(f"{what}: image {p} {problem}")


def check_keypoint_counts(src: torch.Tensor, trg: torch.Tensor, where: str) -> None:
    """Fail unless both keypoint arrays have the same (K, 2) shape with K >= 1.

    Args:
        src, trg: (K, 2) keypoint tensors of the two images.
        where: the file (and line) the pair comes from, starting every message.
    """
    if src.shape != trg.shape:
        raise ScotError(f"{where}: {len(src)} source keypoints but {len(trg)} target keypoints")
    if src.numel() == 0:
        raise ScotError(f"{where}: the pair has no keypoints")


def _in_range(number: float, where: str, what: str, shown: str) -> float:
    if not math.isfinite(number):
        raise ScotError(f"{where}: {what} is {shown}, not a finite number")
    if abs(number) > MAX_COORDINATE:
        raise ScotError(f"{where}: {what} is {number:g}, beyond any image (|value| > {MAX_COORDINATE:.0f})")
    return number


def text_number(text: str, where: str, what: str) -> float:
    """A coordinate written as text (a csv cell) as a finite float.

    Args:
        text: the cell, surrounding blanks allowed.
        where: the file and line, starting every message.
        what: the cell's name, e.g. ``"column XA3"``.
    """
    try:
        number = float(text)
    except ValueError:
        raise ScotError(f"{where}: {what} is '{text.strip()}', not a number") from None
    return _in_range(number, where, what, f"'{text.strip()}'")


def json_number(value: Any, where: str, what: str) -> float:
    """A coordinate read from JSON (an int or float; not a bool, string or null) as a finite float.

    Args:
        value: the parsed JSON value.
        where: the file, starting every message.
        what: the value's place, e.g. ``"'src_kps' keypoint 2"``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScotError(f"{where}: {what} is {json.dumps(value)[:40]}, not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    return _in_range(number, where, what, repr(value))


def json_points(value: Any, where: str, name: str) -> torch.Tensor:
    """A JSON list of ``[x, y]`` number pairs as a float32 (K, 2) tensor.

    Args:
        value: the parsed JSON value of field ``name``.
        where: the file, starting every message.
        name: the field, e.g. ``"src_kps"``.
    """
    if not isinstance(value, list):
        raise ScotError(f"{where}: '{name}' must be a list of [x, y] pairs, not {json.dumps(value)[:40]}")
    rows = []
    for k, item in enumerate(value):
        if item is None:
            raise ScotError(f"{where}: '{name}' keypoint {k} is null "
                            f"(a pair lists only keypoints visible in both images)")
        if not isinstance(item, list) or len(item) != 2:
            raise ScotError(f"{where}: '{name}' keypoint {k} must be [x, y], not {json.dumps(item)[:40]}")
        rows.append([json_number(v, where, f"'{name}' keypoint {k}") for v in item])
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 2)


def checked_box(values: Sequence[float], where: str, name: str) -> Box:
    """Four finite numbers (x1, y1, x2, y2) with x2 > x1 and y2 > y1 as a box.

    Args:
        values: the numbers, already finite floats (see :func:`json_number`).
        where: the file, starting every message.
        name: the field, e.g. ``"bbox"``.
    """
    if len(values) != 4:
        raise ScotError(f"{where}: '{name}' must be 4 numbers (x1, y1, x2, y2), got {len(values)}")
    x1, y1, x2, y2 = (float(v) for v in values)
    for v in (x1, y1, x2, y2):
        _in_range(v, where, f"'{name}' value", repr(v))
    if not (x2 > x1 and y2 > y1):
        raise ScotError(f"{where}: '{name}' ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is empty or reversed; "
                        f"need x2 > x1 and y2 > y1")
    return (x1, y1, x2, y2)


def check_box_extent(box: Box, where: str, name: str) -> Box:
    """Fail when a box's longer side, a PCK threshold, is under :data:`MIN_THRESHOLD_PX`; return the box.

    Args:
        box: (x1, y1, x2, y2) from :func:`checked_box`.
        where: the annotation file, starting the message.
        name: the box's field, e.g. ``"trg_bndbox"``.
    """
    x1, y1, x2, y2 = box
    if max(x2 - x1, y2 - y1) < MIN_THRESHOLD_PX:
        raise ScotError(f"{where}: '{name}' ({x1:g}, {y1:g}, {x2:g}, {y2:g}) spans {x2 - x1:g}x{y2 - y1:g} px; "
                        f"its longer side is a PCK threshold and must be at least {MIN_THRESHOLD_PX:g} px")
    return box


def outside_margin(size: Size) -> float:
    """How far (in pixels) an annotation may reach beyond an image of ``size`` = (W, H)."""
    return OUTSIDE_MARGIN * max(size)


def check_points_inside(kps: torch.Tensor, size: Size, image: Path | str, where: str,
                        describe: Callable[[int], str]) -> None:
    """Fail naming the first keypoint outside ``[0, W] x [0, H]`` by more than :func:`outside_margin`.

    Args:
        kps: (K, 2) x, y in the image's pixels; NaN rows (invisible keypoints) are skipped.
        size: (W, H) of the image.
        image: the image file, for the message.
        where: the annotation file (and line), starting the message.
        describe: ``describe(k)`` names row k's field, e.g. ``"'trg_kps' keypoint 2"``.
    """
    w, h = size
    margin = outside_margin(size)
    x, y = kps[:, 0].double(), kps[:, 1].double()
    outside = (x < -margin) | (y < -margin) | (x > w + margin) | (y > h + margin)  # NaN rows compare False
    if bool(outside.any()):
        k = int(torch.nonzero(outside)[0, 0])
        raise ScotError(f"{where}: {describe(k)} at ({float(x[k]):g}, {float(y[k]):g}) lies outside the {w}x{h} image "
                        f"{image} by more than {margin:.3g} px")


def check_box_inside(box: Box, size: Size, image: Path | str, where: str, name: str) -> None:
    """Fail when box (x1, y1, x2, y2) reaches outside ``[0, W] x [0, H]`` by more than :func:`outside_margin`.

    Args:
        box: the box in the image's pixels.
        size: (W, H) of the image.
        image: the image file, for the message.
        where: the annotation file (and line), starting the message.
        name: the box's field, e.g. ``"trg_bndbox"``.
    """
    w, h = size
    x1, y1, x2, y2 = box
    reach = max(-x1, -y1, x2 - w, y2 - h)
    margin = outside_margin(size)
    if reach > margin:
        raise ScotError(f"{where}: '{name}' ({x1:g}, {y1:g}, {x2:g}, {y2:g}) reaches outside the {w}x{h} image {image} "
                        f"by {reach:g} px (at most {margin:.3g} px allowed)")


def check_threshold_extent(kps: torch.Tensor, where: str, what: str) -> None:
    """Fail when keypoints whose box is a PCK threshold span less than :data:`MIN_THRESHOLD_PX`.

    Args:
        kps: (K, 2) finite keypoints.
        where: the annotation file (and line), starting the message.
        what: names the keypoints, e.g. ``"the target keypoints (columns XB1..YB10)"``.
    """
    span = kps.max(0).values - kps.min(0).values
    width, height = float(span[0]), float(span[1])
    if max(width, height) < MIN_THRESHOLD_PX:
        raise ScotError(f"{where}: {what} span {width:g}x{height:g} px; the PCK threshold, the longer side of "
                        f"their box, must be at least {MIN_THRESHOLD_PX:g} px")


class ImageSizes:
    """The (W, H) each image's annotations are checked against, each file read once.

    Args:
        what: the benchmark's name, e.g. ``"PF-PASCAL"``, starting the message about a missing image.
        read: read the sizes from the image files (header only where the format allows,
            as :func:`scot.image.image_size`); without, only sizes the annotations declare are known.
    """

    def __init__(self, what: str, read: bool) -> None:
        self.what = what
        self.read = read
        self._sizes: dict[Path, Size] = {}

    def __call__(self, image: Path, where: str, declared: Size | None = None, field: str = "") -> Size | None:
        """The size to check ``image``'s annotations against, or None when it is not known.

        Args:
            image: the image file.
            where: the annotation file declaring ``declared``, for the message.
            declared: (W, H) the annotation says the image has, or None.
            field: the field that says so, e.g. ``"trg_imsize"``.

        Returns:
            The file's (W, H) when images are read (a declared size must equal it),
            else ``declared``.
        """
        if not self.read:
            return declared
        if image not in self._sizes:
            require_files([image], self.what)
            self._sizes[image] = image_size(image)
        actual = self._sizes[image]
        if declared is not None and tuple(declared) != actual:
            raise ScotError(f"{where}: '{field}' says {declared[0]}x{declared[1]} px (width x height) but the image "
                            f"{image} is {actual[0]}x{actual[1]} px")
        return actual
