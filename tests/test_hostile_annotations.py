"""Impossible benchmark annotations are refused, naming the file and the field; every real one is kept.

What a loader refuses (the rules of :mod:`scot.datasets.base`):

* a keypoint or box corner outside its image by more than :func:`outside_margin` (2 % of
  the image's longer side), the image's size read from its file or, where the images are
  not checked, from the size the annotation declares (PF-PASCAL ``imsize``, SPair-71k
  ``src_imsize`` / ``trg_imsize``);
* a declared image size that differs from the image file's;
* a PCK threshold under one pixel: a box whose longer side is shorter, PF-WILLOW target
  keypoints that all lie within a pixel.

The cases start from the real shared files with one value broken, and the last tests load
every real annotation the shared data holds with every loader: none of it may be refused.
Scoring refuses a zero threshold too, so that ``per_pair.csv`` and the journal never hold
``inf``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import scipy.io
import torch
from typer.testing import CliRunner

from conftest import one_line_error, raises_one_line, require_data
from scot.cli import app
from scot.datasets import Pair, load_dataset
from scot.datasets.pfpascal import CLASSES as PASCAL_CLASSES
from scot.evaluation.scoring import score_pair
from scot.image import image_size

runner = CliRunner()


# --------------------------------------------------------------------------------------
# PF-WILLOW: test_pairs.csv, the images' sizes read from the files


def _willow_copy(willow_root: Path, tmp_path: Path, edit: Callable[[dict], None]) -> tuple[Path, dict]:
    """``tmp_path/PF-WILLOW`` with the first real pair, edited by ``edit(row)``, and links to its images."""
    with open(willow_root / "test_pairs.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        header, row = list(reader.fieldnames or []), next(reader)
    edit(row)
    root = tmp_path / "PF-WILLOW"
    root.mkdir(parents=True)
    category = Path(row["imageA"]).parts[1]
    (root / category).symlink_to((willow_root / category).resolve(), target_is_directory=True)
    with open(root / "test_pairs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerow(row)
    return root, row


def _set_cells(**cells: float) -> Callable[[dict], None]:
    return lambda row: row.update({k: repr(v) for k, v in cells.items()})


@pytest.mark.parametrize("cells, expected", [
    ({"XB3": 99999.0}, r"target keypoint 3 \(columns XB3, YB3\) at \(99999, [\d.]+\) lies outside the \d+x\d+ image "
                       r".*Cars_008b\.png by more than \d+(\.\d+)? px"),
    ({"XA1": -5000.0}, r"source keypoint 1 \(columns XA1, YA1\) at \(-5000, [\d.]+\) lies outside the \d+x\d+ image "
                       r".*Cars_006a\.png"),
    ({"YB10": -40.0}, r"target keypoint 10 \(columns XB10, YB10\) at \([\d.]+, -40\) lies outside"),
], ids=["x-far-right", "x-far-left", "y-above"])
def test_pfwillow_keypoint_outside_the_image(willow_root, tmp_path, cells, expected):
    _willow_copy(willow_root, tmp_path, _set_cells(**cells))
    raises_one_line(lambda: load_dataset("pfwillow", tmp_path), r"test_pairs\.csv line 2: ", expected)


def test_pfwillow_keypoint_within_the_margin_is_kept(willow_root, tmp_path):
    root, row = _willow_copy(willow_root, tmp_path, lambda r: None)
    width, height = image_size(root / Path(*Path(row["imageB"]).parts[1:]))
    _willow_copy(willow_root, tmp_path / "edge", _set_cells(XB3=width + 2.0, YB3=0.0, XA1=-1.5))
    pair = load_dataset("pfwillow", tmp_path / "edge").pairs[0]
    assert pair.trg_kps[2].tolist() == [width + 2.0, 0.0] and pair.src_kps[0, 0].item() == -1.5


@pytest.mark.parametrize("check_images", [True, False])
def test_pfwillow_target_keypoints_all_equal_give_no_threshold(willow_root, tmp_path, check_images):
    same = {f"XB{i}": 120.0 for i in range(1, 11)} | {f"YB{i}": 80.0 for i in range(1, 11)}
    _willow_copy(willow_root, tmp_path, _set_cells(**same))
    raises_one_line(lambda: load_dataset("pfwillow", tmp_path, check_images=check_images),
                    r"test_pairs\.csv line 2: the target keypoints \(columns XB1\.\.YB10\) span 0x0 px",
                    r"PCK threshold")


def test_pfwillow_impossible_row_is_refused_by_scot_eval(willow_root, tmp_path):
    _willow_copy(willow_root, tmp_path, _set_cells(XB3=99999.0, XA1=-5000.0))
    res = runner.invoke(app, ["eval", "--dataset", "pfwillow", "--datapath", str(tmp_path), "--backbone",
                              "efficientnet-lite0", "-o", str(tmp_path / "run")])
    one_line_error(res, "test_pairs.csv line 2", "columns XA1, YA1", "lies outside")
    assert not (tmp_path / "run" / "per_pair.csv").exists()


# --------------------------------------------------------------------------------------
# PF-PASCAL: val_pairs.csv + Annotations/<class>/<name>.mat, images in JPEGImages/


def _pascal_copy(pfpascal_val: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """``tmp_path/PF-PASCAL`` holding the first real validation pair: (root, source .mat, target .mat)."""
    with open(pfpascal_val / "val_pairs.csv", newline="") as fh:
        lines = fh.read().splitlines()
    root = tmp_path / "PF-PASCAL"
    root.mkdir()
    (root / "JPEGImages").symlink_to((pfpascal_val / "JPEGImages").resolve(), target_is_directory=True)
    (root / "val_pairs.csv").write_text("\n".join(lines[:2]) + "\n")
    src, trg, cls = lines[1].split(",")[:3]
    category = PASCAL_CLASSES[int(cls) - 1]
    mats = []
    for name in (src, trg):
        mat = root / "Annotations" / category / f"{Path(name).stem}.mat"
        mat.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pfpascal_val / "Annotations" / category / mat.name, mat)
        mats.append(mat)
    return root, mats[0], mats[1]


def _edit_mat(path: Path, **fields: Any) -> dict:
    mat = {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
    for key, edit in fields.items():
        mat[key] = edit(mat[key].copy()) if callable(edit) else edit
    scipy.io.savemat(str(path), mat)
    return mat


def _first_visible(kps: np.ndarray) -> int:
    return int(np.flatnonzero(np.isfinite(kps).all(1))[0])


def _kps_with(x: float, y: float) -> Callable[[np.ndarray], np.ndarray]:
    def edit(kps: np.ndarray) -> np.ndarray:
        kps[_first_visible(kps)] = (x, y)
        return kps
    return edit


@pytest.mark.parametrize("check_images", [True, False], ids=["image-file", "declared-imsize"])
def test_pfpascal_keypoint_far_outside(pfpascal_val, tmp_path, check_images):
    _, _, trg = _pascal_copy(pfpascal_val, tmp_path)
    k = _first_visible(scipy.io.loadmat(str(trg))["kps"])
    _edit_mat(trg, kps=_kps_with(1e7, 50.0))
    raises_one_line(lambda: load_dataset("pfpascal", tmp_path, split="val", check_images=check_images),
                    rf"PF-PASCAL: annotation .*{re.escape(trg.name)}: 'kps' keypoint {k} at \(1e\+07, 50\) lies "
                    r"outside the \d+x\d+ image")


def test_pfpascal_box_outside_the_image(pfpascal_val, tmp_path):
    _, src, _ = _pascal_copy(pfpascal_val, tmp_path)
    _edit_mat(src, bbox=lambda b: b + np.array([[0.0, 0.0, 5000.0, 0.0]]))
    raises_one_line(lambda: load_dataset("pfpascal", tmp_path, split="val"),
                    rf"{re.escape(src.name)}: 'bbox' \([^)]*\) reaches outside the \d+x\d+ image .*\.jpg "
                    r"by \d+(\.\d+)? px")


def test_pfpascal_box_under_a_pixel(pfpascal_val, tmp_path):
    _, _, trg = _pascal_copy(pfpascal_val, tmp_path)
    _edit_mat(trg, bbox=np.array([[10.0, 20.0, 10.5, 20.25]]))
    raises_one_line(lambda: load_dataset("pfpascal", tmp_path, split="val"),
                    rf"{re.escape(trg.name)}: 'bbox' \(10, 20, 10\.5, 20\.25\) spans 0\.5x0\.25 px")


def test_pfpascal_declared_size_must_be_the_image_size(pfpascal_val, tmp_path):
    _, _, trg = _pascal_copy(pfpascal_val, tmp_path)
    height, width = (int(v) for v in scipy.io.loadmat(str(trg))["imsize"].reshape(-1)[:2])
    _edit_mat(trg, imsize=np.array([[height * 2, width * 2]]))
    raises_one_line(lambda: load_dataset("pfpascal", tmp_path, split="val"),
                    rf"{re.escape(trg.name)}: 'imsize' says {width * 2}x{height * 2} px \(width x height\) "
                    rf"but the image .*\.jpg is {width}x{height} px")


def test_ncnet_list_keypoint_outside_the_image(pfpascal_val, pfpascal_lists, tmp_path):
    """The real val list in the NCNet format, pointed at the real images, with one target keypoint moved away."""
    _pascal_copy(pfpascal_val, tmp_path)
    real = load_dataset("pfpascal", tmp_path, split="val").pairs[0]
    columns = [real.src_kps[:, 0].tolist(), real.src_kps[:, 1].tolist(), real.trg_kps[:, 0].tolist(),
               real.trg_kps[:, 1].tolist()]
    columns[2][0] = 1e6
    line = (f"{real.src.name},{real.trg.name},{PASCAL_CLASSES.index(real.category) + 1},"
            + ",".join(";".join(repr(v) for v in column) for column in columns))
    bad = tmp_path / "pairs.csv"
    bad.write_text("source_image,target_image,class,XA,YA,XB,YB\n" + line + "\n")
    raises_one_line(lambda: load_dataset("pfpascal", tmp_path, pair_list=bad),
                    r"pairs\.csv line 2: target keypoint 1 \(columns XB, YB value 1\) at \(1e\+06, [\d.]+\) "
                    r"lies outside")


# --------------------------------------------------------------------------------------
# SPair-71k: PairAnnotation/<split>/<pair>.json


def _spair_copy(spair_root: Path, split: str, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    """``tmp_path/SPair-71k`` with the first pair of ``split``, edited by ``edit(json)``, and links to its images."""
    line = (spair_root / "Layout" / "large" / f"{split}.txt").read_text().splitlines()[0].strip()
    root = tmp_path / "SPair-71k"
    (root / "Layout" / "large").mkdir(parents=True)
    (root / "Layout" / "large" / f"{split}.txt").write_text(line + "\n")
    if (spair_root / "JPEGImages").is_dir():
        (root / "JPEGImages").symlink_to((spair_root / "JPEGImages").resolve(), target_is_directory=True)
    ann = root / "PairAnnotation" / split / f"{line}.json"
    ann.parent.mkdir(parents=True)
    data = json.loads((spair_root / "PairAnnotation" / split / ann.name).read_text())
    edit(data)
    ann.write_text(json.dumps(data))
    return ann


def _set(key: str, value: Any) -> Callable[[dict], None]:
    return lambda d: d.__setitem__(key, value)


def test_spair_huge_target_box_on_the_sample(spair_sample, tmp_path):
    """The box that turned a pair's PCK from 0 into 100: refused by the image size the file declares."""
    ann = _spair_copy(spair_sample, "test", tmp_path, _set("trg_bndbox", [36, 92, 50000, 20000]))
    raises_one_line(lambda: load_dataset("spair", tmp_path, check_images=False),
                    rf"SPair-71k: annotation .*{re.escape(ann.name)}: 'trg_bndbox' \(36, 92, 50000, 20000\) reaches "
                    r"outside the 500x332 image .*2008_004100\.jpg by 49500 px")


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["trg_kps"].__setitem__(0, [5000, 10]),
     r"'trg_kps' keypoint 0 at \(5000, 10\) lies outside the 300x\d+ image"),
    (lambda d: d["src_kps"].__setitem__(1, [10, -300]), r"'src_kps' keypoint 1 at \(10, -300\) lies outside"),
    (_set("src_bndbox", [-90, 0, 100, 100]), r"'src_bndbox' \(-90, 0, 100, 100\) reaches outside"),
    (_set("trg_imsize", [500, 375, 3]),
     r"'trg_imsize' says 500x375 px \(width x height\) but the image .*\.jpg is 300x\d+ px"),
    (_set("src_imsize", "300x225"), r"'src_imsize' must be \[width, height\] or \[width, height, channels\]"),
], ids=["trg-keypoint", "src-keypoint", "src-box", "trg-size", "size-text"])
def test_spair_impossible_field_with_real_images(spair_val, tmp_path, edit, expected):
    ann = _spair_copy(spair_val, "val", tmp_path, edit)
    raises_one_line(lambda: load_dataset("spair", tmp_path, split="val"), re.escape(ann.name), expected)


