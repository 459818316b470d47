"""CAM marginals: the paper's weight levels, the linear option, and what counts as foreground."""

from __future__ import annotations

import torch

from scot.cam import BASE_WEIGHT, FOREGROUND, WEIGHT_LEVELS, foreground, marginal_weights


def _cam_with(values: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1 x len(values) CAM and the centres reading each value."""
    cam = torch.tensor([values])
    centres = torch.stack([torch.arange(len(values), dtype=torch.float32), torch.zeros(len(values))], 1)
    return cam, centres


def test_levels_are_the_papers_steps():
    values = [0.0, 0.39, 0.4, 0.41, 0.5, 0.55, 0.6, 0.61, 1.0]
    cam, centres = _cam_with(values)
    got = [round(w, 6) for w in marginal_weights(cam, centres, "levels").tolist()]
    # 0.5 by default, 0.8 above 0.4, 0.9 above 0.5, 1.0 above 0.6 (strictly above)
    assert got == [0.5, 0.5, 0.5, 0.8, 0.8, 0.9, 0.9, 1.0, 1.0]
    assert (BASE_WEIGHT, WEIGHT_LEVELS) == (0.5, ((0.4, 0.8), (0.5, 0.9), (0.6, 1.0)))


def test_linear_weighting():
    cam, centres = _cam_with([0.0, 0.25, 1.0, 1.5])
    torch.testing.assert_close(marginal_weights(cam, centres, "linear"), torch.tensor([0.5, 0.625, 1.0, 1.0]))


def test_foreground_is_the_cam_threshold_for_both_weightings():
    """Foreground reads the CAM itself, so it is the same whichever weighting makes the marginals."""
    values = [0.1, 0.4, 0.45, 0.9]
    cam, centres = _cam_with(values)
    expected = [v > FOREGROUND for v in values]
    assert foreground(cam, centres).tolist() == expected == [False, False, True, True]
    linear = marginal_weights(cam, centres, "linear")
    assert (linear >= 0.8).tolist() != expected  # the old weight-based rule would be wrong under linear weights


def test_centres_outside_the_image_are_clamped():
    cam, _ = _cam_with([0.0, 0.7])
    centres = torch.tensor([[-5.0, -3.0], [40.0, 9.0]])
    assert marginal_weights(cam, centres).tolist() == [0.5, 1.0]


def test_match_result_foreground_follows_the_cam(photo_rows):
    from scot import SCOT, SCOTConfig

    row = photo_rows[0]
    for weighting in ("levels", "linear"):
        model = SCOT(SCOTConfig(backbone="efficientnet-lite0", weights="random:1", cam_weighting=weighting))
        s, t = model.extract(row["src"]), model.extract(row["trg"])
        result = model.match(s, t, keep_plan=False)
        assert torch.equal(result.foreground(), foreground(s.cam, s.centres))
    off = SCOT(SCOTConfig(backbone="efficientnet-lite0", weights="random:1", cam=False))
    assert bool(off.match(off.extract(row["src"]), off.extract(row["trg"])).foreground().all())
