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


def test_soft_argmax_targets_on_a_grid():
    from scot.transfer import soft_argmax_targets

    # target grid 3 x 4, boxes with top-left at (4x, 4y)
    ht, wt = 3, 4
    tl = torch.tensor([[4.0 * (j % wt), 4.0 * (j // wt)] for j in range(ht * wt)])
    trg = torch.cat([tl, tl + 10], 1)
    conf = torch.zeros(2, ht * wt)
    conf[0, 5] = 3.0  # best (1, 1)
    conf[0, 6] = 1.0  # right neighbour -> pulls x by 1/4 of a cell
    conf[1, 0] = 2.0  # corner: the window is clamped, still finite
    conf[1, 1] = 2.0
    best = torch.tensor([5, 0])
    out = soft_argmax_targets(conf, best, (ht, wt), trg, window=3)
    torch.testing.assert_close(out[0], torch.tensor([4.0 + 1.0, 4.0]))
    assert bool(torch.isfinite(out).all())
    # no confidence in the window: falls back to the argmax box itself
    out = soft_argmax_targets(torch.zeros(1, ht * wt), torch.tensor([7]), (ht, wt), trg, window=3)
    torch.testing.assert_close(out[0], tl[7])


def test_mutual_mask_and_usable_boxes():
    from scot.transfer import mutual_mask

    conf = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7]])
    best = conf.argmax(1)
    assert mutual_mask(conf, best).tolist() == [True, False, True]
    src = boxes([0, 0, 10, 10], [0, 0, 10, 10])
    trg = boxes([50, 50, 60, 60], [0, 0, 10, 10])
    kp = torch.tensor([[5.0, 5.0]])
    both = transfer_keypoints(src, trg, torch.tensor([0, 1]), kp)
    only_first = transfer_keypoints(src, trg, torch.tensor([0, 1]), kp, usable=torch.tensor([True, False]))
    none_usable = transfer_keypoints(src, trg, torch.tensor([0, 1]), kp, usable=torch.tensor([False, False]))
    torch.testing.assert_close(only_first[0], torch.tensor([55.0, 55.0]))
    torch.testing.assert_close(none_usable, both)  # falls back to every containing box


def test_weighted_and_median_transfer():
    # three boxes contain the keypoint; their matches move it by (+10, 0), (+10, 0) and (+100, +50)
    src = boxes([0, 0, 10, 10], [2, 2, 12, 12], [4, 4, 14, 14], [50, 50, 60, 60])
    trg = boxes([10, 0, 20, 10], [12, 2, 22, 12], [104, 54, 114, 64], [0, 0, 1, 1])
    best = torch.tensor([0, 1, 2, 3])
    kp = torch.tensor([[6.0, 6.0]])
    mean = transfer_keypoints(src, trg, best, kp)
    torch.testing.assert_close(mean[0], torch.tensor([6.0 + 40.0, 6.0 + 50.0 / 3]))
    # the median ignores the one outlying match
    median = transfer_keypoints(src, trg, best, kp, how="median")
    torch.testing.assert_close(median[0], torch.tensor([16.0, 6.0]))
    # weights 1, 1, 2: the confident outlier counts twice
    conf = torch.tensor([1.0, 1.0, 2.0, 5.0])
    weighted = transfer_keypoints(src, trg, best, kp, how="weighted", confidence=conf)
    torch.testing.assert_close(weighted[0], torch.tensor([6.0 + (10 + 10 + 200) / 4, 6.0 + 100.0 / 4]))
    # all-zero confidence falls back to the plain mean instead of dividing by zero
    zero = transfer_keypoints(src, trg, best, kp, how="weighted", confidence=torch.zeros(4))
    torch.testing.assert_close(zero, mean)
    # a keypoint in no box still moves with the nearest box, for every rule
    far = torch.tensor([[80.0, 80.0]])
    for how in ("mean", "median", "weighted"):
        out = transfer_keypoints(src, trg, best, far, how=how, confidence=conf)
        torch.testing.assert_close(out[0], torch.tensor([30.0, 30.0]))


def test_one_aggregation_for_both_layouts_of_the_box_sets():
    """aggregate_shifts gives the same displacement and confidence whether a set of boxes is
    a membership row over all boxes (keypoints) or a list of gathered indices (dense
    rectangles), for every rule, with and without usable boxes; and it is the rule by hand."""
    import pytest

    from scot.transfer import RULES, aggregate_shifts

    gen = torch.Generator().manual_seed(3)
    n, r = 40, 25
    shift = torch.randn(n, 2, generator=gen, dtype=torch.float64) * 10
    conf = torch.rand(n, generator=gen, dtype=torch.float64)
    conf[:10] = 0.0  # sets of zero-confidence boxes fall back to the plain mean
    usable = torch.rand(n, generator=gen) < 0.3
    member = torch.rand(r, n, generator=gen) < 0.2
    member[torch.arange(r), torch.randint(0, n, (r,), generator=gen)] = True  # no empty set
    member[0] = False
    member[0, :4] = True  # only zero-confidence boxes
    length = int(member.sum(1).max())
    index = torch.zeros(r, length, dtype=torch.int64)
    valid = torch.zeros(r, length, dtype=torch.bool)
    for k in range(r):
        boxes = member[k].nonzero().flatten()
        index[k, : len(boxes)], valid[k, : len(boxes)] = boxes, True
    for how in RULES:
        for use in (None, usable):
            full = aggregate_shifts(member, shift, how, conf, use)
            gathered = aggregate_shifts(valid, shift, how, conf, use, index=index)
            torch.testing.assert_close(full, gathered, rtol=1e-12, atol=1e-12)
            for k in (0, 1, 7):
                boxes = member[k].nonzero().flatten()
                if use is not None and bool(use[boxes].any()):
                    boxes = boxes[use[boxes]]
                w = conf[boxes] if how == "weighted" and bool((conf[boxes] > 0).any()) else torch.ones(len(boxes),
                                                                                                      dtype=torch.float64)
                expected = (w.unsqueeze(1) * shift[boxes]).sum(0) / w.sum()
                if how == "median":
                    expected = shift[boxes].sort(0).values[(len(boxes) - 1) // 2]  # the lower middle value
                torch.testing.assert_close(full[0][k], expected, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(full[1][k], (w * conf[boxes]).sum() / w.sum(), rtol=1e-12, atol=1e-12)
    assert torch.equal(aggregate_shifts(member, shift)[1], torch.ones(r, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown transfer 'vote'"):
        aggregate_shifts(member, shift, "vote")
    with pytest.raises(ValueError, match="needs the matches' confidence"):
        aggregate_shifts(member, shift, "weighted")
