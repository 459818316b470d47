"""Keypoint transfer on hand-built boxes."""

from __future__ import annotations

import torch

from scot.transfer import best_matches, containing_boxes, transfer_keypoints


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_single_containing_box_moves_rigidly():
    src = boxes([0, 0, 10, 10], [20, 20, 30, 30])
    trg = boxes([100, 50, 110, 60], [5, 5, 15, 15])
    best = torch.tensor([0, 1])
    out = transfer_keypoints(src, trg, best, torch.tensor([[3.0, 4.0], [25.0, 21.0]]))
    torch.testing.assert_close(out, torch.tensor([[103.0, 54.0], [10.0, 6.0]]))


def test_mean_over_all_containing_boxes_with_inclusive_bounds():
    src = boxes([0, 0, 10, 10], [10, 0, 20, 10], [30, 30, 40, 40])
    trg = boxes([50, 50, 60, 60], [0, 100, 10, 110], [0, 0, 1, 1])
    best = torch.tensor([0, 1, 2])
    # x = 10 lies on the shared edge of boxes 0 and 1 -> both count
    out = transfer_keypoints(src, trg, best, torch.tensor([[10.0, 5.0]]))
    pred0 = torch.tensor([50.0, 50.0]) + torch.tensor([10.0, 5.0]) - torch.tensor([0.0, 0.0])
    pred1 = torch.tensor([0.0, 100.0]) + torch.tensor([10.0, 5.0]) - torch.tensor([10.0, 0.0])
    torch.testing.assert_close(out[0], (pred0 + pred1) / 2)
    inside = containing_boxes(src, torch.tensor([[10.0, 5.0], [20.0, 10.0], [20.01, 10.0]]))
    assert inside.tolist() == [[True, True, False], [False, True, False], [False, False, False]]


def test_no_containing_box_falls_back_to_nearest_centre():
    src = boxes([0, 0, 10, 10], [100, 100, 110, 110])
    trg = boxes([40, 40, 50, 50], [0, 0, 10, 10])
    best = torch.tensor([1, 0])
    kp = torch.tensor([[60.0, 20.0], [95.0, 99.0]])  # nearest centres: box 0 (5, 5) and box 1 (105, 105)
    out = transfer_keypoints(src, trg, best, kp)
    torch.testing.assert_close(out, torch.tensor([[60.0, 20.0], [35.0, 39.0]]))
    assert bool(torch.isfinite(out).all())


def test_empty_keypoints_and_argmax():
    src = boxes([0, 0, 10, 10])
    assert transfer_keypoints(src, src, torch.tensor([0]), torch.zeros(0, 2)).shape == (0, 2)
    idx, val = best_matches(torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.4, 0.3]]))
    assert idx.tolist() == [1, 0] and torch.allclose(val, torch.tensor([0.7, 0.5]))