def test_spair_box_under_a_pixel(spair_sample, tmp_path):
    ann = _spair_copy(spair_sample, "test", tmp_path, _set("trg_bndbox", [36, 92, 36.5, 92.5]))
    raises_one_line(lambda: load_dataset("spair", tmp_path, check_images=False),
                    rf"{re.escape(ann.name)}: 'trg_bndbox' \(36, 92, 36\.5, 92\.5\) spans 0\.5x0\.5 px")


# --------------------------------------------------------------------------------------
# scoring: a zero threshold is refused, never divided by


def _fake_result(trg_kps: torch.Tensor) -> SimpleNamespace:
    frame = SimpleNamespace(original_size=(300, 200), ratio=1.0)
    return SimpleNamespace(src=frame, trg=frame, transferred=trg_kps + 1.0, transferred_resized=trg_kps + 1.0,
                           flipped=False)


def test_scoring_refuses_a_box_without_extent():
    """A Pair built by hand (not by a loader) with an empty box used to score inf distances."""
    kps = torch.tensor([[40.0, 50.0], [40.0, 50.0]])
    pair = Pair(0, "a-b:cat", "cat", Path("a.jpg"), Path("b.jpg"), kps, kps, trg_bbox=(40.0, 50.0, 40.0, 50.0))
    raises_one_line(lambda: score_pair(pair, _fake_result(kps), "bbox"),
                    r"pair a-b:cat \(target b\.jpg\): the PCK threshold is 0 px")


