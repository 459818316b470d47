"""``scot bench features``: each backbone's network pass per input scale (time, FLOPs, the rate
achieved) and the description of an image per CAM setting, against the machine's roofs: a
large dense matmul (compute) and a large copy (memory)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from .measure import Stat, copy_bandwidth, timed

FEATURE_SCALES = (1.0, 1.5, 2.0)
CAM_SETTINGS = ((1.0,), (1.0, 1.5), (1.0, 1.5, 2.0))


def pass_flops(backbone, x: torch.Tensor) -> int:
    """Floating-point operations of one full network pass (to the classifier) on ``x``, as
    :class:`torch.utils.flop_counter.FlopCounterMode` counts them (2 per multiply-add of the
    convolutions and matrix products; element-wise work is not counted).  The pass runs with
    plain PyTorch operators (:func:`~scot.backbones.base.portable_kernels`): the counter does
    not see oneDNN's fused convolutions."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..backbones.base import portable_kernels

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), portable_kernels(), counter:
        backbone.extract(x, [0], head=True)
    return int(counter.get_total_flops())


def matmul_roof(n: int = 2048, device: torch.device | str = "cpu", repeats: int = 5) -> float:
    """FLOP/s of an n x n by n x n float32 matrix product: the compute roof."""
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    torch.mm(a, b)
    return 2 * n**3 / min(timed(lambda: torch.mm(a, b), device) for _ in range(repeats))


def _image_tensor(side: int, seed: int = 0) -> torch.Tensor:
    """A (3, side * 3/4, side) smooth random image in [0, 1] (the network's cost does not depend on content)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 12, 16, generator=gen)
    return torch.nn.functional.interpolate(low, (side * 3 // 4, side), mode="bilinear", align_corners=True)[0]


def bench_features(backbones: Sequence[str], weights: str | None = None, side: int = 300,
                   scales: Sequence[float] = FEATURE_SCALES, repeats: int = 5, device: str = "cpu",
                   preset: str = "pfpascal", notice: Callable[[str], None] | None = None) -> dict:
    """Each backbone's network pass per input scale against the machine's roofs.

    For a ``side`` x ``3/4 side`` image (the 300-px resize of a 4:3 photo) and each scale: the
    time of one full pass (median over ``repeats`` after a warm-up), its FLOPs
    (:func:`pass_flops`) and the rate achieved; then the time to describe one image
    (:meth:`SCOT.extract`, the ``preset``'s configuration) for each CAM setting of
    :data:`CAM_SETTINGS` (feature scales the preset's, limited to the CAM's; the settings take
    turns, repeat by repeat).  The roofs: a
    2048^3 matmul (:func:`matmul_roof`) and a 64 MiB copy (:func:`~scot.bench.measure.copy_bandwidth`).
    ``weights=None`` takes each backbone's ImageNet weights, or seeded random ones where
    they are unavailable (the speed does not depend on them; ``notice`` says so).
    """
    from .. import SCOT, SCOTConfig
    from ..backbones import build_backbone
    from ..errors import WeightsUnavailableError

    dev = torch.device(device)
    out: dict = {"threads": torch.get_num_threads(), "device": str(dev), "side": side, "repeats": repeats,
                 "matmul_flops": matmul_roof(2048, dev), "copy_bandwidth": copy_bandwidth(4096, 4096, dev),
                 "backbones": {}}
    image = _image_tensor(side)
    for name in backbones:
        used = weights
        try:
            backbone = build_backbone(name, used)
        except WeightsUnavailableError as exc:
            used = "random"
            if notice is not None:
                notice(f"notice: {name} ImageNet weights are unavailable ({exc.short}); timing seeded random weights")
            backbone = build_backbone(name, used)
        backbone = backbone.to(dev, memory_format=torch.channels_last)  # type: ignore[call-overload]
        passes = []
        for scale in scales:
            h, w = int(scale * image.shape[1]), int(scale * image.shape[2])
            x = torch.rand(1, 3, h, w, device=dev).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                backbone.extract(x, [0], head=True)
                run = functools.partial(backbone.extract, x, [0], head=True)
                pass_times = [timed(run, dev) for _ in range(repeats)]
            stat = Stat.of(pass_times)
            flops = pass_flops(backbone, x)
            passes.append({"scale": scale, "size": (w, h), "time": stat, "flops": flops, "rate": flops / stat.median})
        models = []
        for cam_scales in CAM_SETTINGS:
            cfg = SCOTConfig(backbone=name, weights=used, preset=preset, device=device, cam_scales=cam_scales)
            fs = tuple(s for s in (cfg.resolve(name).feature_scales or (1.0,)) if s in cam_scales)
            models.append(SCOT(cfg.replace(feature_scales=fs), backbone=backbone))
            models[-1].extract(image)
        times: list[list[float]] = [[] for _ in models]
        for _ in range(repeats):  # the settings take turns, so a change in the machine's load hits them alike
            for k, model in enumerate(models):
                times[k].append(timed(functools.partial(model.extract, image), dev))
        describe = [{"cam_scales": m.config.cam_scales, "feature_scales": m.config.feature_scales, "time": Stat.of(t)}
                    for m, t in zip(models, times)]
        out["backbones"][name] = {"weights": backbone.weights_source, "passes": passes, "describe": describe}
    return out


def format_features(res: dict, preset: str) -> str:
    """The report of :func:`bench_features`."""
    roof, copy = res["matmul_flops"], res["copy_bandwidth"]
    lines = [(f"network passes on a {res['side']}x{res['side'] * 3 // 4} image and its enlargements | "
              f"{res['threads']} threads, {res['device']} | median [min-max] of {res['repeats']}"),
             (f"  compute roof: 2048^3 float32 matmul {roof / 1e9:.1f} GFLOP/s; memory roof: 64 MiB copy "
              f"{copy / 1e9:.1f} GB/s")]
    for name, r in res["backbones"].items():
        lines.append(f"{name} ({r['weights']})")
        for p in r["passes"]:
            w, h = p["size"]
            lines.append(f"  pass x{p['scale']:<4g}{w:>4}x{h:<4}{p['time'].ms()}  {p['flops'] / 1e9:6.2f} GFLOP  "
                         f"{p['rate'] / 1e9:6.1f} GFLOP/s ({100 * p['rate'] / roof:.0f} % of the matmul)")
        for d in r["describe"]:
            cam = ",".join(f"{s:g}" for s in d["cam_scales"])
            feats = ",".join(f"{s:g}" for s in d["feature_scales"])
            lines.append(f"  describe an image ({preset} preset), CAM scales {cam:<8} features "
                         f"{feats:<8}{d['time'].ms()}")
    return "\n".join(lines)
