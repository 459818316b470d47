"""PCK arithmetic: thresholds, per-pair scores and the two averaging conventions."""

from __future__ import annotations

import math

import pytest
import torch

from scot.datasets import load_dataset
from scot.pck import PCKTable, keypoint_box, normalised_distances, pair_pck, pck_threshold


def test_img_threshold_is_longer_image_side():
    assert pck_threshold("img", (500, 333), None) == 500.0
    assert pck_threshold("img", (240, 320), (0, 0, 1, 1)) == 320.0


def test_bbox_threshold_is_longer_box_side():
    assert pck_threshold("bbox", (500, 332), (36, 92, 500, 200)) == 464.0  # SPair sample's target box
    assert pck_threshold("bbox", (500, 332), (10, 20, 40, 120)) == 100.0
    with pytest.raises(ValueError):
        pck_threshold("bbox", (10, 10), None)


def test_hand_computed_pair():
    # target resized by 0.6; threshold 200 px on the original -> 120 px in the resized frame
    gt = torch.tensor([[10.0, 10.0], [50.0, 50.0], [100.0, 0.0], [0.0, 0.0]]) * 0.6
    pred = gt + torch.tensor([[6.0, 0.0], [0.0, 12.1], [9.0, 12.0], [17.0, 0.0]])  # 6, 12.1, 15, 17 px
    d = normalised_distances(pred, gt, 200 * 0.6).tolist()
    assert d == pytest.approx([0.05, 12.1 / 120, 0.125, 17 / 120])
    assert pair_pck(d, 0.05) == 0.25  # 6 <= 0.05 * 120 = 6: on the threshold counts as correct
    assert pair_pck(d, 0.10) == 0.25  # 12.1 > 12
    assert pair_pck(d, 0.15) == 1.0  # 17 <= 18


def test_pfwillow_threshold_is_the_target_keypoint_extent(willow_root):
    ds = load_dataset("pfwillow", willow_root.parent)
    for pair in ds.pairs[:: 17]:
        k = pair.trg_kps
        extent = max(float(k[:, 0].max() - k[:, 0].min()), float(k[:, 1].max() - k[:, 1].min()))
        assert pck_threshold("bbox", (300, 300), pair.trg_bbox) == pytest.approx(extent)
        assert keypoint_box(k) == pair.trg_bbox
    # e.g. the first pair: x spans 12.49..145.00 and y 109.17..174.20 -> 132.51 px
    assert pck_threshold("bbox", (300, 200), ds.pairs[0].trg_bbox) == pytest.approx(132.5110, abs=1e-3)


def test_mean_over_pairs_differs_from_mean_over_keypoints():
    table = PCKTable()
    table.add("cat", [0.01, 0.5])  # 2 keypoints, 1 correct at 0.1 -> 50 %
    table.add("cat", [0.01] * 8)  # 8 keypoints, all correct -> 100 %
    table.add("dog", [0.2, 0.3])  # 0 %
    assert table.mean_over_pairs(0.1) == pytest.approx(100 * (0.5 + 1.0 + 0.0) / 3)
    assert table.mean_over_keypoints(0.1) == pytest.approx(100 * 9 / 12)
    s = table.summary()
    assert s["overall"]["pairs"] == 3 and s["overall"]["keypoints"] == 12
    assert s["per_category"]["cat"]["pck_mean_over_pairs"]["0.10"] == pytest.approx(75.0)
    assert s["per_category"]["dog"]["pck_mean_over_pairs"]["0.15"] == 0.0


def test_flags_are_grouped():
    table = PCKTable()
    table.add("a", [0.0], {"viewpoint_variation": 0, "occlusion": 1})
    table.add("a", [1.0], {"viewpoint_variation": 2, "occlusion": 1})
    flags = table.summary()["per_flag"]
    assert flags["viewpoint_variation"]["0"]["pck_mean_over_pairs"]["0.10"] == 100.0
    assert flags["viewpoint_variation"]["2"]["pck_mean_over_pairs"]["0.10"] == 0.0
    assert flags["occlusion"]["1"]["pairs"] == 2
    assert math.isnan(PCKTable().mean_over_pairs(0.1))
