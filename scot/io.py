"""Reading user files safely.

:func:`open_regular_file` is the one way the library opens a file it did not write: it
accepts only regular files (a named pipe would block forever, a device can stream without
end) and names the file in a one-line :class:`~scot.errors.ScotError` otherwise.

:func:`read_json` parses a JSON file a person may have edited (strict, one-line errors),
:func:`read_keypoints` reads a user's (K, 2) keypoint file,
:func:`check_keypoint_bounds` tells which keypoint lies outside an image, so both kinds of
mistake are reported before any feature is extracted, and :func:`read_pair_list` reads the
rows of a pairs CSV.  Writing result files is :mod:`scot.writing`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import ScotError

MAX_KEYPOINTS_FILE_BYTES = 64 * 1024 * 1024
MAX_COORDINATE = float(2**24)  # beyond any image side, and the last integer float32 holds exactly

_NOT_REGULAR = (
    (stat.S_ISDIR, "is a directory, not a file"),
    (stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)


def _require_regular(mode: int, subject: str) -> None:
    """Raise unless ``mode`` (an ``st_mode``) is a regular file's."""
    for test, problem in _NOT_REGULAR:
        if test(mode):
            raise ScotError(f"{subject} {problem}")
    if not stat.S_ISREG(mode):
        raise ScotError(f"{subject} is not a regular file")


