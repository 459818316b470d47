"""Loaders against the real annotation files (see conftest: ``$SCOT_DATA``, ``../shared`` or ``data/``), and bad data."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scot.datasets import Pair, load_dataset
from scot.datasets.pfpascal import CLASSES as CLASSES_PASCAL
from scot.datasets.pfpascal import flip_box, flip_keypoints
from scot.datasets.pfwillow import CLASSES
from scot.datasets.spair import read_pair_annotation
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
    with pytest.raises(ScotError, match="^category: 'cat' is not a pfwillow category") as info:
        ds.select(category="cat")
    assert info.value.option == "category" and info.value.for_cli(lambda o: f"--{o}").startswith("--category: 'cat'")
    for option, kwargs in (("limit", {"limit": 0}), ("sample", {"sample": -1})):
        with pytest.raises(ScotError, match=f"^{option}: must be at least 1") as info:
            ds.select(**kwargs)
        assert info.value.option == option
    with pytest.raises(ScotError, match="^split: PF-WILLOW only has a 'test' split") as info:
        load_dataset("pfwillow", willow_root.parent, split="val")
    assert info.value.option == "split"


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


def _ncnet_rows(pfpascal_lists: Path, n: int) -> list[dict]:
    """The first ``n`` rows of the real NCNet PF-PASCAL test list, keypoints as (K, 2) arrays."""
    path = pfpascal_lists / "test_pairs_ncnet.csv"
    rows = []
    with open(path, newline="") as fh:
        for row in list(csv.DictReader(fh))[:n]:
            xy = {c: [float(v) for v in row[c].split(";")] for c in ("XA", "YA", "XB", "YB")}
            rows.append({"src": Path(row["source_image"]).name, "trg": Path(row["target_image"]).name,
                         "class": int(row["class"]), "src_kps": np.array([xy["XA"], xy["YA"]]).T,
                         "trg_kps": np.array([xy["XB"], xy["YB"]]).T})
    return rows


def _write_pascal(tmp_path: Path, rows: list[dict], extra_invisible: int = 0, visibility_column: bool = False) -> Path:
    """A PF-PASCAL folder (csv + .mat annotations) holding ``rows``.

    Every annotation gets ``extra_invisible`` more keypoints that are invisible: NaN rows,
    or rows flagged 0 in a third column when ``visibility_column``.
    """
    import scipy.io

    root = tmp_path / "PF-PASCAL"
    lines = ["source_image,target_image,class"]
    for row in rows:
        cls = CLASSES_PASCAL[row["class"] - 1]
        for side in ("src", "trg"):
            kps = np.vstack([row[f"{side}_kps"], np.full((extra_invisible, 2), np.nan)])
            if visibility_column:
                visible = np.isfinite(kps).all(1).astype(float)
                kps = np.hstack([np.nan_to_num(kps, nan=-1.0), visible[:, None]])
            ann = root / "Annotations" / cls / f"{Path(row[side]).stem}.mat"
            ann.parent.mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(ann, {"kps": kps, "bbox": np.array([[10.0, 20.0, 300.0, 250.0]])})
        lines.append(f"PF-dataset-PASCAL/JPEGImages/{row['src']},PF-dataset-PASCAL/JPEGImages/{row['trg']},{row['class']}")
    (root / "test_pairs.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("visibility_column", [False, True])
def test_pfpascal_annotations_agree_with_the_ncnet_list(pfpascal_lists, tmp_path, visibility_column):
    rows = _ncnet_rows(pfpascal_lists, 3)
    _write_pascal(tmp_path, rows, extra_invisible=2, visibility_column=visibility_column)
    ds = load_dataset("pfpascal", tmp_path, check_images=False)
    lists = pfpascal_lists
    ncnet = load_dataset("pfpascal", tmp_path, pair_list=lists / "test_pairs_ncnet.csv", check_images=False)
    assert len(ds) == 3
    for mine, theirs, row in zip(ds.pairs, ncnet.pairs, rows):
        # invisible keypoints are dropped, visible ones kept in order
        assert mine.src_kps.shape == (len(row["src_kps"]), 2)
        torch.testing.assert_close(mine.src_kps, theirs.src_kps)
        torch.testing.assert_close(mine.trg_kps, theirs.trg_kps)
        assert mine.trg_bbox == (10.0, 20.0, 300.0, 250.0) and theirs.trg_bbox == mine.trg_bbox
        assert mine.pair_id == theirs.pair_id


def test_pfpascal_keypoint_visible_in_one_image_only_is_dropped(pfpascal_lists, tmp_path):
    import scipy.io

    rows = _ncnet_rows(pfpascal_lists, 1)
    root = _write_pascal(tmp_path, rows)
    ann = root / "Annotations" / "aeroplane" / f"{Path(rows[0]['trg']).stem}.mat"
    kps = rows[0]["trg_kps"].copy()
    kps[4] = np.nan
    scipy.io.savemat(ann, {"kps": kps, "bbox": np.array([[1.0, 2.0, 3.0, 4.0]])})
    pair = load_dataset("pfpascal", tmp_path, check_images=False).pairs[0]
    expected = np.delete(rows[0]["src_kps"], 4, axis=0)
    np.testing.assert_allclose(pair.src_kps.numpy(), expected, rtol=1e-6)


def test_pair_oriented_mirrors_flipped_pairs_only():
    src_kps = torch.tensor([[10.0, 5.0], [90.0, 40.0]])
    trg_kps = torch.tensor([[1.0, 2.0], [150.0, 70.0]])
    pair = Pair(0, "a-b:cat", "cat", Path("a.jpg"), Path("b.jpg"), src_kps, trg_kps,
                src_bbox=(0.0, 0.0, 100.0, 50.0), trg_bbox=(20.0, 10.0, 120.0, 80.0))
    same = pair.oriented(100, 200)
    assert same[0] is src_kps and same[1] is trg_kps and same[2] == (20.0, 10.0, 120.0, 80.0)
    flipped = dataclasses.replace(pair, flip=True)
    s, t, box = flipped.oriented(100, 200)
    assert s.tolist() == [[90.0, 5.0], [10.0, 40.0]]
    assert t.tolist() == [[199.0, 2.0], [50.0, 70.0]]
    assert box == (80.0, 10.0, 180.0, 80.0)
    assert pair.src_kps.tolist() == [[10.0, 5.0], [90.0, 40.0]]  # the stored annotation is untouched
    # the module-level helpers other code imports give the same answers
    assert torch.equal(flip_keypoints(trg_kps, 200), t) and flip_box(pair.trg_bbox, 200) == box
    assert flip_box(None, 200) is None and dataclasses.replace(flipped, trg_bbox=None).oriented(100, 200)[2] is None


def test_spair_real_pair_json_is_valid_and_image_jsons_hold_nulls(spair_sample):
    sample = spair_sample
    pair_json = next((sample / "PairAnnotation" / "test").glob("*.json"))
    ann = read_pair_annotation(pair_json, "aeroplane")
    raw = json.loads(pair_json.read_text())
    assert ann["src_kps"].tolist() == raw["src_kps"] and len(raw["kps_ids"]) == len(raw["src_kps"])
    assert ann["flags"]["truncation"] == 2 and ann["src_bbox"] == (210.0, 34.0, 475.0, 250.0)
    # per-image annotations mark invisible keypoints with null; pair annotations list only visible ones
    image_json = json.loads((sample / "ImageAnnotation" / "aeroplane" / raw["trg_imname"].replace(".jpg", ".json")).read_text())
    assert None in image_json["kps"].values() and all(None not in p for p in raw["src_kps"] + raw["trg_kps"])
    with pytest.raises(ScotError, match=r"'category' is 'aeroplane' but the layout line says 'bus'"):
        read_pair_annotation(pair_json, "bus")


def _toy_dataset(per_class: dict[str, int]):
    from scot.datasets.base import Dataset, Pair

    pairs = []
    for cat, n in per_class.items():
        for _ in range(n):
            pairs.append(Pair(index=len(pairs), pair_id=f"p{len(pairs)}", category=cat, src=Path("a"), trg=Path("b"),
                              src_kps=torch.zeros(1, 2), trg_kps=torch.zeros(1, 2)))
    return Dataset("toy", Path("."), "test", pairs, list(per_class), "bbox")


def test_select_sample_spreads_over_every_class_then_limits():
    data = _toy_dataset({"a": 10, "b": 10, "c": 10})
    sample = data.select(sample=6)
    assert [p.category for p in sample.pairs] == ["a", "a", "b", "b", "c", "c"]
    assert [p.index for p in sample.pairs] == [0, 5, 10, 15, 20, 25]
    assert [p.index for p in data.select(sample=6, limit=2).pairs] == [0, 5]
    assert [p.index for p in data.select(category="b", sample=2).pairs] == [10, 15]
    assert len(data.select(sample=100)) == 30  # more than there are: all of them
    with pytest.raises(ScotError, match="^sample: must be at least 1"):
        data.select(sample=0)


# --------------------------------------------------------------------------------------
# the real validation data: PF-PASCAL (HPF layout, .mat annotations) and SPair-71k on real images


def _mat(path: Path) -> dict:
    import scipy.io

    return scipy.io.loadmat(str(path))


@pytest.fixture(scope="module")
def pascal_val_pairs(pfpascal_val):
    """The shared PF-PASCAL validation split as the loader reads it."""
    return load_dataset("pfpascal", pfpascal_val.parent, split="val")


def test_pfpascal_val_split_reads_the_real_mat_files(pfpascal_val, pascal_val_pairs):
    from functools import lru_cache

    from scot.image import image_size as read_size
    from scot.pck import pck_threshold

    image_size = lru_cache(maxsize=None)(read_size)
    ds = pascal_val_pairs
    with open(pfpascal_val / "val_pairs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(ds) == len(rows) == 308 and ds.split == "val" and ds.default_thres == "img"
    images = {p.src for p in ds.pairs} | {p.trg for p in ds.pairs}
    assert len(images) == 521 and {i.parent for i in images} == {pfpascal_val / "JPEGImages"}
    assert {p.category for p in ds.pairs} == set(CLASSES_PASCAL)
    for pair, row in zip(ds.pairs, rows, strict=True):
        category = CLASSES_PASCAL[int(row["class"]) - 1]
        assert pair.category == category and not pair.flip
        assert (pair.src.name, pair.trg.name) == (Path(row["source_image"]).name, Path(row["target_image"]).name)
        src, trg = (_mat(pfpascal_val / "Annotations" / category / f"{p.stem}.mat") for p in (pair.src, pair.trg))
        both = np.isfinite(src["kps"]).all(1) & np.isfinite(trg["kps"]).all(1)  # visible in both images
        assert both.sum() == len(pair.src_kps) >= 1
        np.testing.assert_allclose(pair.src_kps.numpy(), src["kps"][both], rtol=1e-6)
        np.testing.assert_allclose(pair.trg_kps.numpy(), trg["kps"][both], rtol=1e-6)
        assert pair.trg_bbox == pytest.approx(tuple(trg["bbox"].reshape(-1)))
        for path, mat, kps in ((pair.src, src, pair.src_kps), (pair.trg, trg, pair.trg_kps)):
            height, width = (int(v) for v in mat["imsize"].reshape(-1)[:2])
            assert image_size(path) == (width, height)  # the .mat describes these very images
            assert float(kps.min()) >= 0 and float(kps[:, 0].max()) <= width and float(kps[:, 1].max()) <= height
        # PF-PASCAL's threshold: the target image's longer side (PF-PASCAL stores its images at 300 px)
        assert pck_threshold(ds.default_thres, image_size(pair.trg), pair.trg_bbox) == 300.0


def test_pfpascal_val_list_in_the_ncnet_format_gives_the_same_pairs(pfpascal_val, pfpascal_lists, pascal_val_pairs):
    hpf = pascal_val_pairs
    ncnet = load_dataset("pfpascal", pfpascal_val.parent, split="val", pair_list=pfpascal_lists / "val_pairs_ncnet.csv")
    assert [p.pair_id for p in ncnet.pairs] == [p.pair_id for p in hpf.pairs]
    assert all(torch.equal(a.trg_kps, b.trg_kps) for a, b in zip(hpf.pairs, ncnet.pairs, strict=True))


SPAIR_SETS = {  # fixture: (split, pairs, images, longest image side)
    "spair_val": ("val", 356, 75, 300),
    "spair_fullres": ("test", 6, 12, 500),
}


@pytest.mark.parametrize("fixture", list(SPAIR_SETS))
def test_spair_on_real_images(request, fixture):
    """The loader on SPair-71k's own layout with real images: every pair json and image json agrees with the images."""
    from functools import lru_cache

    from scot.image import image_size as read_size
    from scot.pck import pck_threshold

    image_size = lru_cache(maxsize=None)(read_size)
    root = request.getfixturevalue(fixture)
    split, n_pairs, n_images, longest = SPAIR_SETS[fixture]
    ds = load_dataset("spair", root.parent, split=split)
    lines = [ln.strip() for ln in (root / "Layout" / "large" / f"{split}.txt").read_text().splitlines() if ln.strip()]
    assert len(ds) == n_pairs and [p.pair_id for p in ds.pairs] == lines and ds.default_thres == "bbox"
    images = {p.src for p in ds.pairs} | {p.trg for p in ds.pairs}
    assert len(images) == n_images and max(max(image_size(i)) for i in images) == longest
    for pair in ds.pairs:
        raw = json.loads((root / "PairAnnotation" / split / f"{pair.pair_id}.json").read_text())
        assert pair.category == raw["category"] == pair.pair_id.rsplit(":", 1)[1]
        assert pair.flags == {k: raw[k] for k in ("viewpoint_variation", "scale_variation", "truncation", "occlusion")}
        assert set(pair.flags.values()) <= {0, 1, 2, 3}
        for side, path in (("src", pair.src), ("trg", pair.trg)):
            kps, box = getattr(pair, f"{side}_kps"), getattr(pair, f"{side}_bbox")
            np.testing.assert_allclose(kps.numpy(), np.array(raw[f"{side}_kps"]), rtol=1e-6)
            assert box == tuple(raw[f"{side}_bndbox"])
            width, height = image_size(path)
            image_ann = json.loads((root / "ImageAnnotation" / pair.category / f"{path.stem}.json").read_text())
            declared = (image_ann["image_width"], image_ann["image_height"])
            assert (width, height) == declared == tuple(raw[f"{side}_imsize"][:2])
            # the pair's keypoints are the image annotation's keypoints named by kps_ids
            np.testing.assert_allclose(np.array([image_ann["kps"][k] for k in raw["kps_ids"]]), kps.numpy(), rtol=1e-6)
            assert float(kps.min()) >= 0 and float(kps[:, 0].max()) <= width and float(kps[:, 1].max()) <= height
            assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
        # SPair's threshold: the longer side of the target box, within the image
        x1, y1, x2, y2 = pair.trg_bbox
        thr = pck_threshold(ds.default_thres, image_size(pair.trg), pair.trg_bbox)
        assert thr == max(x2 - x1, y2 - y1) and 1 <= thr <= max(image_size(pair.trg))


