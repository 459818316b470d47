"""Dense flow against the keypoint transfer rule, identity and mirror bounds, warping and mask transfer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from scot.backbones.base import Geometry
from scot.dense import (
    blend,
    checkerboard,
    containing_range,
    dense_flow,
    fill_radius,
    flow_inside,
    identity_flow,
    pixel_coordinates,
    transfer_mask,
    warp_image,
)
from scot.hyperpixels import box_centres, receptive_field_boxes
from scot.transfer import containing_boxes, transfer_keypoints

SRC = Geometry(jump=4, rf=27, offset_x=0, offset_y=0, height=50, width=75)
TRG = Geometry(jump=4, rf=27, offset_x=2, offset_y=1, height=57, width=64)


def grid_boxes(g: Geometry) -> torch.Tensor:
    return receptive_field_boxes(g, g.height, g.width)


def random_matches(n: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    best = torch.randint(0, m, (n,), generator=gen)
    conf = torch.rand(n, generator=gen)
    conf[torch.rand(n, generator=gen) < 0.3] = 0.0  # zero weights exercise the weighted fallback
    usable = torch.rand(n, generator=gen) < 0.25
    return best, conf, usable


def sample_pixels(size: tuple[int, int], count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    flat = torch.randint(0, size[0] * size[1], (count,), generator=gen)
    return flat % size[0], torch.div(flat, size[0], rounding_mode="floor")


def reference(src, trg, best, size, rs, rt, u, v, **kw) -> torch.Tensor:
    """transfer_keypoints at original source pixels (u, v), in original target pixels."""
    xs, ys = pixel_coordinates(size, rs)
    kps = torch.stack((xs[u], ys[v]), dim=1)
    return transfer_keypoints(src, trg, best, kps, **kw) / rt


@pytest.mark.parametrize("how", ["mean", "weighted", "median"])
@pytest.mark.parametrize("with_usable", [False, True])
@pytest.mark.parametrize("with_landing", [False, True])
@pytest.mark.parametrize("size,rs", [((413, 277), 300 / 413), ((300, 200), 1.0)])
def test_flow_equals_keypoint_transfer(how, with_usable, with_landing, size, rs):
    # ratio 1.0 puts many pixels exactly on (integer) box edges: bounds are inclusive
    src, trg = grid_boxes(SRC), grid_boxes(TRG)
    best, conf, usable = random_matches(len(src), len(trg), seed=1)
    landing = None
    if with_landing:
        landing = trg[best, :2] + torch.rand(len(src), 2, generator=torch.Generator().manual_seed(2)) * 3 - 1.5
    rt = 0.61
    us = usable if with_usable else None
    flow, kappa = dense_flow(src, trg, best, (SRC.height, SRC.width), size, rs, rt, how=how,
                             confidence=conf, usable=us, target_tl=landing)
    assert flow.shape == (size[1], size[0], 2) and flow.dtype == torch.float32
    assert kappa.shape == (size[1], size[0]) and bool(torch.isfinite(flow).all())
    u, v = sample_pixels(size, 2500, seed=3)
    ref = reference(src, trg, best, size, rs, rt, u, v, target_tl=landing, usable=us, how=how, confidence=conf)
    torch.testing.assert_close(flow[v, u], ref, atol=2e-4, rtol=0)
    # kappa: confidences of the boxes that move the pixel, weighted as their shifts are
    xs, ys = pixel_coordinates(size, rs)
    inside = containing_boxes(src, torch.stack((xs[u], ys[v]), dim=1))
    assert bool(inside.any(1).all())  # this geometry covers every pixel
    if us is not None:
        preferred = inside & us.unsqueeze(0)
        inside = torch.where(preferred.any(1, keepdim=True), preferred, inside)
    weights = inside.double()
    if how == "weighted":
        positive = weights * conf.double().unsqueeze(0)
        weights = torch.where(positive.sum(1, keepdim=True) > 0, positive, weights)
    expected = (weights @ conf.double()) / weights.sum(1)
    torch.testing.assert_close(kappa[v, u].double(), expected, atol=1e-6, rtol=0)


def test_flow_outside_every_box_uses_nearest_centre():
    sparse = Geometry(jump=8, rf=3, offset_x=4, offset_y=4, height=20, width=30)  # gaps between boxes
    src = grid_boxes(sparse)
    trg = grid_boxes(TRG)
    best, conf, _ = random_matches(len(src), len(trg), seed=5)
    size, rs, rt = (331, 229), 240 / 331, 0.77
    flow, _ = dense_flow(src, trg, best, (sparse.height, sparse.width), size, rs, rt, how="weighted", confidence=conf)
    u, v = sample_pixels(size, 3000, seed=6)
    xs, ys = pixel_coordinates(size, rs)
    kps = torch.stack((xs[u], ys[v]), dim=1)
    d = torch.cdist(kps.double(), box_centres(src).double())
    two = d.topk(2, largest=False).values
    clear = (two[:, 1] - two[:, 0]) > 1e-3  # leave out exact ties, which float32 cdist may break either way
    outside = ~((kps[:, :1] >= src[:, 0]) & (kps[:, :1] <= src[:, 2]) & (kps[:, 1:] >= src[:, 1]) & (kps[:, 1:] <= src[:, 3])).any(1)
    assert int((outside & clear).sum()) > 1000  # the fallback is what is tested here
    ref = transfer_keypoints(src, trg, best, kps, how="weighted", confidence=conf) / rt
    torch.testing.assert_close(flow[v, u][clear], ref[clear], atol=2e-4, rtol=0)


def test_flow_when_no_pixel_is_in_any_box():
    far = Geometry(jump=4, rf=3, offset_x=500, offset_y=400, height=6, width=7)
    src = grid_boxes(far)
    best, conf, _ = random_matches(len(src), len(src), seed=8)
    flow, kappa = dense_flow(src, src, best, (far.height, far.width), (40, 30), 1.0, 1.0, confidence=conf)
    # every pixel moves with the box whose centre is nearest: the top-left one, at (500, 400)
    shift = src[best[0], :2] - src[0, :2]
    torch.testing.assert_close(flow, identity_flow((40, 30)) + shift, atol=1e-5, rtol=0)
    assert bool((kappa == conf[0]).all())


@pytest.mark.parametrize("how", ["mean", "weighted", "median"])
def test_identity_matches_give_identity_flow(how):
    # best[i] = i on identical grids: every shift is tl - tl = 0 exactly, so the resized-frame
    # transfer is exact and the only error is float32 rounding of u * rho (relative 2^-24,
    # rho itself rounded to float32: another 2^-24) and of the float32 output (2^-24):
    # |flow - (u, v)| <= 3 * 2^-24 * |(u, v)| < 2^-22 * |(u, v)|.
    src = grid_boxes(SRC)
    n = len(src)
    conf = torch.rand(n)
    usable = torch.rand(n) < 0.5
    size, rho = (413, 277), 300 / 413
    flow, kappa = dense_flow(src, src, torch.arange(n), (SRC.height, SRC.width), size, rho, rho, how=how,
                             confidence=conf, usable=usable)
    ident = identity_flow(size)
    err = (flow - ident).abs()
    assert bool((err <= 2.0**-22 * ident.abs()).all()), float(err.max())
    # a different target ratio scales the identity of the resized frames: u * rho_s / rho_t
    flow2, _ = dense_flow(src, src, torch.arange(n), (SRC.height, SRC.width), size, rho, 0.5, how=how, confidence=conf)
    torch.testing.assert_close(flow2, ident * (rho / 0.5), atol=1e-4, rtol=1e-6)


def mirror_best(g: Geometry) -> torch.Tensor:
    """best mapping grid column x to w-1-x on the same row: a horizontal flip."""
    rows, cols = torch.meshgrid(torch.arange(g.height), torch.arange(g.width), indexing="ij")
    return (rows * g.width + (g.width - 1 - cols)).reshape(-1)


def test_mirror_matches_give_mirrored_flow():
    # Interior pixel p' = p - o_x lies in columns [c0, c1] with c0 j in [p' - r//2, p' - r//2 + j)
    # and c1 j in (p' + r//2 - j, p' + r//2], so (c0 + c1) j / 2 is within j/2 of p'.  The
    # mean shift (w - 1 - c0 - c1) j then lands p within j of the mirror (w - 1) j + 2 o_x - p,
    # i.e. within j / rho_t in original pixels; rows are untouched (shift 0).
    src = grid_boxes(SRC)
    size, rho = (250, 170), 300 / 250
    flow, _ = dense_flow(src, src, mirror_best(SRC), (SRC.height, SRC.width), size, rho, rho)
    xs, ys = pixel_coordinates(size, rho)
    half = SRC.rf // 2
    axis = (SRC.width - 1) * SRC.jump + 2 * SRC.offset_x
    inner = (xs >= SRC.offset_x + half) & (xs <= SRC.offset_x + (SRC.width - 1) * SRC.jump - half)
    err = (flow[:, inner, 0] - (axis - xs[inner]) / rho).abs()
    assert float(err.max()) < SRC.jump / rho
    assert float(err.max()) > 0.25 * SRC.jump / rho  # the bound is not vacuous: the staircase shows
    torch.testing.assert_close(flow[..., 1], ys.unsqueeze(1).expand(-1, size[0]) / rho, atol=1e-4, rtol=0)


def blob_mask(size: tuple[int, int], labels: tuple[int, int, int]) -> np.ndarray:
    """A (H, W) mask: an off-centre ellipse and a rectangle on background labels[0]."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.full((h, w), labels[0], dtype=np.uint8)
    mask[((xx - 0.3 * w) / (0.18 * w)) ** 2 + ((yy - 0.45 * h) / (0.3 * h)) ** 2 <= 1] = labels[1]
    mask[int(0.2 * h):int(0.7 * h), int(0.62 * w):int(0.85 * w)] = labels[2]
    return mask


