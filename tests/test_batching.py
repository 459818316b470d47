"""Batched description: images of one resized size share their network passes, and each
image's hyperpixels are what it gets alone."""

from __future__ import annotations

import pytest
import torch

import scot.features
from scot import SCOT, SCOTConfig
from scot.features import observe_batch, pass_bytes
from scot.image import load_image


@pytest.fixture(scope="module")
def lite2():
    return SCOT(SCOTConfig(backbone="efficientnet-lite2", preset="pfpascal"))


@pytest.fixture(scope="module")
def images(willow_rows) -> list:
    """Five PF-WILLOW images: the first four of one class, then one of a class with another size."""
    paths: list = []
    for row in willow_rows:
        for p in (row["src"], row["trg"]):
            if p not in paths and (len(paths) < 4 or willow_rows[0]["cls"] != row["cls"]):
                paths.append(p)
        if len(paths) >= 4 and willow_rows[0]["cls"] != row["cls"]:
            break
    return paths[:5]


@pytest.mark.slow
def test_extract_many_equals_extract_one_by_one(lite2, images, monkeypatch):
    flips = [False, True, False, False, True]
    batches: list[int] = []
    real = scot.features.observe_batch

    def counting(backbone, images01, *args, **kwargs):
        batches.append(len(images01))
        return real(backbone, images01, *args, **kwargs)

    monkeypatch.setattr(scot.features, "observe_batch", counting)
    many = lite2.extract_many(images, flips)
    sizes = [h.size for h in many]
    assert len(set(sizes)) >= 2, sizes  # the set mixes sizes, so grouping and re-ordering are exercised
    assert max(batches) >= 2 and sum(batches) == len(images)
    for path, flip, h in zip(images, flips, many):
        alone = lite2.extract(path, flip=flip)
        assert h.name == alone.name and h.size == alone.size and h.top_classes == alone.top_classes
        torch.testing.assert_close(h.dense, alone.dense, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(h.cam, alone.cam, rtol=1e-4, atol=1e-6)
        assert torch.equal(h.weights, alone.weights) and torch.equal(h.boxes, alone.boxes)


def test_batches_follow_the_memory_budget(lite2, images, monkeypatch):
    sizes: list[int] = []

    def fake(backbone, images01, ids, *, ratios, original_sizes, names, **kwargs):
        sizes.append(len(images01))
        return [f"view of {n}" for n in names]

    monkeypatch.setattr(scot.features, "observe_batch", fake)
    same = [images[0]] * 3
    h, w = load_image(images[0]).resized(300)[0].shape[1:]
    per_image = pass_bytes(lite2.backbone, 2 * h, 2 * w)  # the largest pass: the CAM's 2x input
    assert lite2.extractor.views(same, batch_bytes=3 * per_image) == [f"view of {load_image(images[0]).name}"] * 3
    assert sizes == [3]
    sizes.clear()
    lite2.extractor.views(same, batch_bytes=2 * per_image)
    assert sizes == [2, 1]
    sizes.clear()
    lite2.extractor.views(same, batch_bytes=1)
    assert sizes == [1, 1, 1]


def test_observe_batch_refuses_mixed_sizes(lite2):
    with pytest.raises(ValueError, match="one image size"):
        observe_batch(lite2.backbone, [torch.rand(3, 40, 50), torch.rand(3, 50, 40)], [4], ratios=[1, 1],
                      original_sizes=[(50, 40), (40, 50)], names=["a", "b"])


def test_views_needs_one_flip_per_image(lite2, images):
    with pytest.raises(ValueError, match="2 images but 1 flips"):
        lite2.extractor.views(images[:2], flips=[True])
