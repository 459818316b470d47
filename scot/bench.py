"""``scot bench``: stage-by-stage timings, the floors they compare with, memory.

Three measurements:

* :func:`bench_synthetic`: the matching stages (cost, Sinkhorn, RHM, transfer) on random
  hyperpixels in a preset's layout, against the dense matmul of the same problem and
  against a plain copy of the N x M matrix (the memory floor of any pass over it);
* :func:`bench_pairs`: every stage on real image pairs, for each correlation path
  (factorized, dense, and the one the cost estimate chose) with the reason for the choice;
* :func:`bench_features`: each backbone's network pass per input scale (time, FLOPs, the
  rate achieved) and the description of an image per CAM setting, against the machine's
  roofs: a large dense matmul (compute) and a large copy (memory);
* :func:`bench_memory_run`: resident memory sampled along a long synthetic evaluation, to
  show that it stays flat however many pairs are scored.

Every figure is a median over repeats with its spread (min-max), measured in-process with
``time.perf_counter`` after warm-up, each timed call starting and ending after the queued
work of the device benchmarked has finished.  Peak memory is, on the CPU, the process's
resident high-water mark, reset before each measurement through ``/proc/self/clear_refs``;
on CUDA, the most GPU memory PyTorch allocated (``torch.cuda.max_memory_allocated``,
reset before each measurement).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import device as _device
from .errors import ScotError
from .hyperpixels import Hyperpixels
from .precision import fp32_precision
from .timing import synchronize

# --------------------------------------------------------------------------------------
# measurement helpers


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-memory high-water mark (Linux); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux) in bytes, or None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """VmHWM of this process (Linux), else ru_maxrss."""
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """VmRSS of this process (Linux), else the peak."""
    rss = _proc_status_bytes("VmRSS")
    return rss if rss is not None else peak_rss_bytes()


@dataclass
class Stat:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values))

    def ms(self) -> str:
        return f"{1000 * self.median:9.1f} ms  [{1000 * self.low:.1f}-{1000 * self.high:.1f}]"


class PeakMemory:
    """The memory high-water mark of a measurement on ``device``: bytes PyTorch allocated on
    a CUDA device, the process's resident set on the CPU."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.label = "peak GPU memory allocated" if self.cuda else "peak RSS"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()

    def current(self) -> int:
        return int(torch.cuda.memory_allocated(self.device)) if self.cuda else rss_bytes()

    def peak(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.device)) if self.cuda else peak_rss_bytes()