def test_sided_parts_table_is_a_set_of_disjoint_swaps():
    from scot.datasets.spair import CATEGORIES, SIDED_PARTS, mirror_partner

    assert set(SIDED_PARTS) == set(CATEGORIES)
    for category, pairs in SIDED_PARTS.items():
        ids = [k for pair in pairs for k in pair]
        assert len(ids) == len(set(ids)) and all(0 <= k < 30 for k in ids), category
        partner = mirror_partner(category)
        assert all(partner[partner[k]] == k != partner[k] for k in partner)
    assert mirror_partner("unicorn") == {}


def test_sided_parts_lie_on_opposite_sides_as_the_object_faces(spair_val, spair_fullres):
    """On every annotated image facing the camera (SPair azimuth 7, 0, 1) or away from it
    (3, 4, 5), the two parts of a listed pair lie on opposite sides, the same way round for
    the same facing: the table names left-right counterparts (a wrong pair, such as a
    bicycle's two wheels, would not keep a side)."""
    from scot.datasets.spair import SIDED_PARTS

    votes: dict[tuple[str, int, int], list[int]] = {}
    for root in (spair_val, spair_fullres):
        for path in sorted((root / "ImageAnnotation").glob("*/*.json")):
            ann = json.loads(path.read_text())
            facing = {7: 1, 0: 1, 1: 1, 3: -1, 4: -1, 5: -1}.get(ann["azimuth_id"])
            if facing is None:
                continue
            for a, b in SIDED_PARTS[ann["category"]]:
                pa, pb = ann["kps"].get(str(a)), ann["kps"].get(str(b))
                if pa is not None and pb is not None and pa[0] != pb[0]:
                    votes.setdefault((ann["category"], a, b), []).append(facing * (1 if pa[0] > pb[0] else -1))
    seen = sum(len(v) for v in votes.values())
    kept = sum(max(v.count(1), v.count(-1)) for v in votes.values())
    assert seen >= 200 and len({c for c, _, _ in votes}) >= 12
    assert kept / seen >= 0.95