def test_scoring_keeps_a_box_with_one_side():
    """The threshold is the longer side: a box flat in one direction still gives a finite, strict-JSON record."""
    kps = torch.tensor([[40.0, 50.0], [40.0, 60.0]])
    pair = Pair(0, "a-b:cat", "cat", Path("a.jpg"), Path("b.jpg"), kps, kps, trg_bbox=(40.0, 50.0, 40.0, 80.0))
    rec = score_pair(pair, _fake_result(kps), "bbox")
    assert rec["thr"] == 30.0 and all(math.isfinite(d) for d in rec["dist"])
    json.dumps(rec, allow_nan=False)


# --------------------------------------------------------------------------------------
# every real annotation of the shared data is kept


def _check_sizes(ds) -> int:
    """Every pair's keypoints and boxes lie in its images; returns the number of images seen."""
    sizes: dict[Path, tuple[int, int]] = {}
    for pair in ds.pairs:
        for path, kps, box in ((pair.src, pair.src_kps, pair.src_bbox), (pair.trg, pair.trg_kps, pair.trg_bbox)):
            w, h = sizes.setdefault(path, image_size(path))
            assert float(kps[:, 0].min()) >= 0 and float(kps[:, 1].min()) >= 0, (pair.pair_id, kps)
            assert float(kps[:, 0].max()) <= w and float(kps[:, 1].max()) <= h, (pair.pair_id, kps, w, h)
            if box is not None:
                assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h, (pair.pair_id, box, w, h)
    return len(sizes)


