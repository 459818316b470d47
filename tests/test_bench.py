"""scot bench: the commands run and print the figures the documentation quotes."""

from __future__ import annotations

import re

import torch

from typer.testing import CliRunner

from conftest import one_line_error
from scot.cli import app

runner = CliRunner()


def test_bench_synthetic_prints_stages_floors_and_bandwidth():
    res = runner.invoke(app, ["bench", "synthetic", "--n", "96", "--fine-dim", "8", "--coarse-dim", "40", "--repeats", "1"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("synthetic match: n=96 x m=96, D=48") and ", cpu," in res.output.splitlines()[0]
    for stage in ("cost", "ot", "rhm", "transfer"):
        assert re.search(rf"^\s+{stage}\s+\d+\.\d ms", res.output, re.M), stage
    for stage in ("cost", "ot", "rhm"):
        assert re.search(rf"^\s+{stage}\s+.* GB/s of the matrix \(\d+ % of a copy\)", res.output, re.M), stage
    speedup = re.search(r"correlation: factorized .* vs the dense matmul .*: (\d+\.\d)x", res.output)
    assert speedup and float(speedup.group(1)) > 0
    assert re.search(r"copy_\(\) moves \d+\.\d GB/s", res.output)


def test_bench_synthetic_bad_device_is_one_line():
    
    one_line_error(runner.invoke(app, ["bench", "synthetic", "--n", "64", "--device", "tpu"]), "--device", "tpu")


def test_bench_pairs_runs_every_path_and_says_why(photo_willow):
    datapath = str(photo_willow.parent)
    res = runner.invoke(app, ["bench", "pairs", "--datapath", datapath, "--pairs", "1", "--repeats", "1",
                              "--backbone", "resnet101", "--weights", "random", "--threads", "2"])
    assert res.exit_code == 0, res.output
    for path in ("auto", "always", "never"):
        assert f"path '{path}'" in res.output
    # the chosen path for ResNet-101's ids correlates the 6,144 deep channels through their Gram matrix
    assert re.search(r"path 'auto' \(chosen\): 256 ch at \d+x\d+, 6144 ch at \d+x\d+ \(Gram\)", res.output)
    estimates = re.findall(r"estimate: (\d+\.\d+) G multiply-adds for the correlation vs (\d+\.\d+) G dense", res.output)
    assert len(estimates) == 3 and float(estimates[0][0]) < float(estimates[0][1]) / 8
    apart = [float(x) for x in re.findall(r"keypoints vs the dense path: at most (\S+) px apart", res.output)]
    # the paths agree to float rounding; a near-tie arg-max may move a keypoint by a fraction of a pixel
    assert len(apart) == 2 and max(apart) < 1.0
    speedup = re.search(r"correlation \(cost stage\): chosen .* = (\d+\.\d)x", res.output)
    assert speedup and float(speedup.group(1)) > 2


def test_bench_synthetic_too_large_names_its_own_option():
    one_line_error(runner.invoke(app, ["bench", "synthetic", "--n", "200000"]), "--n", "use a smaller --n")


def test_pass_flops_agree_with_torchvision():
    import torchvision

    from scot.backbones import build_backbone
    from scot.bench.features import pass_flops

    bb = build_backbone("resnet50", "random")
    ops = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["_ops"]  # giga multiply-adds at 224 x 224
    flops = pass_flops(bb, torch.rand(1, 3, 224, 224).contiguous(memory_format=torch.channels_last))
    assert abs(flops / 2e9 - ops) / ops < 0.01, (flops, ops)


def test_bench_features_prints_passes_roofs_and_descriptions():
    res = runner.invoke(app, ["bench", "features", "-b", "efficientnet-lite0", "--image-side", "64", "--repeats", "1",
                              "--threads", "1"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert re.search(r"compute roof: 2048\^3 float32 matmul \d+\.\d GFLOP/s; memory roof: 64 MiB copy \d+\.\d GB/s",
                     res.output)
    for scale, size in (("1", "64x48"), ("1.5", "96x72"), ("2", "128x96")):
        assert any(re.match(rf"\s+pass x{re.escape(scale)}\s+{size}\s+\d+\.\d ms .* GFLOP\s+\d+\.\d GFLOP/s \(\d+ % "
                            r"of the matmul\)", line) for line in lines), (scale, res.output)
    for cam in ("1", "1,1.5", "1,1.5,2"):
        assert re.search(rf"describe an image \(pfpascal preset\), CAM scales {re.escape(cam)}\s+features "
                         rf"{re.escape(cam)}\s+\d+\.\d ms", res.output), cam


def test_bench_features_unknown_backbone_is_one_line():
    one_line_error(runner.invoke(app, ["bench", "features", "-b", "resnet7"]), "--backbone", "resnet7")