def test_spair_mirror_partners_come_from_the_pair_and_the_source_annotation(spair_val):
    from scot.datasets.spair import mirror_partner

    ds = load_dataset("spair", spair_val.parent, split="val")
    swapped = 0
    for pair in ds.pairs:
        raw = json.loads((spair_val / "PairAnnotation" / "val" / f"{pair.pair_id}.json").read_text())
        shown = json.loads((spair_val / "ImageAnnotation" / pair.category / f"{pair.src.stem}.json").read_text())["kps"]
        partner = mirror_partner(pair.category)
        assert pair.src_mirror_kps is not None and pair.src_mirror_kps.shape == pair.src_kps.shape
        for row, k in enumerate(int(i) for i in raw["kps_ids"]):
            p = partner.get(k)
            want = shown[str(p)] if p is not None and shown.get(str(p)) is not None else raw["src_kps"][row]
            np.testing.assert_allclose(pair.src_mirror_kps[row].numpy(), want, rtol=1e-6)
            swapped += want != raw["src_kps"][row]
    assert swapped > 1000  # most of the 3068 keypoints have a partner the source shows
    # a mirrored pair (PF-PASCAL's training layout) mirrors the partners with its keypoints
    pair = dataclasses.replace(ds.pairs[0], flip=True)
    assert torch.equal(pair.oriented_mirror_kps(300), flip_keypoints(ds.pairs[0].src_mirror_kps, 300))
    assert dataclasses.replace(pair, src_mirror_kps=None).oriented_mirror_kps(300) is None


