"""Loaders against the real annotation files (see conftest: ``$SCOT_DATA``, ``../shared`` or ``data/``), and bad data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from scot.datasets import load_dataset
from scot.datasets.pfwillow import CLASSES
from scot.errors import ScotError


def test_pfwillow_dev_split(willow_root):
    ds = load_dataset("pfwillow", willow_root.parent)
    assert len(ds) == 200 and ds.default_thres == "bbox"
    assert {p.category for p in ds.pairs} == set(CLASSES)
    for pair in ds.pairs:
        assert pair.src_kps.shape == (10, 2) and pair.trg_kps.shape == (10, 2)
        assert pair.src.parent.name == pair.category and pair.src.parent.parent == willow_root
    for key, _ in ds.image_keys():
        with Image.open(key) as im:
            im.verify()
    first = ds.pairs[0]
    assert first.src.name == "Cars_006a.png" and first.trg.name == "Cars_008b.png"
    assert first.src_kps[0].tolist() == pytest.approx([47.93528, 98.15865], abs=1e-4)
    assert first.trg_kps[9].tolist() == pytest.approx([102.94485, 131.17463], abs=1e-4)
    # the csv keypoints agree with the .mat annotations shipped beside the images
    import scipy.io

    mat = scipy.io.loadmat(str(first.src.with_suffix(".mat")))["pts_coord"]
    torch.testing.assert_close(first.src_kps, torch.tensor(mat, dtype=torch.float32).t(), atol=1e-3, rtol=0)


def test_selection(willow_root):
    ds = load_dataset("pfwillow", willow_root.parent)
    sub = ds.select(category="duck(S)", limit=5)
    assert len(sub) == 5 and {p.category for p in sub.pairs} == {"duck(S)"}
    with pytest.raises(ScotError, match="--category: 'cat' is not a pfwillow category"):
        ds.select(category="cat")


def test_spair_sample_fields(spair_sample, tmp_path):
    sample = spair_sample
    root = tmp_path / "SPair-71k"
    shutil.copytree(sample, root)
    ds = load_dataset("spair", tmp_path, check_images=False)
    assert len(ds) == 1
    p = ds.pairs[0]
    assert p.pair_id == "000001-2008_002719-2008_004100:aeroplane" and p.category == "aeroplane"
    assert p.src == root / "JPEGImages" / "aeroplane" / "2008_002719.jpg"
    assert p.src_kps.tolist() == [[212, 153], [300, 130], [330, 127]]
    assert p.trg_kps.tolist() == [[39, 145], [364, 171], [416, 173]]
    assert p.src_bbox == (210, 34, 475, 250) and p.trg_bbox == (36, 92, 500, 200)
    assert p.flags == {"viewpoint_variation": 0, "scale_variation": 0, "truncation": 2, "occlusion": 2}
    # the image annotations agree on the keypoints used
    trg_ann = json.loads((sample / "ImageAnnotation" / "aeroplane" / "2008_004100.json").read_text())
    assert [trg_ann["kps"][k] for k in ("0", "7", "11")] == p.trg_kps.tolist()
    with pytest.raises(ScotError, match="SPair-71k: image .*2008_002719.jpg is missing"):
        load_dataset("spair", tmp_path)


def test_ncnet_pair_list(pfpascal_lists):
    lists = pfpascal_lists
    ds = load_dataset("pfpascal", "/nonexistent", pair_list=lists / "test_pairs_ncnet.csv", check_images=False)
    assert len(ds) == 299
    p = ds.pairs[0]
    assert p.category == "aeroplane" and p.src.name == "2011_001407.jpg" and p.trg.name == "2010_004184.jpg"
    assert p.src_kps.shape == (11, 2) and p.trg_kps.shape == (11, 2)
    assert p.src_kps[0].tolist() == pytest.approx([253.631662222222, 58.1813333333333])
    assert p.trg_kps[-1].tolist() == pytest.approx([231.41072, 86.1214285714286])
    assert all(len(q.src_kps) == len(q.trg_kps) > 0 for q in ds.pairs)
    assert ds.default_thres == "img"
    assert {q.category for q in ds.pairs} <= set(ds.categories)


def _mini_willow(willow_root: Path, tmp_path: Path, rows: int = 3) -> Path:
    """A small PF-WILLOW copy in tmp_path (for corrupting)."""
    root = tmp_path / "PF-WILLOW"
    shutil.copytree(willow_root / "car(G)", root / "car(G)")
    lines = (willow_root / "test_pairs.csv").read_text().splitlines()
    (root / "test_pairs.csv").write_text("\n".join(lines[: rows + 1]) + "\n")
    return root


def test_missing_image_is_named(willow_root, tmp_path):
    root = _mini_willow(willow_root, tmp_path)
    (root / "car(G)" / "Cars_008b.png").unlink()
    with pytest.raises(ScotError, match=r"PF-WILLOW: image .*Cars_008b\.png is missing"):
        load_dataset("pfwillow", tmp_path)


def test_truncated_csv_is_named(willow_root, tmp_path):
    root = _mini_willow(willow_root, tmp_path)
    text = (root / "test_pairs.csv").read_text()
    (root / "test_pairs.csv").write_text(text[: len(text) - 200])
    with pytest.raises(ScotError, match=r"test_pairs\.csv line 4: expected 42 columns"):
        load_dataset("pfwillow", tmp_path)


def test_spair_json_without_trg_kps(spair_sample, tmp_path):
    root = tmp_path / "SPair-71k"
    shutil.copytree(spair_sample, root)
    ann = next((root / "PairAnnotation" / "test").glob("*.json"))
    data = json.loads(ann.read_text())
    del data["trg_kps"]
    ann.write_text(json.dumps(data))
    with pytest.raises(ScotError, match=rf"{ann.name}.* has no 'trg_kps'"):
        load_dataset("spair", tmp_path, check_images=False)


def test_mismatched_keypoint_counts(spair_sample, tmp_path):
    root = tmp_path / "SPair-71k"
    shutil.copytree(spair_sample, root)
    ann = next((root / "PairAnnotation" / "test").glob("*.json"))
    data = json.loads(ann.read_text())
    data["trg_kps"] = data["trg_kps"][:2]
    ann.write_text(json.dumps(data))
    with pytest.raises(ScotError, match=rf"{ann.name}: 3 source keypoints but 2 target keypoints"):
        load_dataset("spair", tmp_path, check_images=False)


def test_mismatched_keypoint_counts_in_an_ncnet_list(tmp_path):
    bad = tmp_path / "bad_ncnet.csv"
    bad.write_text("source_image,target_image,class,XA,YA,XB,YB\na.jpg,b.jpg,1,1;2,3;4,5,6\n")
    with pytest.raises(ScotError, match=r"bad_ncnet\.csv line 2: 2 source keypoints but 1 target keypoints"):
        load_dataset("pfpascal", tmp_path, pair_list=bad, check_images=False)


def test_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(ScotError, match=r"PF-WILLOW not found: expected .*PF-WILLOW/test_pairs\.csv \(put the PF-WILLOW folder in"):
        load_dataset("pfwillow", tmp_path)
    with pytest.raises(ScotError, match="unknown dataset 'caltech'"):
        load_dataset("caltech", tmp_path)
