"""Mirror-aware matching (``flip='auto'``) on real PF-WILLOW images with the real Lite2 weights."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import one_line_error
from scot import SCOT, SCOTConfig, ScotError
from scot.cli import app
from scot.image import load_image
from scot.mirror import left_right_order, mirror_pixels

CONFIG = dict(backbone="efficientnet-lite2", preset="pfwillow")


@pytest.fixture(scope="module")
def plain():
    return SCOT(SCOTConfig(**CONFIG))


@pytest.fixture(scope="module")
def auto(plain):
    return SCOT(SCOTConfig(**CONFIG, flip="auto"), backbone=plain.backbone)


@pytest.fixture(scope="module")
def always(plain):
    return SCOT(SCOTConfig(**CONFIG, flip="auto", flip_margin=-2), backbone=plain.backbone)


@pytest.fixture(scope="module")
def pair(willow_rows):
    return willow_rows[0]


def _mirrored_array(path) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))[:, ::-1])


def test_presets_leave_it_off_and_bad_values_are_refused():
    for preset in ("pfpascal", "pfwillow", "spair"):
        for backbone in ("resnet101", "efficientnet-lite0"):
            assert SCOTConfig(preset=preset).resolve(backbone).flip in ("off", "auto")
    assert SCOTConfig(preset="pfwillow").resolve("efficientnet-lite2").flip == "off"
    with pytest.raises(ScotError) as info:
        SCOTConfig(flip="sometimes")
    assert info.value.option == "flip"
    with pytest.raises(ScotError) as info:
        SCOTConfig(flip_margin=-3)
    assert info.value.option == "flip_margin"


def test_a_kept_mirror_is_the_mirrored_match_seen_from_the_source(always, plain, pair):
    src, trg, kps = pair["src"], pair["trg"], pair["src_kps"]
    result = always(src, trg, kps)
    assert result.flipped and torch.equal(result.keypoints, torch.as_tensor(kps, dtype=torch.float32))
    width = result.src.original_size[0]
    mirror = plain.extract(src, flip=True)
    direct = plain.match(mirror, plain.extract(trg), mirror_pixels(torch.as_tensor(kps, dtype=torch.float32), width))
    assert torch.equal(result.transferred, direct.transferred)
    # matches and the dense flow are mapped back to the source's own frame
    ours, theirs = result.matches(), direct.matches()
    assert torch.allclose(ours[:, 0], (width - 1) - theirs[:, 0]) and torch.equal(ours[:, 1:], theirs[:, 1:])
    flow, confidence = result.flow()
    flow_m, confidence_m = direct.flow()
    assert torch.equal(flow, flow_m.flip(1)) and torch.equal(confidence, confidence_m.flip(1))
    integer = torch.tensor([[10.0, 20.0], [width - 11.0, 40.0]])
    at = always(src, trg, integer)
    flow = at.flow()[0]
    for (x, y), moved in zip(integer.long().tolist(), at.transferred):
        assert torch.allclose(flow[y, x], moved, atol=1e-4)
    assert result.to_dict()["flipped"] is True


def test_auto_keeps_the_plain_match_of_a_same_facing_pair(auto, plain, pair):
    a = auto(pair["src"], pair["trg"], pair["src_kps"])
    b = plain(pair["src"], pair["trg"], pair["src_kps"])
    assert not a.flipped and torch.equal(a.transferred, b.transferred)


def test_auto_mirrors_a_source_facing_the_other_way(auto, willow_rows):
    """An image against its own mirror faces the other way by construction: auto must flip,
    and then every keypoint lands on its mirror image; against itself it must not."""
    flipped = kept = 0
    for row in willow_rows[:40:8]:
        image = row["src"]
        width = load_image(image).size[0]
        kps = torch.as_tensor(row["src_kps"], dtype=torch.float32)
        facing = auto(image, _mirrored_array(image), kps)
        same = auto(image, image, kps)
        flipped += facing.flipped
        kept += not same.flipped
        if facing.flipped:
            error = (facing.transferred - mirror_pixels(kps, width)).norm(dim=1)
            assert float(error.median()) < 0.05 * width
        assert left_right_order(same) > 0.5
    assert flipped == 5 and kept == 5


def test_sources_need_their_mirror(auto, plain, pair):
    s, t = plain.extract(pair["src"]), plain.extract(pair["trg"])
    with pytest.raises(ScotError) as info:
        auto.match(s, t)
    assert "with_mirror=True" in str(info.value) and "\n" not in str(info.value)
    s = auto.extract(pair["src"], with_mirror=True)
    assert s.mirror is not None and s.nbytes() > s.mirror.nbytes() > 0
    assert auto.match(s, t).best.shape == (s.n,)


def test_cli_records_the_orientation(tmp_path, willow_root, pair):
    runner = CliRunner()
    out = tmp_path / "m"
    res = runner.invoke(app, ["match", str(pair["src"]), str(_save_mirror(pair["trg"], tmp_path)), "-o", str(out),
                              "--backbone", "efficientnet-lite2", "--preset", "pfwillow", "--flip", "auto",
                              "--threads", "1"])
    assert res.exit_code == 0, res.output
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["flipped"] is True and record["config"]["flip"] == "auto"
    run = tmp_path / "run"
    res = runner.invoke(app, ["eval", "--dataset", "pfwillow", "--datapath", str(willow_root.parent), "--limit", "4",
                              "--backbone", "efficientnet-lite2", "--flip", "auto", "--threads", "1", "-o", str(run)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(run / "per_pair.csv", newline="")))
    assert len(rows) == 4 and {r["flipped"] for r in rows} <= {"0", "1"}
    res = runner.invoke(app, ["match", str(pair["src"]), str(pair["trg"]), "--flip", "mirror", "-o", str(out)])
    one_line_error(res, "--flip")


def _save_mirror(path, folder):
    out = folder / "mirror.png"
    Image.fromarray(_mirrored_array(path)).save(out)
    return out


def test_a_kept_mirror_transfers_the_mirror_keypoints(always, plain, auto, pair):
    """``mirror_keypoints`` are what a kept mirror moves (each keypoint's look-alike in the
    mirror); the keypoints stay those given, and a plain match ignores them."""
    src, trg = pair["src"], pair["trg"]
    kps = torch.as_tensor(pair["src_kps"], dtype=torch.float32)
    partners = kps.flip(0)  # row k moved by the match of row K-1-k
    swapped = always(src, trg, kps, mirror_keypoints=partners)
    assert swapped.flipped and torch.equal(swapped.keypoints, kps)
    assert torch.equal(swapped.transferred, always(src, trg, partners).transferred)
    assert not torch.equal(swapped.transferred, always(src, trg, kps).transferred)
    kept = auto(src, trg, kps, mirror_keypoints=partners)
    assert not kept.flipped and torch.equal(kept.transferred, plain(src, trg, kps).transferred)
    with pytest.raises(ScotError) as info:
        always(src, trg, kps, mirror_keypoints=partners[:2])
    assert info.value.option == "mirror_keypoints" and "one per keypoint" in str(info.value)
    with pytest.raises(ScotError) as info:
        always(src, trg, kps, mirror_keypoints=[[1.0, float("nan")]] * len(kps))
    assert "mirror_keypoints" in str(info.value) and "NaN" in str(info.value)
