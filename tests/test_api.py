"""The Python API's edges: what it refuses, and how (one-line ScotError naming the argument)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import scot.device
from conftest import PHOTO_CATEGORY, one_line_error
from scot import SCOT, SCOTConfig, ScotError
from scot.cli import app

LITE0 = dict(backbone="efficientnet-lite0", preset="pfwillow", image_side=96, cam_scales=(1.0,), feature_scales=(1.0,))


@pytest.fixture(scope="module")
def folder(photo_willow):
    return photo_willow / PHOTO_CATEGORY


@pytest.fixture(scope="module")
def model():
    return SCOT(SCOTConfig(weights="random:1", **LITE0))


def _one_line(call, option: str, *fragments: str) -> ScotError:
    with pytest.raises(ScotError) as info:
        call()
    message = str(info.value)
    assert info.value.option == option and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return info.value


def test_features_of_different_models_are_not_matched(model, folder):
    s = model.extract(folder / "photo.png")
    same = SCOT(SCOTConfig(weights="random:1", **LITE0), backbone=model.backbone)  # another instance, same model
    assert same.match(s, same.extract(folder / "zoomed.png")).best.shape == (s.n,)
    other_weights = SCOT(SCOTConfig(weights="random:2", **LITE0))
    _one_line(lambda: model.match(s, other_weights.extract(folder / "zoomed.png")), "trg",
              "different models", "random (seed 1)", "random (seed 2)")
    other_ids = SCOT(SCOTConfig(weights="random:1", **{**LITE0, "hyperpixel_ids": (1, 2)}), backbone=model.backbone)
    _one_line(lambda: model.match(s, other_ids.extract(folder / "zoomed.png")), "trg", "ids 1,2")
    assert model.config.center_features  # the preset's for EfficientNet-Lite on pfwillow
    plain = SCOT(SCOTConfig(weights="random:1", **{**LITE0, "center_features": False}), backbone=model.backbone)
    _one_line(lambda: model.match_batch([(s, plain.extract(folder / "zoomed.png"), None)]), "trg",
              "center_features on", "center_features off")
    assert s.to("cpu").origin == s.origin  # moving features keeps what made them


def test_empty_batches_and_images_instead_of_features_are_refused(model, folder):
    _one_line(lambda: model.match_batch([]), "items", "no pairs")
    path = folder / "photo.png"
    _one_line(lambda: model.match(str(path), str(path)), "src", "SCOT.extract", "model(src, trg)")
    s = model.extract(path)
    _one_line(lambda: model.match(s, path), "trg", "PosixPath", "not extracted features")


def test_unreadable_image_objects_are_refused(model, folder):
    with pytest.raises(ScotError, match="meta device"):
        model(torch.zeros(3, 64, 64, device="meta"), folder / "photo.png")
    closed = Image.open(folder / "photo.png")
    closed.load()
    closed.close()
    with pytest.raises(ScotError, match="closed"):
        model(closed, folder / "zoomed.png")


def test_warp_refuses_a_target_of_another_size(model, folder):
    result = model(folder / "photo.png", folder / "zoomed.png")
    w, h = result.trg.original_size
    _one_line(lambda: result.warp(torch.rand(3, h + 7, w)), "target_image", f"{w}x{h + 7}", f"{w}x{h}")
    w_s, h_s = result.src.original_size
    assert tuple(result.warp(folder / "zoomed.png").shape) == (3, h_s, w_s)


runner = CliRunner()


def test_memory_errors_name_the_options_responsible(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(scot.device, "available_memory", lambda device: 8 << 30)  # an 8 GB machine
    images = [str(folder / "photo.png"), str(folder / "zoomed.png")]
    lite = ["--backbone", "efficientnet-lite0", "--weights", "random:1"]
    res = runner.invoke(app, ["match", *images, "-o", str(tmp_path / "a"), *lite, "--cam-scales", "1,50"])
    one_line_error(res, "--cam-scales", "scale 50")
    assert "--image-side:" not in res.output
    res = runner.invoke(app, ["match", *images, "-o", str(tmp_path / "b"), *lite, "--subpixel", "10001"])
    one_line_error(res, "--subpixel", "window")
    assert "--low-memory" not in res.output


def test_config_and_matcher_ask_one_plan_whether_streaming_is_allowed(model, folder, monkeypatch):
    from scot.solver import SolverPlan

    s, t = model.extract(folder / "photo.png"), model.extract(folder / "zoomed.png")
    for options, name in ((dict(sinkhorn_mode="log"), "sinkhorn_mode log"), (dict(sinkhorn_tol=1e-3), "sinkhorn_tol"),
                          (dict(mutual=True), "mutual"), (dict(ot=False), "ot off")):
        cfg = SCOTConfig(weights="random:1", symmetric=False, **LITE0, **options)
        assert not SolverPlan.of(cfg).can_stream
        _one_line(lambda: cfg.replace(low_memory=True), "low_memory", name)
        monkeypatch.setattr(scot.device, "available_memory", lambda device: 4 * s.n * t.n)  # not one N x M matrix
        in_memory = SCOT(cfg, backbone=model.backbone)
        _one_line(lambda: in_memory.match(s, t, keep_plan=False), "image_side", f"cannot stream {name}")
        monkeypatch.undo()
    plain = SCOTConfig(weights="random:1", **LITE0)
    assert SolverPlan.of(plain).kind == "kernel" and SolverPlan.of(plain.replace(eps=0.005)).kind == "general"
    assert SolverPlan.of(plain.replace(low_memory=True)).kind == "streamed"
