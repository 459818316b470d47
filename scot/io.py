"""Reading user keypoint files and writing result files atomically."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ScotError


def read_keypoints(path: str | Path) -> np.ndarray:
    """Read (K, 2) keypoints from JSON or CSV.

    JSON: ``[[x, y], ...]``, ``{"keypoints": [[x, y], ...]}`` or ``[{"x": .., "y": ..}, ...]``.
    CSV: one ``x,y`` row per keypoint, with or without an ``x,y`` header.
    """
    p = Path(path)
    if not p.is_file():
        raise ScotError(f"--keypoints: {p} does not exist or is not a file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScotError(f"--keypoints: cannot read {p} ({exc})") from None
    if p.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScotError(f"--keypoints: {p} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict):
            if "keypoints" not in data:
                raise ScotError(f"--keypoints: {p} has no 'keypoints' field")
            data = data["keypoints"]
        if isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
            try:
                data = [[d["x"], d["y"]] for d in data]
            except KeyError:
                raise ScotError(f"--keypoints: {p}: every keypoint object needs 'x' and 'y'") from None
        rows = data
    else:
        rows = []
        reader = csv.reader(io.StringIO(text))
        for lineno, row in enumerate(reader, start=1):
            cells = [c.strip() for c in row if c.strip()]
            if not cells:
                continue
            if lineno == 1 and [c.lower() for c in cells[:2]] == ["x", "y"]:
                continue
            rows.append(cells)
    try:
        arr = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        raise ScotError(f"--keypoints: {p} must hold numeric x, y pairs") from None
    if arr.size == 0:
        raise ScotError(f"--keypoints: {p} holds no keypoints")
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ScotError(f"--keypoints: {p} must hold (K, 2) x, y pairs, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ScotError(f"--keypoints: {p} contains NaN or infinite values")
    return arr


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
