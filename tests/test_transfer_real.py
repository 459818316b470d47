"""Keypoint transfer and dense flow on real PF-WILLOW pairs: they stay inside the target
image, and chunking the keypoints does not change them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from scot import SCOT, SCOTConfig
from scot.transfer import CHUNK_SLOTS, image_bounds, transfer_keypoints


@pytest.fixture(scope="module")
def lite2() -> SCOT:
    return SCOT(SCOTConfig(backbone="efficientnet-lite2", preset="pfwillow"))


def border_points(size: tuple[int, int], per_side: int = 9) -> torch.Tensor:
    """(4 * per_side, 2) points spread along the four edges of a (W, H) image, corners included."""
    w, h = float(size[0]), float(size[1])
    t = torch.linspace(0, 1, per_side)
    zeros, ones = torch.zeros(per_side), torch.ones(per_side)
    return torch.cat([torch.stack((t * w, zeros), 1), torch.stack((t * w, ones * h), 1),
                      torch.stack((zeros, t * h), 1), torch.stack((ones * w, t * h), 1)])


def outside(points: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """(..., ) bool: the point lies outside [0, bounds[0]] x [0, bounds[1]]."""
    x, y = points[..., 0], points[..., 1]
    return (x < 0) | (y < 0) | (x > bounds[0]) | (y > bounds[1])


def check_inside(result, trg_size: tuple[int, int]) -> int:
    """Assert the result's keypoints and flow lie in the target; return how many keypoints an
    unclamped transfer puts outside it."""
    assert not bool(outside(result.transferred, image_bounds(trg_size)).any()), result.transferred
    assert not bool(outside(result.transferred_resized, image_bounds(trg_size, result.trg.ratio)).any())
    flow, _ = result.flow()
    assert not bool(outside(flow, image_bounds(trg_size)).any())
    s, t = result.src, result.trg
    free = transfer_keypoints(s.boxes, t.boxes, result.best, result.keypoints * s.ratio, result.target_tl,
                              result.usable, how=result.config.transfer, confidence=result.best_confidence)
    torch.testing.assert_close(result.transferred_resized, free.clamp_min(0).minimum(
        torch.tensor(image_bounds(trg_size, t.ratio))))  # the clamp is all that changed
    return int(outside(free, image_bounds(trg_size, t.ratio)).sum())


def test_border_keypoints_of_real_pairs_land_inside_the_target(lite2, willow_rows):
    subpixel = SCOT(lite2.config.replace(subpixel=5), backbone=lite2.backbone)  # soft-argmax landing points
    escaped = 0
    for row in willow_rows[::20]:  # ten pairs, two of each class family
        with Image.open(row["src"]) as im:
            src_size = im.size
        with Image.open(row["trg"]) as im:
            trg_size = im.size
        src, trg = lite2.extract(row["src"]), lite2.extract(row["trg"])
        for model in (lite2, subpixel):
            escaped += check_inside(model.match(src, trg, border_points(src_size)), trg_size)
    assert escaped > 60  # without the clamp many do land outside: the check is not vacuous


def test_thin_images_keep_their_keypoints_inside(lite2, willow_rows, tmp_path: Path):
    row = willow_rows[0]
    with Image.open(row["src"]) as im:
        thin_src = im.convert("RGB").resize((32, 400))
    with Image.open(row["trg"]) as im:
        thin_trg = im.convert("RGB").resize((400, 32))
    for src, trg in ((thin_src, row["trg"]), (row["src"], thin_trg)):
        src_img = src if isinstance(src, Image.Image) else Image.open(src)
        trg_size = trg.size if isinstance(trg, Image.Image) else Image.open(trg).size
        result = lite2(src, trg, keypoints=border_points(src_img.size))
        check_inside(result, trg_size)


@pytest.mark.parametrize("how", ["mean", "weighted", "median"])
def test_chunked_transfer_equals_unchunked_on_a_real_pair(lite2, willow_rows, how):
    row = willow_rows[37]
    model = SCOT(lite2.config.replace(transfer=how, mutual=True), backbone=lite2.backbone)
    result = model(row["src"], row["trg"])
    s, t = result.src, result.trg
    gen = torch.Generator().manual_seed(0)
    width, height = s.size
    kps = torch.rand(3000, 2, generator=gen) * torch.tensor([width + 40.0, height + 40.0]) - 20.0  # some off every box
    assert CHUNK_SLOTS // s.n < len(kps)  # the default chunks too
    kw = dict(how=how, confidence=result.best_confidence, usable=result.usable,
              bounds=image_bounds(t.original_size, t.ratio))
    whole = transfer_keypoints(s.boxes, t.boxes, result.best, kps, chunk=len(kps), **kw)
    assert bool(torch.isfinite(whole).all())
    for chunk in (None, 7, 512):
        assert torch.equal(transfer_keypoints(s.boxes, t.boxes, result.best, kps, chunk=chunk, **kw), whole), chunk
