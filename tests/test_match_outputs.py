"""Dense results of the whole pipeline: flow, warp, mask transfer and the viewer page.

The unit tests of :mod:`scot.dense` and :mod:`scot.viewer` use hand-built matches; these
run the real matcher (EfficientNet-Lite0 with its ImageNet weights) on matplotlib's
sample photo, so they need no benchmark data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from scot import SCOT, SCOTConfig
from scot.cli import app

runner = CliRunner()
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def model() -> SCOT:
    return SCOT(SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """The sample photo cropped off-centre (420 x 600), and its mirror image."""
    import matplotlib.cbook as cbook

    folder = tmp_path_factory.mktemp("photos")
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        photo = im.convert("RGB").crop((0, 0, 420, 600))
    photo.save(folder / "photo.png")
    ImageOps.mirror(photo).save(folder / "mirrored.png")
    return {"photo": folder / "photo.png", "mirrored": folder / "mirrored.png"}


def test_flow_equals_keypoint_transfer_at_the_keypoints(model, photos):
    kps = [[60, 80], [200, 260], [301, 455], [419, 599], [0, 0], [150, 3]]  # whole pixels, corners included
    for transfer in ("mean", "weighted", "median"):
        m = SCOT(model.config.replace(transfer=transfer), backbone=model.backbone)
        result = m(photos["photo"], photos["mirrored"], keypoints=kps, keep_plan=False)
        flow, confidence = result.flow()
        assert flow.shape == (600, 420, 2) and confidence.shape == (600, 420)
        at_keypoints = torch.stack([flow[y, x] for x, y in kps])
        torch.testing.assert_close(at_keypoints, result.transferred, atol=1e-3, rtol=0)


def test_matches_are_ranked_and_top_k_is_checked(model, photos):
    from scot import ScotError

    result = model(photos["photo"], photos["mirrored"], keep_plan=False)
    every = result.matches()
    top = result.matches(top_k=5)
    assert top.shape == (5, 5) and torch.equal(top, every[:5])
    assert bool((every[1:, 4] <= every[:-1, 4]).all())  # most confident first
    with pytest.raises(ScotError, match="top_k: must be at least 1, got -1"):
        result.matches(top_k=-1)  # a slice [:-1] would silently drop one match


def test_same_image_gives_the_identity_flow(model, photos):
    """With the image matched to itself, nearly every hyperpixel keeps its own cell, so the
    flow is exactly the identity wherever all of a pixel's boxes do.  A box matched to a
    near-duplicate neighbour moves each of the ~36 pixels' worth of boxes averaging it by a
    fraction of one grid step, so: most pixels exact, 99 % within a pixel, none beyond one
    grid step (4 resized px, 8 original px at this ratio)."""
    result = model(photos["photo"], photos["photo"], keep_plan=False)
    flow, _ = result.flow()
    h, w = flow.shape[:2]
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    error = (flow - torch.stack([xx, yy], -1)).norm(dim=-1)
    step = result.src.geometry.jump / result.src.ratio
    assert float((result.best == torch.arange(result.src.n)).float().mean()) > 0.99
    assert float((error < 1e-3).float().mean()) > 0.9 and float(error.quantile(0.99)) < 1.0
    assert float(error.max()) <= step


def test_mask_lands_in_the_mirror_image_where_expected(model, photos):
    """The face region moves to the mirrored face: union IoU with the mirrored mask >= 0.6
    (0.72 to 0.80 measured with the Lite backbones).  Labels are kept exactly; within the
    symmetric face, halves may swap, as the two eyes look alike to any appearance match."""
    w, h = Image.open(photos["photo"]).size
    mask = np.zeros((h, w), np.int64)
    mask[120:350, 160:260], mask[120:350, 260:360] = 3, 7
    result = model(photos["photo"], photos["mirrored"], keep_plan=False)
    moved = result.transfer_mask(mask).numpy()
    assert set(np.unique(moved)) <= {0, 3, 7} and {3, 7} <= set(np.unique(moved))
    expected = mask[:, ::-1] > 0
    iou = (expected & (moved > 0)).sum() / (expected | (moved > 0)).sum()
    assert iou >= 0.6, iou
    with pytest.raises(Exception, match="mask"):
        result.transfer_mask(mask[:10])


def test_warp_with_the_same_image_returns_it(model, photos):
    result = model(photos["photo"], photos["photo"], keep_plan=False)
    warped = result.warp(photos["photo"])
    original = torch.from_numpy(np.asarray(Image.open(photos["photo"]), dtype=np.float32) / 255).permute(2, 0, 1)
    assert float((warped - original).abs().mean()) < 0.01


def test_match_writes_every_dense_output(photos, tmp_path):
    mask = tmp_path / "mask.png"
    labels = np.zeros((600, 420), np.uint8)
    labels[120:350, 160:360] = 5
    Image.fromarray(labels).save(mask)
    out = tmp_path / "o"
    res = runner.invoke(app, ["match", str(photos["photo"]), str(photos["mirrored"]), "-o", str(out),
                              "--backbone", "efficientnet-lite0", "--flow", str(out / "flow.npz"), "--warp",
                              "--mask", str(mask), "--html", "--keypoints", str(_kps(tmp_path))])
    assert res.exit_code == 0, res.output
    name = "photo__mirrored"
    record = json.loads((out / f"{name}.json").read_text(), parse_constant=_no_constant)
    data = np.load(out / "flow.npz")
    assert data["flow"].shape == (600, 420, 2) and data["confidence"].shape == (600, 420)
    np.testing.assert_allclose(data["flow"][80, 60], record["keypoints"][0]["target"], atol=2e-3)
    assert np.asarray(Image.open(out / f"{name}.warp.png")).shape == (600, 420, 3)
    assert Image.open(out / f"{name}.warp-check.png").size == (420, 600)
    moved = np.asarray(Image.open(out / f"{name}.mask.png"))
    assert moved.shape == (600, 420) and set(np.unique(moved)) <= {0, 5} and (moved == 5).sum() > 1000
    assert Image.open(out / f"{name}.mask-view.png").size[1] == 600
    assert set(record["outputs"]) == {"flow", "warp", "checkerboard", "mask", "mask_view", "html"}
    html = (out / f"{name}.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script src" not in html
    npy = tmp_path / "flow.npy"
    res = runner.invoke(app, ["match", str(photos["photo"]), str(photos["mirrored"]), "-o", str(tmp_path / "p"),
                              "--backbone", "efficientnet-lite0", "--flow", str(npy), "--no-plot"])
    assert res.exit_code == 0, res.output
    stacked = np.load(npy)
    assert stacked.shape == (600, 420, 3)
    np.testing.assert_allclose(stacked[..., :2], data["flow"], atol=1e-4)


def test_a_palette_mask_keeps_its_palette(photos, tmp_path):
    """A palette PNG (the usual format of segmentation labels) is moved as indices, and the
    moved mask is written with the same palette, so each label keeps its colour."""
    labels = np.zeros((600, 420), np.uint8)
    labels[120:350, 160:260], labels[120:350, 260:360] = 3, 7
    palette = [0, 0, 0] * 256
    palette[9:12], palette[21:24] = [200, 30, 30], [30, 200, 30]
    source = Image.fromarray(labels).convert("P")
    source.putpalette(palette)
    source.save(tmp_path / "labels.png")
    res = runner.invoke(app, ["match", str(photos["photo"]), str(photos["mirrored"]), "-o", str(tmp_path / "o"),
                              "--backbone", "efficientnet-lite0", "--no-plot", "--mask", str(tmp_path / "labels.png")])
    assert res.exit_code == 0, res.output
    moved = Image.open(tmp_path / "o" / "photo__mirrored.mask.png")
    assert moved.mode == "P" and moved.getpalette()[:24] == palette[:24]
    assert {3, 7} <= set(np.unique(np.asarray(moved))) <= {0, 3, 7}


def _kps(folder: Path) -> Path:
    path = folder / "kps.json"
    path.write_text("[[60, 80], [200, 260]]")
    return path


def _no_constant(name: str) -> None:
    raise ValueError(name)


def test_flow_template_with_pairs(photos, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"{photos['photo']},{photos['mirrored']}\n{photos['mirrored']},{photos['photo']}\n")
    res = runner.invoke(app, ["match", "--pairs", str(pairs), "-o", str(tmp_path / "o"), "--backbone",
                              "efficientnet-lite0", "--no-plot", "--flow", str(tmp_path / "flows" / "{name}.npz")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "flows").iterdir()) == ["0000_photo__mirrored.npz",
                                                                      "0001_mirrored__photo.npz"]
    res = runner.invoke(app, ["match", "--pairs", str(pairs), "-o", str(tmp_path / "o2"), "--backbone",
                              "efficientnet-lite0", "--flow", str(tmp_path / "one.npz")])
    assert res.exit_code == 2 and "{name}" in res.stderr


def test_pipeline_viewer_in_chromium(model, photos, tmp_path):
    """The page ``scot match --html`` writes, in a real browser (``SCOT_VIEWER_HTML`` may name another)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    from scot.viewer import read_viewer

    path = Path(os.environ["SCOT_VIEWER_HTML"]) if os.environ.get("SCOT_VIEWER_HTML") else None
    if path is None:
        path = tmp_path / "v"
        res = runner.invoke(app, ["match", str(photos["photo"]), str(photos["mirrored"]), "-o", str(path),
                                  "--backbone", "efficientnet-lite0", "--html", "--no-plot"])
        assert res.exit_code == 0, res.output
        path = path / "photo__mirrored.html"
    dec = read_viewer(path)["decoded"]
    url = path.resolve().as_uri()
    requests, errors = [], []
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                    headless=True, args=args, viewport={"width": 1280, "height": 800})
        try:
            tab = ctx.new_page()
            tab.on("request", lambda r: requests.append(r.url))
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(url)
            tab.wait_for_function("window.scotViewer && (window.scotViewer.ready || window.scotViewer.error)")
            for i in (len(dec["src_points"]) // 3, len(dec["src_points"]) // 2 + 7):
                x, y = dec["src_points"][i]
                tab.mouse.move(*tab.evaluate(f"window.scotViewer.clientPoint('src', {x}, {y})"))
                assert tab.evaluate("window.scotViewer.hover.index") == i
                np.testing.assert_allclose(tab.evaluate("window.scotViewer.marker"),
                                           dec["trg_points"][dec["topk_index"][i, 0]], atol=1e-6)
            shot = tmp_path / "shot.png"
            tab.screenshot(path=str(shot))
        finally:
            ctx.close()
    assert not errors, errors
    assert {u for u in requests if not u.startswith("data:")} == {url}
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000


def test_preview_labels_are_sampled_not_interpolated():
    """The mask-view picture is drawn on reduced decodes of large images; its labels are
    sampled onto them by nearest neighbour: the identity at equal size, values kept."""
    from scot.outputs.write import _nearest

    labels = torch.randint(0, 4, (60, 90)) * 7
    assert torch.equal(_nearest(labels, (60, 90)), labels)
    small = _nearest(labels, (20, 30))
    assert small.shape == (20, 30) and set(small.unique().tolist()) <= set(labels.unique().tolist())
    assert torch.equal(small, labels[1::3, 1::3])  # cell centres of a 3x reduction


def test_the_api_record_is_the_written_record(model, photos, tmp_path):
    """One record builder: MatchResult.to_dict() is what scot match writes for the same match,
    but for what only the command knows (the model's weights and device, the paths, the
    picture, the files); it is strict JSON, and a non-finite result has no record."""
    from scot import ScotError
    from scot.outputs import plan_outputs, write_match

    kps = [[60, 80], [200, 260]]
    result = model(photos["photo"], photos["mirrored"], keypoints=kps, keep_plan=False)
    src, trg = str(photos["photo"]), str(photos["mirrored"])
    written = json.loads(write_match(model, result, src, trg, plan_outputs(tmp_path, src, trg)).record.read_text())
    api = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert list(api) == [k for k in written if k != "outputs"]
    for side, path in (("source", src), ("target", trg)):
        assert written[side] == {**api[side], "path": path} and api[side]["path"] is None
    assert (api["weights"], api["device"]) == (None, None) and written["weights"] and written["device"] == "cpu"
    assert api["drawn"] is None and written["drawn"] == {"top_k": 100, "foreground_only": True}
    same = ("scot_version", "backbone", "config", "matches", "keypoints", "timings")
    assert {k: api[k] for k in same} == {k: written[k] for k in same}
    assert [k["target"] for k in api["keypoints"]] == [[round(v, 3) for v in p] for p in result.transferred.tolist()]
    result.best_confidence = result.best_confidence.clone()
    result.best_confidence[0] = float("nan")
    with pytest.raises(ScotError, match="non-finite"):
        result.to_dict()