def _time(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds ``fn`` takes, from and to an idle ``device``."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def grid_shape(n: int, aspect: float = 4 / 3) -> tuple[int, int]:
    """(rows, cols) with rows * cols == n and cols / rows as close to ``aspect`` as possible."""
    best = (1, n)
    for rows in range(1, int(math.isqrt(n)) + 1):
        if n % rows == 0:
            cols = n // rows
            if abs(math.log(cols / rows / aspect)) < abs(math.log(best[1] / best[0] / aspect)):
                best = (rows, cols)
    return best


# --------------------------------------------------------------------------------------
MATCH_STAGES = ("cost", "ot", "rhm", "transfer")


def matrix_passes(stage: str, factorized: bool, two_way: bool) -> int:
    """How many times a matching stage streams the N x M float32 matrix through memory.

    Counted from the code: ``cost`` writes the product (+ reads and writes it again for the
    factorized groups' update) and clamps and shifts it (:func:`scot.cost.log2_kernel_`);
    ``ot`` reads it in the first Sinkhorn sweep and reads and rewrites it as votes in the
    second (+ writes the reverse votes); ``rhm`` reads the votes for the Hough sums,
    re-weights them in place and reads them for the arg-max (two-way: both directions,
    plus two maxima and the combination).  ``transfer`` never touches the matrix.
    """
    if stage == "cost":
        return (3 if factorized else 1) + 4
    if stage == "ot":
        return 3 + (1 if two_way else 0)
    if stage == "rhm":
        return 3 + 1 if not two_way else 2 * 3 + 2 + 2 + 3 + 1
    return 0


def copy_bandwidth(n: int, m: int, device: torch.device | str = "cpu", repeats: int = 5) -> float:
    """Bytes per second of ``torch.empty(n, m).copy_(x)`` (a read and a write of the matrix): the floor."""
    x = torch.rand(n, m, device=device)
    y = torch.empty(n, m, device=device)
    y.copy_(x)
    best = min(_time(lambda: y.copy_(x), device) for _ in range(repeats))
    return 2 * 4 * n * m / best


def _synthetic_hyperpixels(grid: tuple[int, int], fine_dim: int, coarse_dim: int, coarse_stride: int,
                           seed: int, device: torch.device) -> Hyperpixels:
    """Random maps in the layout of a real preset: ``fine_dim`` channels on the grid and
    ``coarse_dim`` channels ``coarse_stride`` times coarser, with boxes, weights and geometry."""
    from .backbones import Geometry
    from .hyperpixels import LayerGroup, bilinear_matrix, box_centres, receptive_field_boxes

    h, w = grid
    g = torch.Generator().manual_seed(seed)
    hc, wc = -(-h // coarse_stride), -(-w // coarse_stride)
    fine = torch.randn(h * w, fine_dim, generator=g).to(device)
    coarse = torch.randn(hc * wc, coarse_dim, generator=g).to(device)
    group = LayerGroup(coarse, (hc, wc), bilinear_matrix(h, hc, device), bilinear_matrix(w, wc, device), True)
    geometry = Geometry(jump=4, rf=27, offset_x=0, offset_y=0, height=h, width=w)
    boxes = receptive_field_boxes(geometry, h, w)
    centres = box_centres(boxes)
    inv_norms = (fine.square().sum(1) + group.upsampled().square().sum(1)).rsqrt()
    return Hyperpixels(fine * inv_norms.unsqueeze(1), [group], inv_norms, centres[:w, 0].clone(),
                       centres[::w, 1].clone(),
                       boxes, torch.rand(h * w, generator=g) + 0.5, (4 * w, 4 * h), 1.0, (4 * w, 4 * h), geometry,
                       layout=[((h, w), fine_dim, False), ((hc, wc), coarse_dim, True)])


def bench_synthetic(
    n: int = 4000, fine_dim: int = 256, coarse_dim: int = 6144, coarse_stride: int = 4, repeats: int = 5,
    device: str = "cpu", two_way: bool = False,
) -> dict:
    """The matching stages on random hyperpixels in a preset's layout, against two floors.

    The default layout is ResNet-101's PF-PASCAL/PF-WILLOW ids (256 channels on the grid,
    6,144 at stride 16).  Reported: every stage (median over ``repeats`` after two warm-up
    runs), the factorized correlation against the dense matmul of the same problem, and
    each stage's achieved bandwidth against a plain copy of the N x M matrix.
    """
    from . import SCOT, SCOTConfig
    from .cost import Correlation

    dev = torch.device(device)
    rows, cols = grid_shape(n)
    model = SCOT(SCOTConfig(backbone="efficientnet-lite0", weights="random", preset="pfwillow", device=device,
                            symmetric=two_way, center_features=False, feature_scales=(1.0,), transfer="mean"))
    cells = rows * cols
    # the pair, the dense tables of both images and their product: all of it exists at once
    need = model.matcher.pair_bytes(cells, cells) + 4 * cells * cells + 2 * 4 * cells * (fine_dim + coarse_dim)
    available = _device.available_memory(dev) if dev.type == "cpu" else _device.free_memory(dev)
    if available is not None and need > 0.8 * available:
        raise ScotError(f"{cells} x {cells} hyperpixels need about {_device.format_gb(need)} for this benchmark but "
                        f"{_device.format_gb(available)} is available on {dev}; use a smaller --n", option="n")
    src = _synthetic_hyperpixels((rows, cols), fine_dim, coarse_dim, coarse_stride, 0, dev)
    trg = _synthetic_hyperpixels((rows, cols), fine_dim, coarse_dim, coarse_stride, 1, dev)
    keypoints = src.boxes[:: max(1, src.n // 10), :2] + 13.0
    dense_src, dense_trg = src.fused(), trg.fused().flip(0)
    memory = PeakMemory(dev)
    out: dict = {"n": src.n, "m": trg.n, "dim": fine_dim + coarse_dim, "threads": torch.get_num_threads(),
                 "device": str(dev), "baseline_rss": rss_bytes(), "baseline_memory": memory.current(),
                 "memory_label": memory.label}
    runs, dense = [], []
    with torch.inference_mode(), fp32_precision(dev, model.config.tf32):
        for rep in range(repeats + 2):
            memory.reset()
            result = model.match(src, trg, keypoints, keep_plan=False)
            t = _time(lambda: torch.mm(dense_src, dense_trg.t()), dev)
            if rep >= 2:
                runs.append(dict(result.timings))
                dense.append(t)
        peak = memory.peak()
        t_corr = [_time(lambda: Correlation(src, trg).full(), dev) for _ in range(repeats)]
    floor = copy_bandwidth(src.n, trg.n, dev)
    stages = {k: Stat.of([r[k] for r in runs]) for k in MATCH_STAGES}
    out.update(
        stages=stages, after_features=Stat.of([sum(r[k] for k in MATCH_STAGES) for r in runs]),
        correlation=Stat.of(t_corr), dense_matmul=Stat.of(dense), peak_rss=peak_rss_bytes(), peak_memory=peak,
        copy_bandwidth=floor,
        bandwidth={k: matrix_passes(k, True, two_way) * 4 * src.n * trg.n / stages[k].median for k in MATCH_STAGES
                   if matrix_passes(k, True, two_way)},
    )
    return out


def _describe_all(model, paths, timings: dict[str, list[float]]):
    """Views of every image (backbone passes timed per stage) for re-describing per path."""
    views = {}
    for p in paths:
        if p in views:
            continue
        t: dict[str, float] = {}
        views[p] = model.extractor.view(p, timings=t)
        for k, v in t.items():
            timings.setdefault(k, []).append(v)
    return views


def bench_pairs(model, pairs: Sequence[tuple[Path, Path, torch.Tensor]], repeats: int = 3) -> dict:
    """Every stage on real pairs, for the correlation path the model chose and for the others.

    Images are described once per path (``fusion``); each pair is matched ``repeats``
    times after one warm-up round.  Returns per path the stage medians, the matrix
    bandwidth per stage, the bytes an image's hyperpixels take, and how far its keypoints
    land from the dense path's.
    """
    from . import SCOT
    from .cost import correlation_flops
    from .features import HyperpixelExtractor

    feature_stages: dict[str, list[float]] = {}
    views = _describe_all(model, [p for s, t, _ in pairs for p in (s, t)], feature_stages)
    two_way = bool(model.config.symmetric)
    out: dict = {"pairs": len(pairs), "repeats": repeats, "threads": torch.get_num_threads(),
                 "device": str(model.device),
                 "backbone": model.backbone.name, "two_way": two_way, "paths": {},
                 "features": {k: Stat.of(v) for k, v in feature_stages.items()}}
    predictions: dict[str, list[torch.Tensor]] = {}
    for path in ("auto", "always", "never"):
        variant = SCOT(model.config, backbone=model.backbone, factorize=path)
        extractor: HyperpixelExtractor = variant.extractor
        fusion: list[float] = []
        described: dict[Path, Hyperpixels] = {}
        for p, view in views.items():
            tm: dict[str, float] = {}
            described[p] = extractor.describe(view, timings=tm)
            fusion.append(tm["fusion"])
        stages: dict[str, list[float]] = {}
        peaks: list[int] = []
        preds: list[torch.Tensor] = []
        memory = PeakMemory(variant.device)
        with torch.inference_mode():
            for rep in range(repeats + 1):
                for src_path, trg_path, kps in pairs:
                    s, t = described[src_path], described[trg_path]
                    before = memory.current()
                    memory.reset()
                    res = variant.match(s, t, kps, keep_plan=False, check_bounds=False)
                    if rep == 0:
                        assert res.transferred is not None  # keypoints were given
                        preds.append(res.transferred)
                        continue
                    peaks.append(memory.peak() - before)
                    for k in MATCH_STAGES:
                        stages.setdefault(k, []).append(res.timings[k])
        predictions[path] = preds
        s0, t0 = described[pairs[0][0]], described[pairs[0][1]]
        factorized = bool(s0.factorized)
        stats = {k: Stat.of(v) for k, v in stages.items()}
        matrix_bytes = 4 * s0.n * t0.n
        out["paths"][path] = {
            "stages": stats, "fusion": Stat.of(fusion),
            "matching": sum(stats[k].median for k in MATCH_STAGES),
            "groups": s0.layout,
            "flops": correlation_flops(s0, t0),
            "image_bytes": statistics.median(h.nbytes() for h in described.values()),  # operands built by matching
            "bandwidth": {k: matrix_passes(k, factorized, two_way) * matrix_bytes / stats[k].median
                          for k in MATCH_STAGES if matrix_passes(k, factorized, two_way)},
            "match_peak_above": max(peaks) if peaks else 0,
        }
    for path in ("auto", "always"):
        diffs = [float((a - b).norm(dim=1).max()) for a, b in zip(predictions[path], predictions["never"])]
        out["paths"][path]["max_px_from_dense"] = max(diffs)
    s0 = model.extractor.describe(views[pairs[0][0]])
    out["hyperpixels"] = (s0.n, model.extractor.describe(views[pairs[0][1]]).n)
    out["dense_table_bytes"] = 4 * s0.n * s0.dim
    n_src, n_trg = out["hyperpixels"]
    out["copy_bandwidth"] = copy_bandwidth(n_src, n_trg, model.device)
    out["low_memory"] = model.config.low_memory
    out["memory_label"] = PeakMemory(model.device).label
    return out


def bench_memory_run(n_pairs: int = 2000, n_images: int = 400, side: int = 96, cache_gb: float = 0.02,
                     backbone: str = "efficientnet-lite0", sample_every: int = 100,
                     workdir: Path | None = None) -> dict:
    """A long synthetic evaluation (generated images, real pipeline): RSS along the way.

    ``n_images`` random images are paired round-robin into ``n_pairs`` pairs; the small
    cache budget forces constant eviction, as on SPair-71k.
    """
    import tempfile

    import numpy as np
    from PIL import Image

    from . import SCOT, SCOTConfig
    from .datasets.base import Dataset, Pair
    from .evaluation import EvalSettings, evaluate

    tmp = Path(workdir or tempfile.mkdtemp(prefix="scot-bench-"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_images):
        p = tmp / "images" / f"{i:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(side * 3 // 4, side, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    kps = torch.tensor([[side * 0.3, side * 0.3], [side * 0.6, side * 0.5], [side * 0.5, side * 0.6]])
    pairs = [Pair(index=i, pair_id=f"p{i}", category=f"c{(i // 100) % 10}", src=paths[i % n_images],
                  trg=paths[(i * 7 + 1) % n_images], src_kps=kps, trg_kps=kps + 1.0, trg_bbox=(0, 0, side, side))
             for i in range(n_pairs)]
    data = Dataset("synthetic", tmp, "test", pairs, sorted({p.category for p in pairs}), "bbox")
    model = SCOT(SCOTConfig(backbone=backbone, image_side=side, cam=False, preset="pfwillow"))
    samples: list[tuple[int, int]] = []

    def on_progress(done, total, rate, pck):
        if done % sample_every == 0 or done == total:
            samples.append((done, rss_bytes()))

    t0 = time.perf_counter()
    evaluate(model, data, tmp / "run", EvalSettings(thres="bbox", cache_bytes=int(cache_gb * 2**30)),
             {"synthetic": n_pairs}, on_progress=on_progress)
    wall = time.perf_counter() - t0
    steady = [r for d, r in samples if d >= max(sample_every * 2, n_pairs // 10)]
    return {"pairs": n_pairs, "images": n_images, "side": side, "cache_gb": cache_gb, "seconds": wall,
            "samples": samples, "rss_first": steady[0] if steady else None, "rss_last": steady[-1] if steady else None,
            "rss_max": max(steady) if steady else None, "rss_min": min(steady) if steady else None, "workdir": str(tmp)}


# --------------------------------------------------------------------------------------
FEATURE_SCALES = (1.0, 1.5, 2.0)
CAM_SETTINGS = ((1.0,), (1.0, 1.5), (1.0, 1.5, 2.0))


def pass_flops(backbone, x: torch.Tensor) -> int:
    """Floating-point operations of one full network pass (to the classifier) on ``x``, as
    :class:`torch.utils.flop_counter.FlopCounterMode` counts them (2 per multiply-add of the
    convolutions and matrix products; element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        backbone.extract(x, [0], head=True)
    return int(counter.get_total_flops())


def matmul_roof(n: int = 2048, device: torch.device | str = "cpu", repeats: int = 5) -> float:
    """FLOP/s of an n x n by n x n float32 matrix product: the compute roof."""
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    torch.mm(a, b)
    return 2 * n**3 / min(_time(lambda: torch.mm(a, b), device) for _ in range(repeats))


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
    2048^3 matmul (:func:`matmul_roof`) and a 64 MiB copy (:func:`copy_bandwidth`).
    ``weights=None`` takes each backbone's ImageNet weights, or seeded random ones where
    they are unavailable (the speed does not depend on them; ``notice`` says so).
    """
    from . import SCOT, SCOTConfig
    from .backbones import build_backbone
    from .errors import WeightsUnavailableError

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
                pass_times = [_time(run, dev) for _ in range(repeats)]
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
                times[k].append(_time(functools.partial(model.extract, image), dev))
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


def format_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f} MiB"


def _stage_lines(stages: dict[str, Stat], bandwidth: dict[str, float] | None = None,
                 floor: float | None = None) -> list[str]:
    lines = []
    for name, stat in stages.items():
        extra = ""
        if bandwidth and name in bandwidth and floor:
            extra = (f"   {bandwidth[name] / 1e9:5.1f} GB/s of the matrix "
                     f"({100 * bandwidth[name] / floor:.0f} % of a copy)")
        lines.append(f"  {name:<13}{stat.ms()}{extra}")
    return lines


def format_synthetic(res: dict, repeats: int, fine_dim: int, coarse_dim: int, coarse_stride: int, two_way: bool) -> str:
    """The report of :func:`bench_synthetic`."""
    lines = [f"synthetic match: n={res['n']} x m={res['m']}, D={res['dim']} ({fine_dim} on the grid + {coarse_dim} at "
             f"1/{coarse_stride}), {'two' if two_way else 'one'}-way, {res['threads']} threads, {res['device']}, "
             f"median [min-max] of {repeats}"]
    lines += _stage_lines(res["stages"], res["bandwidth"], res["copy_bandwidth"])
    lines.append(f"  {'after feats':<13}{res['after_features'].ms()}")
    lines.append(f"  correlation: factorized {res['correlation'].ms().strip()} vs the dense matmul "
                 f"{res['dense_matmul'].ms().strip()}: {res['dense_matmul'].median / res['correlation'].median:.1f}x")
    lines.append(f"  memory floor: torch.empty(N, M).copy_() moves {res['copy_bandwidth'] / 1e9:.1f} GB/s")
    if res.get("memory_label", "peak RSS") == "peak RSS":
        lines.append(f"  peak RSS: {format_bytes(res['peak_memory'])} (the process held "
                     f"{format_bytes(res['baseline_rss'])} "
                     f"before any operand: Python, PyTorch and its CUDA libraries)")
    else:
        lines.append(f"  {res['memory_label']}: {format_bytes(res['peak_memory'])} (tensors held before the runs: "
                     f"{format_bytes(res['baseline_memory'])}); host RSS {format_bytes(res['baseline_rss'])} before")
    return "\n".join(lines)


def format_pairs(res: dict, dataset: str) -> str:
    """The report of :func:`bench_pairs`: every path, the estimate behind the choice, the floors."""
    n, m = res["hyperpixels"]
    lines = [f"{res['pairs']} {dataset} pairs x {res['repeats']} repeats | {res['backbone']} | {n} x {m} hyperpixels | "
             f"{'two' if res['two_way'] else 'one'}-way | {res['threads']} threads, {res['device']} | median [min-max]"]
    lines += _stage_lines(res["features"])
    for path, label in (("auto", "chosen"), ("always", "factorized"), ("never", "dense")):
        r = res["paths"][path]
        groups = ", ".join(f"{c} ch at {h}x{w}{' (Gram)' if f else ''}" for (h, w), c, f in r["groups"])
        lines.append(f"path '{path}' ({label}): {groups}")
        lines.append(f"  estimate: {r['flops']['planned'] / 1e9:.2f} G multiply-adds for the correlation vs "
                     f"{r['flops']['dense'] / 1e9:.2f} G dense")
        lines.append(f"  {'fusion':<13}{r['fusion'].ms()}")
        lines += _stage_lines(r["stages"], r["bandwidth"], res["copy_bandwidth"])
        raised = 'resident set' if res.get('memory_label', 'peak RSS') == 'peak RSS' else 'GPU memory allocated'
        lines.append(f"  matching per pair: {r['matching']:.3f} s; image in cache: {format_bytes(r['image_bytes'])}; "
                     f"matching raised the {raised} "
                     f"by at most {format_bytes(r['match_peak_above'])}")
        if "max_px_from_dense" in r:
            lines.append(f"  keypoints vs the dense path: at most {r['max_px_from_dense']:.2e} px apart")
    dense, chosen = res["paths"]["never"]["stages"]["cost"].median, res["paths"]["auto"]["stages"]["cost"].median
    lines.append(f"correlation (cost stage): chosen {1000 * chosen:.1f} ms vs dense {1000 * dense:.1f} ms = "
                 f"{dense / chosen:.1f}x; the dense hyperpixel table would take "
                 f"{format_bytes(res['dense_table_bytes'])} "
                 f"per image")
    lines.append(f"memory floor: torch.empty({n}, {m}).copy_() moves {res['copy_bandwidth'] / 1e9:.1f} GB/s")
    return "\n".join(lines)


def format_memory(res: dict, side: int, cache_gb: float) -> str:
    """The report of :func:`bench_memory_run`."""
    return "\n".join([
        f"synthetic evaluation: {res['pairs']} pairs over {res['images']} images ({side}px), cache {cache_gb} GB, "
        f"{res['seconds']:.0f} s",
        "  pairs done -> RSS: " + ", ".join(f"{d}: {format_bytes(r)}" for d, r in res["samples"]),
        f"  after warm-up: first {format_bytes(res['rss_first'])}, last {format_bytes(res['rss_last'])}, "
        f"min {format_bytes(res['rss_min'])}, max {format_bytes(res['rss_max'])}",
    ])
