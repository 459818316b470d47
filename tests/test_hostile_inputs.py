"""Malformed annotations, images and keypoint files: each is either read correctly or
refused with one line that names the file (or argument) and what is wrong.

Annotations are written in the real formats, starting from the real shared files (the
NCNet PF-PASCAL list, the PF-WILLOW csv, the SPair-71k pair json) with one field broken.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import pytest
import scipy.io
from PIL import Image

from conftest import raises_one_line
from scot.datasets import load_dataset
from scot.image import image_size, load_image
from scot.io import check_keypoint_bounds, read_keypoints


@pytest.fixture
def no_hang():
    """Fail instead of hanging if a call blocks (e.g. opening a named pipe) for 10 s."""

    def alarm(signum, frame):
        raise TimeoutError("blocked for 10 s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------
# PF-PASCAL: Annotations/<class>/<name>.mat, built from the first real NCNet test pair


def _first_ncnet_pair(pfpascal_lists: Path) -> tuple[list[str], list[str]]:
    lines = (pfpascal_lists / "test_pairs_ncnet.csv").read_text().splitlines()
    return lines[0].split(","), lines[1].split(",")


def _pascal_keypoints(pfpascal_lists: Path) -> tuple[str, str, np.ndarray, np.ndarray]:
    _, row = _first_ncnet_pair(pfpascal_lists)
    src, trg = Path(row[0]).stem, Path(row[1]).stem
    xy = [[float(v) for v in cell.split(";")] for cell in row[3:7]]
    return src, trg, np.array(xy[0:2]).T, np.array(xy[2:4]).T


def _with(kps: np.ndarray, row: int, col: int, value: float) -> np.ndarray:
    out = kps.copy()
    out[row, col] = value
    return out


def _visibility(kps: np.ndarray, flags: list[float]) -> np.ndarray:
    return np.hstack([kps, np.array(flags)[:, None]])


BBOX = np.array([[10.0, 20.0, 300.0, 250.0]])

# (case, content of the source .mat: a savemat dict, or raw bytes; expected error regex)
MAT_CASES: list[tuple[str, Callable[[np.ndarray], Any], str]] = [
    ("third-column-not-visibility", lambda k: {"kps": np.hstack([k, np.full((len(k), 1), 3.5)]), "bbox": BBOX},
     r"'kps' has shape \(11, 3\) and its third column is not a 0/1 visibility flag"),
    ("transposed-2xK", lambda k: {"kps": k.T, "bbox": BBOX}, r"'kps' must be a K x 2 array \(x, y per row\), got shape \(2, 11\)"),
    ("infinite", lambda k: {"kps": _with(k, 3, 0, np.inf), "bbox": BBOX}, r"'kps' keypoint 3 has an infinite coordinate"),
    ("half-nan-row", lambda k: {"kps": _with(k, 2, 1, np.nan), "bbox": BBOX}, r"'kps' keypoint 2 is half NaN"),
    ("visible-flag-on-nan", lambda k: {"kps": _visibility(_with(_with(k, 5, 0, np.nan), 5, 1, np.nan), [1.0] * 11), "bbox": BBOX},
     r"'kps' keypoint 5 is flagged visible but its coordinates are NaN"),
    ("kps-is-text", lambda k: {"kps": "none", "bbox": BBOX}, r"'kps' must hold numbers"),
    ("kps-is-cell", lambda k: {"kps": np.array([[1.0, "a"]], dtype=object), "bbox": BBOX}, r"'kps' must hold numbers"),
    ("no-kps", lambda k: {"bbox": BBOX}, r"has no 'kps'"),
    ("bbox-reversed", lambda k: {"kps": k, "bbox": np.array([[300.0, 20.0, 10.0, 250.0]])},
     r"'bbox' \(300, 20, 10, 250\) is empty or reversed"),
    ("bbox-three-numbers", lambda k: {"kps": k, "bbox": np.array([[1.0, 2.0, 3.0]])}, r"'bbox' must be 4 numbers .* got 3"),
    ("bbox-nan", lambda k: {"kps": k, "bbox": np.array([[1.0, np.nan, 3.0, 4.0]])}, r"'bbox' value is nan, not a finite number"),
    ("not-a-mat-file", lambda k: b"MATLAB 5.0 MAT-file, but then nothing sensible" * 3, r"cannot be read as a MATLAB file"),
    ("all-invisible", lambda k: {"kps": np.full_like(k, np.nan), "bbox": BBOX}, r"line 2: no keypoint is visible in both images"),
    ("fewer-keypoints", lambda k: {"kps": k[:10], "bbox": BBOX}, r"line 2: 10 source keypoints but 11 target keypoints"),
]


def _write_pascal(root: Path, src: str, trg: str, src_content: Any, trg_kps: np.ndarray, flip: str | None = None) -> None:
    ann = root / "PF-PASCAL" / "Annotations" / "aeroplane"
    ann.mkdir(parents=True, exist_ok=True)
    if isinstance(src_content, bytes):
        (ann / f"{src}.mat").write_bytes(src_content)
    else:
        scipy.io.savemat(ann / f"{src}.mat", src_content)
    scipy.io.savemat(ann / f"{trg}.mat", {"kps": trg_kps, "bbox": BBOX})
    header = "source_image,target_image,class" + (",flip" if flip is not None else "")
    row = f"PF-dataset-PASCAL/JPEGImages/{src}.jpg,PF-dataset-PASCAL/JPEGImages/{trg}.jpg,1" + (f",{flip}" if flip is not None else "")
    name = "trn_pairs.csv" if flip is not None else "test_pairs.csv"
    (root / "PF-PASCAL" / name).write_text(f"{header}\n{row}\n")


@pytest.mark.parametrize("case, content, expected", MAT_CASES, ids=[c[0] for c in MAT_CASES])
def test_pfpascal_bad_mat(pfpascal_lists, tmp_path, case, content, expected):
    src, trg, src_kps, trg_kps = _pascal_keypoints(pfpascal_lists)
    _write_pascal(tmp_path, src, trg, content(src_kps), trg_kps)
    named = r"test_pairs\.csv" if expected.startswith("line") else re.escape(f"{src}.mat")
    raises_one_line(lambda: load_dataset("pfpascal", tmp_path, check_images=False), named, expected)


def test_pfpascal_visibility_column_drops_hidden_keypoints(pfpascal_lists, tmp_path):
    src, trg, src_kps, trg_kps = _pascal_keypoints(pfpascal_lists)
    flags = [0.0, 1.0, 1.0, 0.0] + [1.0] * 7
    hidden = np.where(np.array(flags)[:, None] == 1.0, src_kps, -1.0)  # hidden rows hold junk
    _write_pascal(tmp_path, src, trg, {"kps": _visibility(hidden, flags), "bbox": BBOX}, trg_kps)
    pair = load_dataset("pfpascal", tmp_path, check_images=False).pairs[0]
    keep = np.array(flags) == 1.0
    np.testing.assert_allclose(pair.src_kps.numpy(), src_kps[keep], rtol=1e-6)
    np.testing.assert_allclose(pair.trg_kps.numpy(), trg_kps[keep], rtol=1e-6)
    assert pair.src_bbox == (10.0, 20.0, 300.0, 250.0)


def test_pfpascal_flip_must_be_zero_or_one(pfpascal_lists, tmp_path):
    src, trg, src_kps, trg_kps = _pascal_keypoints(pfpascal_lists)
    _write_pascal(tmp_path, src, trg, {"kps": src_kps, "bbox": BBOX}, trg_kps, flip="yes")
    raises_one_line(lambda: load_dataset("pfpascal", tmp_path, split="trn", check_images=False),
                    r"trn_pairs\.csv line 2: flip must be 0 or 1, got 'yes'")
    _write_pascal(tmp_path, src, trg, {"kps": src_kps, "bbox": BBOX}, trg_kps, flip="1")
    assert load_dataset("pfpascal", tmp_path, split="trn", check_images=False).pairs[0].flip is True


# --------------------------------------------------------------------------------------
# PF-PASCAL NCNet pair lists: source_image,target_image,class,XA,YA,XB,YB


def _set_value(cell: str, index: int, value: str) -> str:
    values = cell.split(";")
    values[index] = value
    return ";".join(values)


NCNET_CASES: list[tuple[str, Callable[[list[str]], list[str]], str]] = [
    ("nan", lambda r: r[:3] + [_set_value(r[3], 2, "nan")] + r[4:], r"line 2: column XA value 3 is 'nan', not a finite number"),
    ("inf", lambda r: r[:6] + [_set_value(r[6], -1, "inf")], r"line 2: column YB value 11 is 'inf', not a finite number"),
    ("overflow", lambda r: r[:4] + [_set_value(r[4], 0, "1e999")] + r[5:], r"column YA value 1 is '1e999', not a finite number"),
    ("huge", lambda r: r[:5] + [_set_value(r[5], 0, "1e9")] + r[6:], r"column XB value 1 is 1e\+09, beyond any image"),
    ("word", lambda r: r[:3] + [_set_value(r[3], 0, "12abc")] + r[4:], r"column XA value 1 is '12abc', not a number"),
    ("xa-shorter", lambda r: r[:3] + [r[3].rsplit(";", 1)[0]] + r[4:], r"line 2: XA has 10 values but YA has 11"),
    ("target-shorter", lambda r: r[:5] + [c.rsplit(";", 1)[0] for c in r[5:7]], r"line 2: 11 source keypoints but 10 target keypoints"),
    ("empty-value", lambda r: r[:3] + [r[3].replace(";", ";;", 1)] + r[4:], r"line 2: column XA has an empty value at position 2"),
    ("no-keypoints", lambda r: r[:3] + ["", "", "", ""], r"line 2: the pair has no keypoints"),
    ("class-21", lambda r: r[:2] + ["21"] + r[3:], r"line 2: class 21 is not in 1\.\.20"),
    ("class-word", lambda r: r[:2] + ["plane"] + r[3:], r"line 2: class must be an integer 1\.\.20, got 'plane'"),
    ("truncated-row", lambda r: r[:5], r"line 2: expected 7 columns"),
]


@pytest.mark.parametrize("case, mutate, expected", NCNET_CASES, ids=[c[0] for c in NCNET_CASES])
def test_ncnet_list_bad_row(pfpascal_lists, tmp_path, case, mutate, expected):
    header, row = _first_ncnet_pair(pfpascal_lists)
    bad = tmp_path / "pairs.csv"
    bad.write_text(",".join(header) + "\n" + ",".join(mutate(row)) + "\n")
    raises_one_line(lambda: load_dataset("pfpascal", tmp_path, pair_list=bad, check_images=False), r"pairs\.csv", expected)


def test_ncnet_list_trailing_separator_and_bom_read_the_same(pfpascal_lists, tmp_path):
    header, row = _first_ncnet_pair(pfpascal_lists)
    plain, odd = tmp_path / "plain.csv", tmp_path / "odd.csv"
    plain.write_text(",".join(header) + "\n" + ",".join(row) + "\n")
    odd.write_bytes(("\ufeff" + ",".join(header) + "\r\n" + ",".join(row[:3] + [c + ";" for c in row[3:]]) + "\r\n").encode())
    a = load_dataset("pfpascal", tmp_path, pair_list=plain, check_images=False).pairs[0]
    b = load_dataset("pfpascal", tmp_path, pair_list=odd, check_images=False).pairs[0]
    assert a.src_kps.shape == (11, 2) and a.src_kps.tolist() == b.src_kps.tolist() and a.trg_kps.tolist() == b.trg_kps.tolist()


def test_ncnet_list_not_utf8(tmp_path):
    bad = tmp_path / "pairs.csv"
    bad.write_bytes(b"source_image,target_image,class,XA,YA,XB,YB\n\xff\xfe\x00garbage\n")
    raises_one_line(lambda: load_dataset("pfpascal", tmp_path, pair_list=bad, check_images=False),
                    r"pairs\.csv: not UTF-8 text")


# --------------------------------------------------------------------------------------
# PF-WILLOW test_pairs.csv


def _willow_lines(willow_root: Path) -> tuple[str, list[str]]:
    lines = (willow_root / "test_pairs.csv").read_text().splitlines()
    return lines[0], lines[1].split(",")


def _column(name: str) -> int:
    header = ["imageA", "imageB"] + [f"{a}{i}" for a in ("XA", "YA", "XB", "YB") for i in range(1, 11)]
    return header.index(name)


def _replace(row: list[str], column: str, value: str) -> list[str]:
    out = list(row)
    out[_column(column)] = value
    return out


WILLOW_CASES: list[tuple[str, Callable[[list[str]], list[str]], str]] = [
    ("nan", lambda r: _replace(r, "XA3", "nan"), r"line 2: column XA3 is 'nan', not a finite number"),
    ("inf", lambda r: _replace(r, "YB10", "inf"), r"line 2: column YB10 is 'inf', not a finite number"),
    ("minus-infinity", lambda r: _replace(r, "XB1", "-Infinity"), r"column XB1 is '-Infinity', not a finite number"),
    ("overflow", lambda r: _replace(r, "YA5", "1e400"), r"column YA5 is '1e400', not a finite number"),
    ("word", lambda r: _replace(r, "XA1", "left"), r"column XA1 is 'left', not a number"),
    ("nine-keypoints", lambda r: r[:-1], r"line 2: expected 42 columns, got 41"),
    ("escaping-path", lambda r: ["PF-dataset/car(G)/../../../etc/passwd"] + r[1:], r"must stay inside the dataset folder"),
    ("short-path", lambda r: ["Cars_006a.png"] + r[1:], r"image paths must look like PF-dataset/<class>/<name>\.png"),
    ("unknown-class", lambda r: [r[0].replace("car(G)", "tank")] + r[1:], r"unknown PF-WILLOW class 'tank'"),
]


@pytest.mark.parametrize("case, mutate, expected", WILLOW_CASES, ids=[c[0] for c in WILLOW_CASES])
def test_pfwillow_bad_row(willow_root, tmp_path, case, mutate, expected):
    header, row = _willow_lines(willow_root)
    (tmp_path / "PF-WILLOW").mkdir()
    (tmp_path / "PF-WILLOW" / "test_pairs.csv").write_text(header + "\n" + ",".join(mutate(row)) + "\n")
    raises_one_line(lambda: load_dataset("pfwillow", tmp_path, check_images=False), r"test_pairs\.csv", expected)


def test_pfwillow_bom_and_crlf_read_the_same(willow_root, tmp_path):
    header, row = _willow_lines(willow_root)
    (tmp_path / "PF-WILLOW").mkdir()
    (tmp_path / "PF-WILLOW" / "test_pairs.csv").write_bytes(("\ufeff" + header + "\r\n" + ",".join(row) + "\r\n").encode())
    mine = load_dataset("pfwillow", tmp_path, check_images=False).pairs[0]
    real = load_dataset("pfwillow", willow_root.parent).pairs[0]
    assert mine.src_kps.tolist() == real.src_kps.tolist() and mine.trg_kps.tolist() == real.trg_kps.tolist()
    assert mine.pair_id == real.pair_id


# --------------------------------------------------------------------------------------
# SPair-71k PairAnnotation json, from the real sample


def _set(key: str, value: Any) -> Callable[[dict], None]:
    return lambda d: d.__setitem__(key, value)


def _set_point(key: str, index: int, value: Any) -> Callable[[dict], None]:
    return lambda d: d[key].__setitem__(index, value)


def _set_coordinate(key: str, index: int, axis: int, value: Any) -> Callable[[dict], None]:
    return lambda d: d[key][index].__setitem__(axis, value)


SPAIR_CASES: list[tuple[str, Callable[[dict], None], str]] = [
    ("null-keypoint", _set_point("src_kps", 1, None), r"'src_kps' keypoint 1 is null"),
    ("three-values", _set_point("trg_kps", 0, [39, 145, 1]), r"'trg_kps' keypoint 0 must be \[x, y\]"),
    ("nan", _set_coordinate("src_kps", 2, 0, float("nan")), r"'src_kps' keypoint 2 is nan, not a finite number"),
    ("infinity", _set_coordinate("trg_kps", 1, 1, float("inf")), r"'trg_kps' keypoint 1 is inf, not a finite number"),
    ("huge", _set_coordinate("src_kps", 0, 0, 1e300), r"'src_kps' keypoint 0 is 1e\+300, beyond any image"),
    ("string-coordinate", _set_coordinate("src_kps", 0, 1, "153"), r"'src_kps' keypoint 0 is \"153\", not a number"),
    ("boolean-coordinate", _set_coordinate("trg_kps", 2, 0, True), r"'trg_kps' keypoint 2 is true, not a number"),
    ("kps-not-a-list", _set("trg_kps", {"0": [39, 145]}), r"'trg_kps' must be a list of \[x, y\] pairs"),
    ("count-mismatch", lambda d: d["trg_kps"].pop(), r"3 source keypoints but 2 target keypoints"),
    ("no-keypoints", lambda d: d.update(src_kps=[], trg_kps=[], kps_ids=[]), r"the pair has no keypoints"),
    ("kps-ids-mismatch", _set("kps_ids", ["0"]), r"'kps_ids' names 1 keypoints but 'src_kps' has 3"),
    ("box-three-numbers", _set("src_bndbox", [210, 34, 475]), r"'src_bndbox' must be 4 numbers .* got 3"),
    ("box-zero-width", _set("trg_bndbox", [36, 92, 36, 200]), r"'trg_bndbox' \(36, 92, 36, 200\) is empty or reversed"),
    ("box-text", _set("trg_bndbox", "36 92 500 200"), r"'trg_bndbox' must be 4 numbers \[x1, y1, x2, y2\]"),
    ("box-null", _set("src_bndbox", [210, None, 475, 250]), r"'src_bndbox' value is null, not a number"),
    ("flag-string", _set("truncation", "2"), r"'truncation' must be an integer, not \"2\""),
    ("flag-float", _set("occlusion", 2.5), r"'occlusion' must be an integer, not 2\.5"),
    ("flag-boolean", _set("viewpoint_variation", True), r"'viewpoint_variation' must be an integer, not true"),
    ("flag-missing", lambda d: d.pop("scale_variation"), r"has no 'scale_variation'"),
    ("category-mismatch", _set("category", "bus"), r"'category' is 'bus' but the layout line says 'aeroplane'"),
    ("category-number", _set("category", 5), r"'category' must be a non-empty string, not 5"),
    ("image-path-escape", _set("src_imname", "../../../etc/passwd"), r"'src_imname' must be a file name, not the path"),
    ("image-name-empty", _set("trg_imname", ""), r"'trg_imname' must be a non-empty string"),
]


def _spair_copy(spair_sample: Path, tmp_path: Path) -> Path:
    root = tmp_path / "SPair-71k"
    shutil.copytree(spair_sample, root)
    return next((root / "PairAnnotation" / "test").glob("*.json"))


@pytest.mark.parametrize("case, mutate, expected", SPAIR_CASES, ids=[c[0] for c in SPAIR_CASES])
def test_spair_bad_pair_json(spair_sample, tmp_path, case, mutate, expected):
    ann = _spair_copy(spair_sample, tmp_path)
    data = json.loads(ann.read_text())
    mutate(data)
    ann.write_text(json.dumps(data))
    raises_one_line(lambda: load_dataset("spair", tmp_path, check_images=False), re.escape(ann.name), expected)


@pytest.mark.parametrize("content, expected", [
    ("[]", r"must hold a JSON object"),
    ('{"src_kps": [[212, 153], [300, 130]', r"is not valid JSON"),
    ("", r"is empty"),
], ids=["list", "truncated", "empty"])
def test_spair_unreadable_pair_json(spair_sample, tmp_path, content, expected):
    ann = _spair_copy(spair_sample, tmp_path)
    ann.write_text(content)
    raises_one_line(lambda: load_dataset("spair", tmp_path, check_images=False), re.escape(ann.name), expected)


def test_spair_pair_json_as_named_pipe_is_refused_without_blocking(spair_sample, tmp_path, no_hang):
    ann = _spair_copy(spair_sample, tmp_path)
    ann.unlink()
    os.mkfifo(ann)
    raises_one_line(lambda: load_dataset("spair", tmp_path, check_images=False), re.escape(ann.name),
                    r"is a named pipe \(FIFO\), not a regular file")


def test_spair_fractional_coordinates_are_kept(spair_sample, tmp_path):
    ann = _spair_copy(spair_sample, tmp_path)
    data = json.loads(ann.read_text())
    data["src_kps"][0] = [212.5, 153.25]
    ann.write_text(json.dumps(data))
    pair = load_dataset("spair", tmp_path, check_images=False).pairs[0]
    assert pair.src_kps[0].tolist() == [212.5, 153.25] and pair.src_kps[1].tolist() == [300.0, 130.0]


# --------------------------------------------------------------------------------------
# images


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _image_case(tmp_path: Path, case: str) -> Path:
    """Create the hostile image ``case`` in tmp_path and return its path."""
    path = tmp_path / f"{case}.png"
    if case == "fifo":
        os.mkfifo(path)
    elif case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case in ("bomb", "bomb-pillow-limit-off"):
        path.write_bytes(_png_declaring(100_000, 100_000))
    elif case == "truncated":
        Image.fromarray(np.full((200, 200, 3), 120, np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif case == "text":
        path.write_text("not an image at all")
    elif case == "broken-link":
        path.symlink_to(tmp_path / "nowhere.png")
    elif case == "tiny":
        Image.new("RGB", (300, 20)).save(path)
    return path


IMAGE_CASES = [
    ("fifo", r"is a named pipe \(FIFO\), not a regular file"),
    ("directory", r"is a directory, not a file"),
    ("empty", r"is empty"),
    ("bomb", r"image is too large to decode safely"),
    ("bomb-pillow-limit-off", r"image declares 100000x100000 px \(10000 megapixels\), more than the 1000-megapixel limit"),
    ("truncated", r"image is truncated or corrupt"),
    ("text", r"not an image file that can be read"),
    ("broken-link", r"does not exist"),
    ("tiny", r"image is 300x20 px; both sides must be at least 32 px"),
]


@pytest.mark.parametrize("case, expected", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_bad_image(tmp_path, monkeypatch, no_hang, case, expected):
    path = _image_case(tmp_path, case)
    if case == "bomb-pillow-limit-off":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    raises_one_line(lambda: load_image(path, max_side=300), re.escape(str(path)), expected)


def test_device_file_is_refused_without_reading(no_hang):
    raises_one_line(lambda: load_image("/dev/zero"), r"/dev/zero: is a character device, not a regular file")


@pytest.mark.parametrize("read", [load_image, image_size], ids=["load_image", "image_size"])
def test_a_url_is_named_as_a_url(read):
    """``Path("https://a/b.jpg")`` is the local ``https:/a/b.jpg``: the error must show what
    the user typed and say that only local files are read."""
    raises_one_line(lambda: read("https://example.com/cat.jpg"), re.escape("https://example.com/cat.jpg: is a URL"),
                    "local image files only")


@pytest.mark.parametrize("image", [
    np.full((40, 50, 3), np.nan, np.float32),
    torch.full((3, 40, 50), float("inf")),
], ids=["nan-array", "inf-tensor"])
def test_a_non_finite_image_is_blamed_on_the_image(image):
    """NaN pixels used to reach the backbone, whose NaN features were then blamed on its weights."""
    raises_one_line(lambda: load_image(image), r"the image holds NaN or infinite values")


def test_symlink_to_an_image_loads(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "real.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    img = load_image(tmp_path / "link.png")
    assert img.size == (50, 40) and img.name == str(tmp_path / "link.png")
    assert np.array_equal(np.round(img.tensor.permute(1, 2, 0).numpy() * 255).astype(np.uint8), arr)


# --------------------------------------------------------------------------------------
# keypoint files

KEYPOINT_CASES: list[tuple[str, str | bytes, str]] = [
    ("nan.json", "[[1, 2], [NaN, 4]]", r"keypoint 1 has a non-finite coordinate \(nan\)"),
    ("infinity.json", "[[1, 2], [3, -Infinity]]", r"keypoint 1 has a non-finite coordinate \(-inf\)"),
    ("overflow.json", "[[1e999, 2]]", r"keypoint 0 has a non-finite coordinate \(inf\)"),
    ("bigint.json", "[[1" + "0" * 400 + ", 2]]", r"keypoint 0 has a non-finite coordinate"),
    ("huge.json", "[[1, 2], [3, 1e12]]", r"keypoint 1 has coordinate 1e\+12, beyond any image"),
    ("nested.json", "[[[1, 2]], [[3, 4]]]", r"must hold \(K, 2\) x, y pairs: keypoint 0 has 1 values"),
    ("flat.json", "[1, 2, 3, 4]", r"must hold \(K, 2\) x, y pairs: keypoint 0 is 1, not \[x, y\]"),
    ("triple.json", "[[1, 2, 3]]", r"must hold \(K, 2\) x, y pairs: keypoint 0 has 3 values"),
    ("boolean.json", "[[true, 2]]", r"must hold numeric x, y pairs: keypoint 0 has true"),
    ("strings.json", '[["1", "2"]]', r"must hold numeric x, y pairs: keypoint 0 has \"1\""),
    ("null.json", "[[1, 2], [null, 3]]", r"must hold numeric x, y pairs: keypoint 1 has null"),
    ("object-without-y.json", '[{"x": 1, "y": 2}, {"x": 3}]', r"every keypoint object needs 'x' and 'y' \(keypoint 1"),
    ("no-field.json", '{"points": [[1, 2]]}', r"has no 'keypoints' field"),
    ("string.json", '"12, 34"', r"must hold a list of \[x, y\] pairs"),
    ("empty-list.json", "[]", r"holds no keypoints"),
    ("empty.json", "", r"is empty"),
    ("truncated.json", "[[1, 2], [3", r"is not valid JSON"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, r"is not valid JSON \(nested too deeply\)"),
    ("binary.csv", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", r"is not UTF-8 text"),
    ("nan.csv", "x,y\n1,2\nnan,4\n", r"line 3 has a non-finite coordinate \(nan\)"),
    ("inf.csv", "1,2\n3,inf\n", r"line 2 has a non-finite coordinate \(inf\)"),
    ("three.csv", "1,2,3\n", r"must hold \(K, 2\) x, y pairs: line 1 has 3 values"),
    ("hole.csv", "1,,2\n", r"must hold \(K, 2\) x, y pairs: line 1 has 3 values"),
    ("semicolons.csv", "1;2\n3;4\n", r"must hold \(K, 2\) x, y pairs: line 1 has 1 values"),
    ("word.csv", "1,2\nthree,4\n", r"must hold numeric x, y pairs: line 2 has \"three\""),
    ("header-only.csv", "x,y\n", r"holds no keypoints"),
    ("blank.csv", "\n  \n", r"holds no keypoints"),
]


@pytest.mark.parametrize("name, content, expected", KEYPOINT_CASES, ids=[c[0] for c in KEYPOINT_CASES])
def test_bad_keypoint_file(tmp_path, name, content, expected):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    raises_one_line(lambda: read_keypoints(path), rf"^keypoints file {re.escape(str(path))}", expected)


@pytest.mark.parametrize("name, content", [
    ("bom.json", "\ufeff[[1, 2], [3.5, 4]]"),
    ("objects.json", '{"keypoints": [{"x": 1, "y": 2}, {"x": 3.5, "y": 4}]}'),
    ("bom.csv", "\ufeffx,y\r\n1,2\r\n3.5,4\r\n"),
    ("upper-header.csv", "X, Y\n1, 2\n3.5, 4\n"),
    ("trailing-comma.csv", "1,2,\n3.5,4,\n\n"),
    ("no-suffix", "[[1, 2], [3.5, 4]]"),
])
def test_keypoint_file_variants_read_the_same(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8"))
    kps = read_keypoints(path, bounds=(10, 10))
    assert kps.dtype == np.float64 and kps.tolist() == [[1.0, 2.0], [3.5, 4.0]]


def test_keypoint_file_fifo_and_directory_are_refused(tmp_path, no_hang):
    os.mkfifo(tmp_path / "pipe.json")
    raises_one_line(lambda: read_keypoints(tmp_path / "pipe.json"), r"keypoints file .*pipe\.json is a named pipe")
    raises_one_line(lambda: read_keypoints(tmp_path), r"is a directory, not a file")
    raises_one_line(lambda: read_keypoints(tmp_path / "none.json"), r"keypoints file .*none\.json does not exist")


@pytest.mark.parametrize("points, size, expected", [
    ([[1, 2], [500, 10]], (400, 300), r"keypoint 1 at \(500, 10\) lies outside the 400x300 image"),
    ([[-0.5, 2]], (400, 300), r"keypoint 0 at \(-0\.5, 2\) lies outside the 400x300 image"),
    ([[0, 0], [400, 300], [10, 300.01]], (400, 300), r"keypoint 2 at \(10, 300\.01\) lies outside"),
])
def test_keypoints_outside_the_image_are_named(tmp_path, points, size, expected):
    path = tmp_path / "k.json"
    path.write_text(json.dumps(points))
    raises_one_line(lambda: read_keypoints(path, bounds=size), r"keypoints file .*k\.json", expected)
    raises_one_line(lambda: check_keypoint_bounds(np.array(points, dtype=float), size), r"^keypoints: ", expected)


def test_keypoints_on_the_border_are_inside(tmp_path):
    path = tmp_path / "k.csv"
    path.write_text("0,0\n400,300\n")
    assert read_keypoints(path, bounds=(400, 300)).tolist() == [[0, 0], [400, 300]]
    error = raises_one_line(lambda: read_keypoints(path, bounds=(0, 300)), r"^bounds: must be \(width, height\)")
    assert error.option == "bounds"