def test_mask_labels_are_kept():
    src, trg = grid_boxes(SRC), grid_boxes(TRG)
    best, conf, _ = random_matches(len(src), len(trg), seed=9)
    size, rs, rt = (250, 170), 300 / 250, 0.9
    tsize = (290, 250)
    flow, _ = dense_flow(src, trg, best, (SRC.height, SRC.width), size, rs, rt, how="weighted", confidence=conf)
    mask = blob_mask(size, (0, 3, 200))
    out = transfer_mask(torch.from_numpy(mask), flow, tsize)
    assert out.shape == (tsize[1], tsize[0]) and out.dtype == torch.uint8
    assert set(torch.unique(out).tolist()) <= {0, 3, 200}
    assert {3, 200} <= set(torch.unique(out).tolist())  # random matches scatter both objects, they do not vanish
    binary = transfer_mask(torch.from_numpy(mask > 0), flow, tsize)
    assert binary.dtype == torch.bool and bool(binary.any())


def test_mask_through_identity_flow_is_unchanged():
    mask = blob_mask((120, 90), (5, 1, 9))
    out = transfer_mask(mask, identity_flow((120, 90)), (120, 90))
    assert torch.equal(out, torch.from_numpy(mask))


def test_mask_through_mirror_matches_lands_mirrored():
    # Each source pixel lands within j / rho (mirror flow bound, x only) of its mirror image
    # and is rounded to a pixel (<= 0.5); a hole takes the label of a landing within the fill
    # radius R; the expected mask is pulled back with rounding (<= 0.5).  A target pixel can
    # therefore only disagree with the mirrored mask when a pixel of another label is within
    # B = j / rho + R + 1 of it (border columns aside, where the flow is not a mirror).
    src = grid_boxes(SRC)
    size, rho = (250, 170), 300 / 250
    flow, _ = dense_flow(src, src, mirror_best(SRC), (SRC.height, SRC.width), size, rho, rho)
    mask = blob_mask(size, (0, 4, 7))
    out = transfer_mask(mask, flow, size).numpy()
    axis = ((SRC.width - 1) * SRC.jump + 2 * SRC.offset_x) / rho
    back = np.rint(axis - np.arange(size[0])).astype(int)  # target column x comes from source column axis - x
    ok = (back >= 0) & (back < size[0])
    expected = np.zeros_like(mask)
    expected[:, ok] = mask[:, back[ok]]
    bound = SRC.jump / rho + fill_radius(flow, torch.from_numpy(mask != 0)) + 1.0
    wrong = out != expected
    near_other = np.zeros_like(wrong)
    for label in np.unique(expected):
        dist = ndimage.distance_transform_edt(expected == label)  # distance to the nearest other label
        near_other |= (expected == label) & (dist <= bound)
    half = SRC.rf // 2
    inner = np.zeros(size[0], dtype=bool)
    lo, hi = int(np.ceil((SRC.offset_x + half) / rho)), int(((SRC.width - 1) * SRC.jump - half) / rho)
    inner[int(np.ceil(axis - hi)):int(axis - lo) + 1] = True
    assert not (wrong & ~near_other)[:, inner].any()
    assert wrong[:, inner].mean() < 0.05
    assert (out[:, inner] == 4).sum() > 0.9 * (expected[:, inner] == 4).sum()


