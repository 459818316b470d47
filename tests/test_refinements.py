"""The refinements the EfficientNet-Lite presets adopt: centred features and two-way matching."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scot import SCOT, SCOTConfig, ScotError
from scot.backbones import build_backbone
from scot.features import NetworkView, describe


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet-lite0", None)


@pytest.fixture(scope="module")
def pair(lite0, photo_rows):
    model = SCOT(SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow", symmetric=False), backbone=lite0)
    row = photo_rows[12]  # squashed -> photo
    return model.extract(row["src"]), model.extract(row["trg"]), row["src_kps"]


def test_presets_adopt_the_refinements_only_for_efficientnet_lite():
    for preset in ("pfwillow", "pfpascal", "spair"):
        lite = SCOTConfig(preset=preset).resolve("efficientnet-lite2")
        assert (lite.center_features, lite.symmetric, lite.transfer) == (True, True, "weighted")
    for preset, backbone in (("pfwillow", "resnet101"), ("pfpascal", "resnet50"), ("spair", "resnet101")):
        cfg = SCOTConfig(preset=preset).resolve(backbone)
        assert (cfg.center_features, cfg.symmetric, cfg.transfer) == (False, False, "mean")  # the paper
    # explicit options win over the preset
    cfg = SCOTConfig(preset="pfwillow", symmetric=False, transfer="median").resolve("efficientnet-lite0")
    assert (cfg.center_features, cfg.symmetric, cfg.transfer) == (True, False, "median")


def test_refinement_options_are_checked():
    with pytest.raises(ScotError, match="transfer: 'vote' is not one of mean, weighted, median"):
        SCOTConfig(transfer="vote")
    with pytest.raises(ScotError, match="symmetric: two-way matching .* cannot be combined with low memory"):
        SCOTConfig(symmetric=True, low_memory=True)
    # low memory streams one way: the preset's two-way matching is dropped, with a notice
    cfg = SCOTConfig(preset="pfwillow", low_memory=True)
    assert cfg.resolve("efficientnet-lite2").symmetric is False and cfg.dropped_by_low_memory("efficientnet-lite2")
    assert not cfg.dropped_by_low_memory("resnet101")


def test_centring_removes_what_every_hyperpixel_shares(lite0):
    """Centred features ignore a constant added to every hyperpixel of an image."""
    torch.manual_seed(0)
    maps = {3: torch.randn(1, 24, 6, 5), 8: torch.randn(1, 80, 3, 3)}
    shifted = {i: m + torch.randn(1, m.shape[1], 1, 1) * 5 for i, m in maps.items()}
    views = [NetworkView(m, None, [], (20, 24), 1.0, (20, 24)) for m in (maps, shifted)]
    plain = [describe(v, lite0, (3, 8)).fused() for v in views]
    centred = [describe(v, lite0, (3, 8), center=True).fused() for v in views]
    assert not torch.allclose(plain[0], plain[1], atol=1e-3)
    torch.testing.assert_close(centred[0], centred[1], atol=1e-5, rtol=1e-4)
    # the definition: upsample, concatenate, subtract the grid mean, normalise
    table = torch.cat([F.interpolate(m, (6, 5), mode="bilinear", align_corners=True)[0].flatten(1).t() for m in maps.values()], 1)
    torch.testing.assert_close(centred[0], F.normalize(table - table.mean(0), dim=1), atol=1e-6, rtol=1e-5)


def test_two_way_matching_adds_the_reverse_confidences(lite0, pair):
    """symmetric = forward RHM confidence / its max + (target->source confidence)^T / its max."""
    s, t, kps = pair
    one_way = SCOT(SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow", symmetric=False), backbone=lite0)
    two_way = SCOT(SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow", symmetric=True), backbone=lite0)
    fwd = one_way.match(s, t, keep_plan=True).confidence
    back = one_way.match(t, s, keep_plan=True).confidence
    expected = fwd / fwd.max() + back.T / back.max()
    got = two_way.match(s, t, kps, keep_plan=True)
    # the reverse votes come from the forward kernel (no transposed copy): equal up to rounding
    torch.testing.assert_close(got.confidence, expected, atol=1e-4, rtol=1e-4)
    assert float((got.best == expected.argmax(1)).float().mean()) > 0.999
    assert not torch.equal(got.best, fwd.argmax(1))  # and the reverse direction does change matches
    # the plan itself is the forward one, untouched by the combination
    torch.testing.assert_close(got.votes, one_way.match(s, t, keep_plan=True).votes)
    # any other solver setting solves the transposed problem explicitly: the same result
    # (here the log-domain solver, whose one iteration equals the plain one up to rounding)
    explicit = SCOT(two_way.config.replace(sinkhorn_mode="log"), backbone=lite0)
    torch.testing.assert_close(explicit.match(s, t, keep_plan=True).confidence, expected, atol=1e-4, rtol=1e-4)
    # without keep_plan the result is the same
    lean = two_way.match(s, t, kps, keep_plan=False)
    assert torch.equal(lean.best, got.best)
    torch.testing.assert_close(lean.transferred, got.transferred)