def open_regular_file(path: str | Path, subject: str, max_bytes: int | None = None) -> BinaryIO:
    """Open a non-empty regular file for binary reading.

    The file is opened without blocking, so a named pipe put where a file is expected is
    reported instead of waiting forever for a writer; its type is checked again on the
    open descriptor.

    Args:
        path: the file (str or Path); symbolic links are followed.
        subject: how errors name the file, e.g. ``"keypoints file a.json"``; every
            message is ``f"{subject} <what is wrong>"``.
        max_bytes: refuse files larger than this many bytes (None: no limit).

    Returns:
        The open binary file object (the caller closes it).
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        raise ScotError(f"{subject} does not exist") from None
    except ValueError:
        raise ScotError(f"{subject} is not a valid path") from None
    except OSError as exc:
        raise ScotError(f"{subject} cannot be read ({exc.strerror or exc})") from None
    _require_regular(st.st_mode, subject)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise ScotError(f"{subject} cannot be opened ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        _require_regular(st.st_mode, subject)
        if st.st_size == 0:
            raise ScotError(f"{subject} is empty")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ScotError(f"{subject} is {st.st_size} bytes, more than the {max_bytes}-byte limit")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _describe(value: Any) -> str:
    """A short JSON-like rendering of a bad value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = json.dumps(value) if isinstance(value, (str, list, dict)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def coordinate(value: Any, subject: str, what: str) -> float:
    """One coordinate as a finite float, or a one-line error.

    Args:
        value: a JSON number (int or float; booleans, strings and null are refused).
        subject: the file, as errors name it.
        what: the coordinate's place, e.g. ``"keypoint 3"``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScotError(f"{subject} must hold numeric x, y pairs: {what} has {_describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ScotError(f"{subject}: {what} has a non-finite coordinate ({_describe(value)})")
    if abs(number) > MAX_COORDINATE:
        raise ScotError(f"{subject}: {what} has coordinate {number:g}, beyond any image (|value| > "
                        f"{MAX_COORDINATE:.0f})")
    return number


def read_json(path: str | Path, subject: str, option: str | None = None) -> Any:
    """Parse a JSON file that a person may have edited, or a one-line error.

    Strict JSON: ``NaN``, ``Infinity`` and ``-Infinity`` are refused, and so is nesting
    deeper than the parser can follow (a ``RecursionError`` otherwise).  The file must
    be a non-empty regular file (:func:`open_regular_file`) of UTF-8 text.

    Args:
        path: the file.
        subject: how errors name it, e.g. the path itself.
        option: the parameter that named the file, for the error.

    Returns:
        The parsed value.
    """
    try:
        with open_regular_file(path, subject) as fh:
            raw = fh.read()
    except ScotError as exc:
        raise ScotError(exc.message, option=option) from None
    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ScotError(f"{subject} is not UTF-8 text (byte {exc.start} cannot be decoded)", option=option) from None
    except ValueError as exc:
        raise ScotError(f"{subject} is not valid JSON ({exc})", option=option) from None
    except RecursionError:
        raise ScotError(f"{subject} is not valid JSON (nested too deeply)", option=option) from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _json_point(item: Any, index: int, subject: str) -> tuple[float, float]:
    """One JSON keypoint, ``[x, y]`` or ``{"x": .., "y": ..}``, as two floats."""
    what = f"keypoint {index}"
    if isinstance(item, dict):
        if "x" not in item or "y" not in item:
            raise ScotError(f"{subject}: every keypoint object needs 'x' and 'y' "
                            f"({what} has {_describe(sorted(item))})")
        return coordinate(item["x"], subject, what), coordinate(item["y"], subject, what)
    if not isinstance(item, list):
        raise ScotError(f"{subject} must hold (K, 2) x, y pairs: {what} is {_describe(item)}, not [x, y]")
    if len(item) != 2:
        raise ScotError(f"{subject} must hold (K, 2) x, y pairs: {what} has {len(item)} values")
    return coordinate(item[0], subject, what), coordinate(item[1], subject, what)


def _json_keypoints(text: str, subject: str) -> list[tuple[float, float]]:
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScotError(f"{subject} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ScotError(f"{subject} is not valid JSON (nested too deeply)") from None
    if isinstance(data, dict):
        if "keypoints" not in data:
            raise ScotError(f"{subject} has no 'keypoints' field")
        data = data["keypoints"]
    if not isinstance(data, list):
        raise ScotError(f"{subject} must hold a list of [x, y] pairs, not {_describe(data)}")
    return [_json_point(item, i, subject) for i, item in enumerate(data)]


def _csv_keypoints(text: str, subject: str) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    reader = csv.reader(io.StringIO(text))
    first = True
    try:
        for row in reader:
            cells = [c.strip() for c in row]
            while cells and not cells[-1]:
                cells.pop()
            if not cells:
                continue
            line = reader.line_num
            if first and [c.lower() for c in cells] == ["x", "y"]:
                first = False
                continue
            first = False
            if len(cells) != 2:
                raise ScotError(f"{subject} must hold (K, 2) x, y pairs: line {line} has {len(cells)} values")
            values = []
            for cell in cells:
                try:
                    values.append(float(cell))
                except ValueError:
                    raise ScotError(f"{subject} must hold numeric x, y pairs: "
                                    f"line {line} has {_describe(cell)}") from None
            x, y = (coordinate(v, subject, f"line {line}") for v in values)
            points.append((x, y))
    except csv.Error as exc:
        raise ScotError(f"{subject} is not a readable CSV file (line {reader.line_num}: {exc})") from None
    return points


def read_keypoints(path: str | Path, bounds: tuple[int, int] | None = None) -> np.ndarray:
    """Read (K, 2) keypoints (x, y in pixels) from a JSON or CSV file.

    JSON: ``[[x, y], ...]``, ``{"keypoints": [[x, y], ...]}`` or ``[{"x": .., "y": ..}, ...]``.
    CSV: one ``x,y`` row per keypoint, with or without an ``x,y`` header.  A UTF-8 byte
    order mark is accepted.  Every coordinate must be a finite number of at most
    ``MAX_COORDINATE`` in magnitude; errors name the file and the keypoint (JSON, 0-based)
    or line (CSV).

    Args:
        path: the file (str or Path); ``.json`` files, and files starting with ``[`` or
            ``{``, are read as JSON, others as CSV.
        bounds: (W, H) of the source image; when given, every keypoint must lie in
            [0, W] x [0, H] (see :func:`check_keypoint_bounds`).

    Returns:
        float64 array (K, 2), K >= 1.
    """
    p = Path(path)
    subject = f"keypoints file {p}"
    with open_regular_file(p, subject, max_bytes=MAX_KEYPOINTS_FILE_BYTES) as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ScotError(f"{subject} is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    if p.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        points = _json_keypoints(text, subject)
    else:
        points = _csv_keypoints(text, subject)
    if not points:
        raise ScotError(f"{subject} holds no keypoints")
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if bounds is not None:
        check_keypoint_bounds(arr, bounds, subject)
    return arr


def check_keypoint_bounds(keypoints: Sequence[Sequence[float]] | np.ndarray, size: tuple[int, int],
                          subject: str = "keypoints") -> None:
    """Raise naming the first keypoint outside the image ``[0, W] x [0, H]``.

    The rule is the one :meth:`scot.SCOT.match` applies, so a file that passes here is
    not refused there.

    Args:
        keypoints: (K, 2) x, y in original image pixels (array or nested sequence).
        size: (W, H) of the image in pixels, e.g. :attr:`scot.image.LoadedImage.size` or
            :func:`scot.image.image_size`.
        subject: how the error names the keypoints, e.g. ``"keypoints file a.json"``.
    """
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in size)):
        raise ScotError(f"must be (width, height) in whole pixels, got {size!r}", option="bounds")
    w, h = int(size[0]), int(size[1])
    kps = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    outside = ~((kps[:, 0] >= 0) & (kps[:, 1] >= 0) & (kps[:, 0] <= w) & (kps[:, 1] <= h))
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        x, y = kps[k]
        raise ScotError(f"{subject}: keypoint {k} at ({x:g}, {y:g}) lies outside the {w}x{h} image")


@dataclass(frozen=True)
class PairRow:
    """One row of a pairs CSV: where it was, and the resolved paths."""

    line: int
    source: str
    target: str
    keypoints: str | None


def read_pair_list(path: str | Path) -> list[PairRow]:
    """Rows ``source,target[,keypoints]`` of a pairs CSV.

    Relative paths always resolve from the CSV's own folder, wherever the command runs,
    so a pair list means the same files from anywhere.  Blank lines and lines starting
    with ``#`` are skipped, as is a ``source,target`` header.  A row that names fewer than
    two files is an error naming its line.
    """
    p = Path(path)
    try:
        with open_regular_file(p, "pair list") as fh:
            text = fh.read().decode("utf-8-sig")
    except ScotError as exc:
        raise ScotError(exc.message, option="pairs") from None
    except UnicodeDecodeError:
        raise ScotError(f"{p} is not UTF-8 text", option="pairs") from None
    base = p.parent

    def resolve(item: str) -> str:
        q = Path(item).expanduser()
        return str(q if q.is_absolute() else base / q)

    rows = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if lineno == 1 and cells[0].lower() in ("source", "src", "source_image", "imagea"):
            continue
        if len(cells) < 2 or not cells[0] or not cells[1] or len(cells) > 3:
            raise ScotError(f"{p} line {lineno}: expected 'source,target[,keypoints]'", option="pairs")
        kp = resolve(cells[2]) if len(cells) > 2 and cells[2] else None
        rows.append(PairRow(lineno, resolve(cells[0]), resolve(cells[1]), kp))
    if not rows:
        raise ScotError(f"{p} lists no pairs", option="pairs")
    return rows