def test_mask_zoom_fills_holes_without_growing():
    # flow = 2 (u, v): the object lands on every other target pixel; the enclosed holes are
    # filled and the outline stays that of the scaled object (within the 1 px of the lattice)
    size = (60, 40)
    mask = np.zeros((40, 60), dtype=np.int32)
    mask[10:30, 15:45] = 2
    out = transfer_mask(mask, identity_flow(size) * 2, (120, 80)).numpy()
    assert (out[20:59, 30:89] == 2).all()  # splats at 20..58 x 30..88, every gap filled
    assert (out[:19] == 0).all() and (out[60:] == 0).all() and (out[:, :29] == 0).all() and (out[:, 90:] == 0).all()
    unfilled = transfer_mask(mask, identity_flow(size) * 2, (120, 80), radius=0).numpy()
    assert (unfilled[21:58:2, :] == 0).all()  # without filling the odd rows stay empty


def test_scattered_background_does_not_punch_holes():
    # the object moves by (+7, +4); background pixels land at random, many on the object
    gen = torch.Generator().manual_seed(4)
    size = (80, 60)
    mask = np.zeros((60, 80), dtype=np.int64)
    mask[15:45, 20:60] = 1
    flow = identity_flow(size) + torch.tensor([7.0, 4.0])
    noise = torch.rand(60, 80, 2, generator=gen) * torch.tensor([80.0, 60.0])
    flow = torch.where(torch.from_numpy(mask == 1).unsqueeze(2), flow, noise)
    out = transfer_mask(mask, flow, size).numpy()
    assert (out[19:49, 27:67] == 1).all() and out.sum() == 30 * 40


