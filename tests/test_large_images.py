"""Large images: pictures are drawn from reduced decodes whatever the size, and the mask
transfer works in bounded temporaries with the same result as the plain algorithm."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

import scot.dense.mask as mask_module
from scot.backbones.base import Geometry
from scot.cli import app
from scot.demo import sample_photo
from scot.dense import bridged, dense_flow, fill_radius, identity_flow, transfer_mask
from scot.hyperpixels import receptive_field_boxes
from scot.image import load_image, load_picture, picture_factor
from scot.outputs import WARP_SIDE
from scot.viz2d import GAP

runner = CliRunner()


def smooth_array(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([x / w * 255, y / h * 255, (np.sin(x / 37) * np.cos(y / 53) + 1) * 127], axis=2).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_pictures_of_any_size_above_the_side_are_decoded_reduced(tmp_path, fmt):
    # 3,100 px: under four times the side, so load_image(max_side) would decode it whole
    arr = smooth_array(1800, 3100)
    Image.fromarray(arr).save(tmp_path / f"a.{fmt}", **({"quality": 95} if fmt == "jpg" else {}))
    assert load_image(tmp_path / f"a.{fmt}", max_side=1600).decoded_size == (3100, 1800)
    pic = load_picture(tmp_path / f"a.{fmt}", 1600)
    assert picture_factor(3100, 1800, 1600) == 2 and pic.scale == pytest.approx(1 / 2)
    assert pic.size == (3100, 1800) and pic.decoded_size == (1550, 900)
    full = load_image(tmp_path / f"a.{fmt}").tensor
    assert float((pic.tensor - F.avg_pool2d(full[None], 2)[0]).abs().mean()) < 0.01
    # a factor the JPEG decoder cannot make alone (3: DCT scaling by 2, then a box filter by 2)
    assert picture_factor(3100, 1800, 1100) == 3
    assert max(load_picture(tmp_path / f"a.{fmt}", 1100).decoded_size) <= 1100
    small = load_picture(tmp_path / f"a.{fmt}", 4000)  # smaller than the side: as it is
    assert small.scale == 1.0 and torch.equal(small.tensor, full)


def reference_mask(labels: np.ndarray, flow: np.ndarray, target_size: tuple[int, int], radius: float,
                   background: int = 0) -> np.ndarray:
    """The mask transfer written plainly over whole arrays: every voting pixel's vote, a
    majority per target pixel (ties to the lowest label), holes filled over the whole frame."""
    wt, ht = target_size
    x, y = np.rint(flow[..., 0].astype(np.float64)), np.rint(flow[..., 1].astype(np.float64))
    ok = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (y >= 0) & (x <= wt - 1) & (y <= ht - 1)
    ok &= labels != background
    winner = np.full((ht, wt), -1, dtype=np.int64)
    votes: dict[tuple[int, int], dict[int, int]] = {}
    for yy, xx, lab in zip(y[ok].astype(int), x[ok].astype(int), labels[ok].tolist()):
        cell = votes.setdefault((yy, xx), {})
        cell[lab] = cell.get(lab, 0) + 1
    for (yy, xx), cell in votes.items():
        winner[yy, xx] = min(cell, key=lambda lab: (-cell[lab], lab))
    holes = winner < 0
    dist, (iy, ix) = ndimage.distance_transform_edt(holes, return_indices=True)
    fill = holes & bridged(~holes, radius) & (dist <= radius)
    winner = np.where(fill, winner[iy, ix], winner)
    return np.where(winner >= 0, winner, background)


@pytest.mark.parametrize("background", [0, 7])
def test_blockwise_mask_transfer_equals_the_plain_algorithm(monkeypatch, background):
    g = Geometry(jump=4, rf=27, offset_x=0, offset_y=0, height=40, width=55)
    boxes = receptive_field_boxes(g, g.height, g.width)
    gen = torch.Generator().manual_seed(3)
    best = (torch.arange(len(boxes)) + torch.randint(-60, 60, (len(boxes),), generator=gen)).clamp(0, len(boxes) - 1)
    size, target = (230, 160), (250, 190)
    flow, _ = dense_flow(boxes, boxes, best, (g.height, g.width), size, 0.95, 0.9, target_size=target)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    labels = np.full((size[1], size[0]), background, dtype=np.int64)
    labels[((xx - 90) / 60.0) ** 2 + ((yy - 80) / 50.0) ** 2 <= 1] = 3
    labels[30:110, 140:200] = 40000  # a 16-bit label
    labels[120:150, 20:60] = 5
    radius = fill_radius(flow, torch.from_numpy(labels != background))
    expected = reference_mask(labels, flow.numpy(), target, radius, background)
    monkeypatch.setattr(mask_module, "_BLOCK", 1000)  # blocks of a few rows: many of them
    out = transfer_mask(labels, flow, target, background=background)
    assert out.dtype == torch.int64 and np.array_equal(out.numpy(), expected)
    assert {3, 5, 40000} <= set(np.unique(expected).tolist())
    wide = labels.astype(np.int64) * 10**12  # values beyond 16 bits take the sorting path: same result
    out = transfer_mask(wide, flow, target, background=background * 10**12)
    assert np.array_equal(out.numpy(), expected * 10**12)


def test_mask_transfer_temporaries_stay_small(monkeypatch):
    # 1,600 x 1,200 source and target, a flow close to the identity, a label on most pixels.
    # In blocks of 65,536 pixels (the default is 16 times that, for larger images) the NumPy
    # temporaries (tracemalloc counts them) stay within 60 bytes per pixel, the votes and the
    # result included; the whole-array algorithm took 110
    monkeypatch.setattr(mask_module, "_BLOCK", 1 << 16)
    w, h = 1600, 1200
    labels = np.zeros((h, w), dtype=np.int64)
    labels[100:1100, 100:1500] = 1
    labels[400:800, 600:900] = 2
    flow = identity_flow((w, h)) * torch.tensor([0.999, 1.001])
    tracemalloc.start()
    try:
        out = transfer_mask(labels, flow, (w, h))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert int((out.numpy() == 2).sum()) > 0.99 * 400 * 300
    assert peak < 60 * w * h, peak / (w * h)


def test_mask_view_of_a_large_source_is_drawn_reduced(tmp_path: Path):
    # a 4,000 x 3,000 source (12 MP, under the 6,400 px from which the pipeline's decode is
    # reduced) and a 300-px target: the mask is the target's size, its picture at most
    # WARP_SIDE per image
    with Image.open(sample_photo()) as im:
        photo = im.convert("RGB")
    big = photo.crop((0, 0, 512, 384)).resize((4000, 3000), Image.Resampling.BILINEAR)
    big.save(tmp_path / "big.jpg", quality=90)
    photo.crop((20, 10, 420, 310)).resize((300, 225)).save(tmp_path / "small.png")
    mask = np.zeros((3000, 4000), dtype=np.uint8)
    mask[600:2600, 800:3200] = 1
    mask[1000:1800, 1500:2500] = 2
    Image.fromarray(mask).save(tmp_path / "mask.png")
    res = runner.invoke(app, ["match", str(tmp_path / "big.jpg"), str(tmp_path / "small.png"), "-o",
                              str(tmp_path / "out"), "--backbone", "efficientnet-lite0", "--threads", "1",
                              "--no-plot", "--mask", str(tmp_path / "mask.png")])
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "out" / "big__small.mask.png") as moved:
        assert moved.size == (300, 225) and set(np.unique(np.asarray(moved)).tolist()) <= {0, 1, 2}
        assert int((np.asarray(moved) == 2).sum()) > 0
    with Image.open(tmp_path / "out" / "big__small.mask-view.png") as view:
        assert view.height <= WARP_SIDE and view.width <= 2 * WARP_SIDE + GAP, view.size