@pytest.mark.parametrize("content, said", [
    ("{not json", "is not valid JSON"), ("[1, 2]", "must hold a JSON object"),
    ('{"kps": [1, 2]}', "must hold an object with 'kps'"), ('{"kps": {"7": [1, "a"]}}', "not a number"),
    ('{"kps": {"seven": [1, 2]}}', "must be keypoint numbers"),
])
def test_spair_bad_source_image_annotation_is_named(spair_sample, tmp_path, content, said):
    """The source's ImageAnnotation file, read for the mirror partners, is checked like the pair file."""
    root = tmp_path / "SPair-71k"
    shutil.copytree(spair_sample, root)
    partners = load_dataset("spair", tmp_path, check_images=False).pairs[0].src_mirror_kps
    assert partners is not None and partners.shape == (3, 2)  # keypoints 0, 7 and 11 of an aeroplane
    image_ann = root / "ImageAnnotation" / "aeroplane" / "2008_002719.json"
    shown = json.loads(image_ann.read_text())["kps"]
    assert partners[1].tolist() == (shown["6"] or shown["7"]) and partners[2].tolist() == (shown["10"] or shown["11"])
    image_ann.write_text(content)
    with pytest.raises(ScotError) as info:
        load_dataset("spair", tmp_path, check_images=False)
    message = str(info.value)
    assert "image annotation" in message and str(image_ann) in message and said in message and "\n" not in message