def test_warp_identity_and_translation():
    img = torch.rand(3, 40, 56)
    same = warp_image(img, identity_flow((56, 40)))
    torch.testing.assert_close(same, img, atol=1e-5, rtol=0)
    shifted = identity_flow((56, 40)) + torch.tensor([5.0, -3.0])  # out[v, u] = img[v - 3, u + 5]
    out = warp_image(img, shifted)
    torch.testing.assert_close(out[:, 3:, :-5], img[:, :-3, 5:], atol=1e-5, rtol=0)
    assert float(out[:, :3].abs().max()) == 0.0 and float(out[:, :, -4:].abs().max()) == 0.0
    inside = flow_inside(shifted, (56, 40))
    assert inside.sum() == (40 - 3) * (56 - 5)


def test_blend_and_checkerboard():
    a, b = torch.zeros(3, 8, 12), torch.ones(3, 8, 12)
    board = checkerboard(a, b, tiles=2)
    assert float(board[:, :4, :6].max()) == 0.0 and float(board[:, :4, 6:].min()) == 1.0
    assert float(board[:, 4:, :6].min()) == 1.0 and float(board[:, 4:, 6:].max()) == 0.0
    mask = torch.zeros(8, 12, dtype=torch.bool)
    mask[:, :3] = True
    mixed = blend(a, b, alpha=0.25, mask=mask)
    assert float(mixed[:, :, :3].min()) == 0.25 and float(mixed[:, :, 3:].max()) == 0.0


def test_containing_range_is_inclusive_and_empty_when_outside():
    lo, hi = torch.tensor([0.0, 4.0, 8.0]), torch.tensor([5.0, 9.0, 13.0])
    first, last = containing_range(torch.tensor([-1.0, 0.0, 4.0, 5.0, 6.0, 13.0, 13.5]), lo, hi)
    assert first.tolist() == [0, 0, 0, 0, 1, 2, 3]
    assert last.tolist() == [-1, 0, 1, 1, 1, 2, 2]


def test_errors():
    src = grid_boxes(SRC)
    with pytest.raises(ValueError, match="confidence"):
        dense_flow(src, src, torch.arange(len(src)), (SRC.height, SRC.width), (10, 10), 1.0, 1.0, how="weighted")
    with pytest.raises(ValueError, match="grid"):
        dense_flow(src, src, torch.arange(len(src)), (SRC.width, SRC.height), (10, 10), 1.0, 1.0)
    with pytest.raises(ValueError, match="unknown transfer"):
        dense_flow(src, src, torch.arange(len(src)), (SRC.height, SRC.width), (10, 10), 1.0, 1.0, how="mode")
