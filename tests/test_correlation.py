"""Factorized correlation: the cosines of the never-built upsampled hyperpixels, exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scot.backbones import build_backbone
from scot.cost import Correlation
from scot.features import factorize_groups
from scot.features import NetworkView, describe, observe
from scot.hyperpixels import bilinear_matrix


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet-lite0", "random:3")


def random_view(backbone, ids, size, seed):
    """Random maps shaped as ``backbone`` gives them for a (W, H) image."""
    g = torch.Generator().manual_seed(seed)
    W, H = size
    maps = {}
    for i in ids:
        geo = backbone.geometry(i, H, W)
        maps[i] = torch.randn(1, backbone.channels(i), geo.height, geo.width, generator=g) + 0.3
    return NetworkView(maps, None, [], size, 1.0, size)


def definition(view, ids, center):
    """Upsample every map to the first id's grid, concatenate, centre, normalise (the classic table)."""
    ids = sorted(ids)
    h, w = view.maps[ids[0]].shape[-2:]
    table = torch.cat([F.interpolate(view.maps[i], (h, w), mode="bilinear", align_corners=True)[0].flatten(1).t()
                       for i in ids], 1)
    if center:
        table = table - table.mean(0)
    return F.normalize(table, dim=1)


LAYOUTS = {
    "all fine": (2, 3),  # stride 4 only: nothing to factorize
    "mixed": (3, 5),  # stride 4 + stride 8
    "several groups": (2, 5, 8, 12, 16),  # strides 4, 8, 16, 32 (two ids at 32)
    "coarse grid": (5, 9, 16),  # the grid itself at stride 8
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("sizes", [((61, 47), (61, 47)), ((61, 47), (53, 71))], ids=["same size", "odd sizes"])
def test_factorized_equals_dense(lite0, layout, center, sizes):
    ids = LAYOUTS[layout]
    views = [random_view(lite0, ids, size, seed) for seed, size in enumerate(sizes)]
    expected = definition(views[0], ids, center) @ definition(views[1], ids, center).t()
    for mode in ("never", "auto", "always"):
        s, t = (describe(v, lite0, ids, center=center, factorize=mode) for v in views)
        got = Correlation(s, t).full().flip(1)  # columns: target cells in reverse order
        assert (got - expected).abs().max() <= 1e-5, mode
    if layout != "all fine":
        assert describe(views[0], lite0, ids, factorize="always").factorized


def test_multiscale_features_factorize_too(lite0):
    """Features averaged over input scales (observe) correlate the same through either path."""
    g = torch.Generator().manual_seed(5)
    images = [torch.rand(3, 47, 61, generator=g), torch.rand(3, 55, 41, generator=g)]
    ids = (2, 5, 9, 13)
    for scales in ((1.0,), (1.0, 1.5, 2.0)):
        views = [observe(lite0, im, ids, ratio=1.0, original_size=(im.shape[2], im.shape[1]), use_cam=False,
                         feature_scales=scales) for im in images]
        dense = [describe(v, lite0, ids, center=True, factorize="never") for v in views]
        fact = [describe(v, lite0, ids, center=True, factorize="always") for v in views]
        diff = Correlation(*fact).full() - Correlation(*dense).full()
        assert diff.abs().max() <= 1e-5, scales
        torch.testing.assert_close(dense[0].fused(), definition(views[0], ids, True), atol=1e-6, rtol=1e-5)


def test_blocks_fill_strided_slices_and_scale(lite0):
    """Any block of source rows, written into a slice of a padded batch buffer, with a scale."""
    ids = LAYOUTS["several groups"]
    s, t = (describe(random_view(lite0, ids, size, k), lite0, ids, factorize="always")
            for k, size in enumerate(((61, 47), (53, 71))))
    full = Correlation(s, t).full()
    hs, ws = s.grid
    corr = Correlation(s, t, scale=3.5)
    buffer = torch.full((s.n + 7, t.n + 9), 123.0)
    for y0, y1 in ((0, 2), (2, hs - 1), (hs - 1, hs)):
        corr.fill(buffer[y0 * ws : y1 * ws, : t.n], y0, y1)
    torch.testing.assert_close(buffer[: s.n, : t.n], 3.5 * full, atol=1e-5, rtol=1e-5)
    assert bool((buffer[s.n :] == 123.0).all()) and bool((buffer[:, t.n :] == 123.0).all())


def test_zero_features_have_cosine_zero(lite0):
    ids = (3, 5)
    v = random_view(lite0, ids, (61, 47), 0)
    for m in v.maps.values():
        m.zero_()
    s = describe(v, lite0, ids, factorize="always")
    t = describe(random_view(lite0, ids, (61, 47), 1), lite0, ids, factorize="always")
    assert bool((s.inv_norms == 0).all())
    assert float(Correlation(s, t).full().abs().max()) == 0.0


def test_bilinear_matrix_is_interpolate():
    x = torch.randn(2, 3, 5, 7)
    up = F.interpolate(x, (13, 20), mode="bilinear", align_corners=True)
    via = torch.einsum("yk,xl,bckl->bcyx", bilinear_matrix(13, 5), bilinear_matrix(20, 7), x)
    torch.testing.assert_close(via, up, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(bilinear_matrix(9, 4).sum(1), torch.ones(9))


def test_path_choice_follows_the_cost_estimate():
    # ResNet-101's PF ids: 256 channels on the grid, 6,144 at stride 16: factorize the deep group
    assert factorize_groups([256, 6144], [(75, 75), (19, 19)]) == [False, True]
    # a thin stride-8 group costs more through its 38 native columns than its 48 channels
    assert factorize_groups([24, 48, 240], [(75, 75), (38, 38), (19, 19)]) == [False, False, True]
    assert factorize_groups([24, 48], [(75, 75), (38, 38)], "always") == [False, True]
    assert factorize_groups([24, 48], [(75, 75), (38, 38)], "never") == [False, False]
    with pytest.raises(ValueError):
        factorize_groups([24], [(75, 75)], "sometimes")