def test_every_real_benchmark_annotation_is_kept():
    """All the shared real data, read by every loader with its images: nothing is refused."""
    willow = load_dataset("pfwillow", require_data("pfwillow").parent)
    pascal = load_dataset("pfpascal", require_data("pfpascal-val").parent, split="val")
    spair_val = load_dataset("spair", require_data("spair-val").parent, split="val")
    spair_full = load_dataset("spair", require_data("spair-fullres").parent, split="test")
    assert [len(willow), len(pascal), len(spair_val), len(spair_full)] == [200, 308, 356, 6]
    assert _check_sizes(willow) == 50 and _check_sizes(pascal) == 521
    assert _check_sizes(spair_val) == 75 and _check_sizes(spair_full) == 12


def test_every_real_annotation_sample_is_kept(tmp_path):
    """The annotation-only samples (no images): checked against the sizes they declare where they declare one."""
    lists = require_data("pfpascal-lists")
    pascal = require_data("pfpascal-val")
    # the NCNet test list carries its keypoints (its images are not shared); the val and train lists carry none
    assert len(load_dataset("pfpascal", tmp_path, pair_list=lists / "test_pairs_ncnet.csv", check_images=False)) == 299
    # the NCNet val list carries no coordinates: it reads the real .mat files, with the real images
    val = load_dataset("pfpascal", pascal.parent, split="val", pair_list=lists / "val_pairs_ncnet.csv")
    assert len(val) == 308 and _check_sizes(val) == 521
    (tmp_path / "SPair-71k").symlink_to(require_data("spair-sample"), target_is_directory=True)
    sample = load_dataset("spair", tmp_path, check_images=False)
    assert len(sample) == 1 and sample.pairs[0].trg_bbox == (36.0, 92.0, 500.0, 200.0)
