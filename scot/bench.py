"""``scot bench``: stage-by-stage timings, the matmul floor, memory.

Three measurements:

* :func:`bench_synthetic`: the matching stages (cost, Sinkhorn, RHM, transfer) on random
  unit features of a given size, against the bare cosine matmul on the same operands
  (the physical floor of an exact pipeline), in fp32 and bf16;
* :func:`bench_pairs`: every stage on real image pairs, from image loading to transfer;
* :func:`bench_memory_run`: resident memory sampled along a long synthetic evaluation, to
  show that it stays flat however many pairs are scored.

Every figure is a median over repeats with its spread (min-max), measured in-process with
``time.perf_counter`` after warm-up; peak memory is the process's resident high-water
mark, reset before each measurement through ``/proc/self/clear_refs``.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .cost import cost_from_operands, make_operand
from .features import Hyperpixels
from .ot import scot_votes
from .rhm import rhm_grid
from .transfer import best_matches, transfer_keypoints

MATCH_STAGES = ("cost", "sinkhorn", "rhm", "transfer")


# --------------------------------------------------------------------------------------
# measurement helpers
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


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
    def of(cls, values: Sequence[float]) -> "Stat":
        return cls(statistics.median(values), min(values), max(values))

    def ms(self) -> str:
        return f"{1000 * self.median:9.1f} ms  [{1000 * self.low:.1f}-{1000 * self.high:.1f}]"


def _time(fn: Callable[[], object]) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
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
def match_stages(
    src_op: torch.Tensor, trg_op: torch.Tensor, src: dict, trg: dict, dtype: str, eps: float, exp2: float,
    keypoints: torch.Tensor,
) -> dict[str, float]:
    """One pass of the matching stages with the pipeline's own functions; seconds per stage."""
    t: dict[str, float] = {}
    holder: dict[str, torch.Tensor] = {}
    t["cost"] = _time(lambda: holder.__setitem__("C", cost_from_operands(src_op[None], trg_op[None], dtype)))
    mu, nu = src["mu"], trg["mu"]
    t["sinkhorn"] = _time(lambda: holder.__setitem__(
        "V", scot_votes(holder.pop("C"), mu, nu, eps=eps, exp2=exp2, consume_cost=True, cost_bound=1.0)[0]))
    n, m = src["n"], trg["n"]
    v = holder["V"][0, :n, :m]
    t["rhm"] = _time(lambda: rhm_grid(v, src["xs"], src["ys"], trg["xs"], trg["ys"], src["size"], trg["size"], out=v))

    def transfer() -> None:
        best, _ = best_matches(v)
        transfer_keypoints(src["boxes"], trg["boxes"], best, keypoints)

    t["transfer"] = _time(transfer)
    holder.clear()
    return t


def matmul_floor(src_op: torch.Tensor, trg_op: torch.Tensor) -> float:
    """The bare product of the padded operands, as the cost stage computes it."""
    a, b = src_op[None], trg_op[None]
    return _time(lambda: torch.bmm(a, b.transpose(1, 2)))


def _synthetic_image(n: int, dim: int, seed: int, device: torch.device, role: str, dtype: str) -> tuple[torch.Tensor, dict]:
    """The matmul operand of random unit features on a grid of n cells, and the grid's geometry."""
    rows, cols = grid_shape(n)
    g = torch.Generator().manual_seed(seed)
    operand = make_operand(torch.randn(rows * cols, dim, generator=g).to(device), role, dtype, normalize=True)
    jump = 4
    xs = torch.arange(cols, dtype=torch.float32) * jump
    ys = torch.arange(rows, dtype=torch.float32) * jump
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    half = 13
    boxes = torch.stack((xx.reshape(-1) - half, yy.reshape(-1) - half, xx.reshape(-1) + half, yy.reshape(-1) + half), 1)
    n_real = rows * cols
    rows_pad = -(-n_real // 16) * 16
    mu = torch.zeros(1, rows_pad, device=device)
    mu[0, :n_real] = torch.rand(n_real, generator=g).add_(0.5).to(device)
    mu /= mu.sum()
    info = {"n": n_real, "xs": xs, "ys": ys, "boxes": boxes, "size": (cols * jump, rows * jump), "mu": mu}
    return operand, info


def bench_synthetic(
    n: int = 4000, dim: int = 6400, repeats: int = 5, dtypes: Sequence[str] = ("float32", "bfloat16"),
    device: str = "cpu", eps: float = 0.05, exp2: float = 0.5,
) -> dict:
    """Matching stages vs the matmul floor at size n x dim, for each cost precision."""
    dev = torch.device(device)
    out: dict = {"dim": dim, "threads": torch.get_num_threads(), "device": str(dev), "dtypes": {},
                 "baseline_rss": rss_bytes()}
    floors = {}
    for dtype in dtypes:
        a, src = _synthetic_image(n, dim, 0, dev, "src", dtype)
        b, trg = _synthetic_image(n, dim, 1, dev, "trg", dtype)
        out["n"], out["m"] = src["n"], trg["n"]
        keypoints = src["boxes"][:: max(1, src["n"] // 10), :2] + 13.0
        with torch.inference_mode():
            for _ in range(2):  # warm-up
                match_stages(a, b, src, trg, dtype, eps, exp2, keypoints)
                matmul_floor(a, b)
            runs, mm = [], []
            reset_peak_rss()
            for _ in range(repeats):
                mm.append(matmul_floor(a, b))
                runs.append(match_stages(a, b, src, trg, dtype, eps, exp2, keypoints))
            peak = peak_rss_bytes()
        stages = {k: Stat.of([r[k] for r in runs]) for k in MATCH_STAGES}
        after = Stat.of([sum(r.values()) for r in runs])
        floor = Stat.of(mm)
        floors[dtype] = floor.median
        flops = 2.0 * a.shape[0] * b.shape[0] * a.shape[1]
        out["dtypes"][dtype] = {
            "stages": stages, "after_features": after, "matmul": floor,
            "gflops": flops / floor.median / 1e9, "ratio": after.median / floor.median, "peak_rss": peak,
            "operand_width": a.shape[1],
        }
        del a, b
    if "float32" in floors and "bfloat16" in floors:
        for dtype, res in out["dtypes"].items():
            res["ratio_vs_fp32_matmul"] = res["after_features"].median / floors["float32"]
            res["ratio_vs_bf16_matmul"] = res["after_features"].median / floors["bfloat16"]
    return out


def bench_pairs(model, pairs: Sequence[tuple[Path, Path, torch.Tensor]], repeats: int = 3) -> dict:
    """Every stage on real pairs: load+resize, backbone, CAM, fusion, cost, Sinkhorn, RHM, transfer."""
    from .image import load_image, resize_longest_side
    from .features import extract_hyperpixels

    cfg = model.config
    per_stage: dict[str, list[float]] = {}
    floors: list[float] = []
    after: list[float] = []
    match_peaks: list[int] = []
    reset_peak_rss()

    def describe(path) -> Hyperpixels:
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        loaded = load_image(path)
        resized, ratio = resize_longest_side(loaded.tensor, cfg.image_side)
        t["load+resize"] = time.perf_counter() - t0
        h = extract_hyperpixels(model.backbone, resized, model.hyperpixel_ids, ratio=ratio, original_size=loaded.size,
                                use_cam=cfg.cam, cam_scales=cfg.cam_scales, feature_scales=cfg.feature_scales,
                                cam_weighting=cfg.cam_weighting, cost_dtype=cfg.cost_dtype, timings=t)
        for k, v in t.items():
            per_stage.setdefault(k, []).append(v)
        return h

    with torch.inference_mode():
        for rep in range(repeats + 1):
            for src_path, trg_path, kps in pairs:
                s, t = describe(src_path), describe(trg_path)
                before = rss_bytes()
                reset_peak_rss()
                res = model.match(s, t, kps, keep_plan=False, check_bounds=False)
                match_peaks.append(peak_rss_bytes() - before)
                mm = matmul_floor(s.operand("src").to(model.device), t.operand("trg").to(model.device))
                if rep == 0:  # warm-up round
                    per_stage.clear()
                    match_peaks.clear()
                    continue
                for k in ("cost", "ot", "rhm", "transfer"):
                    per_stage.setdefault("sinkhorn" if k == "ot" else k, []).append(res.timings[k])
                after.append(sum(res.timings[k] for k in ("cost", "ot", "rhm", "transfer")))
                floors.append(mm)
    order = ["load+resize", "backbone", "cam", "fusion", "cost", "sinkhorn", "rhm", "transfer"]
    stages = {k: Stat.of(per_stage[k]) for k in order if k in per_stage}
    per_image = ["load+resize", "backbone", "cam", "fusion"]
    feature_time = sum(stages[k].median for k in per_image if k in stages)
    match_time = sum(stages[k].median for k in ("cost", "sinkhorn", "rhm", "transfer"))
    return {
        "pairs": len(pairs), "repeats": repeats, "threads": torch.get_num_threads(), "device": str(model.device),
        "backbone": model.backbone.name, "cost_dtype": cfg.cost_dtype, "stages": stages,
        "per_image_seconds": feature_time, "per_pair_matching_seconds": match_time,
        "per_pair_seconds_uncached": 2 * feature_time + match_time,
        "matmul": Stat.of(floors), "after_features": Stat.of(after),
        "ratio": statistics.median(after) / statistics.median(floors),
        "match_peak_above": max(match_peaks), "hyperpixels": (s.n, t.n), "low_memory": bool(cfg.stream_block),
    }


def bench_precision(model, pairs, alphas=(0.05, 0.10, 0.15)) -> dict:
    """bf16 against fp32 cost on real pairs: keypoint agreement and PCK.

    Each image is extracted once; the bf16 operands are built from the same features, so
    the only difference between the two runs is the precision of the cost matmul.
    """
    import dataclasses

    from . import SCOT
    from .pck import normalised_distances, pair_pck, pck_threshold

    fp32 = SCOT(model.config.replace(cost_dtype="float32"), backbone=model.backbone)
    bf16 = SCOT(model.config.replace(cost_dtype="bfloat16"), backbone=model.backbone)
    cache: dict = {}
    dists: list[float] = []
    pck = {"float32": {a: [] for a in alphas}, "bfloat16": {a: [] for a in alphas}}
    times = {"float32": 0.0, "bfloat16": 0.0}

    def get(path):
        if path not in cache:
            cache.clear() if len(cache) > 16 else None
            cache[path] = fp32.extract(path)
        return cache[path]

    for pair in pairs:
        s, t = get(pair.src), get(pair.trg)
        for name, m, (si, ti) in (("float32", fp32, (s, t)), ("bfloat16", bf16, (
                dataclasses.replace(s, cost_dtype="bfloat16", _operands={}),
                dataclasses.replace(t, cost_dtype="bfloat16", _operands={})))):
            t0 = time.perf_counter()
            res = m.match(si, ti, pair.src_kps, keep_plan=False, check_bounds=False)
            times[name] += time.perf_counter() - t0
            thr = pck_threshold("bbox" if pair.trg_bbox is not None else "img", t.original_size, pair.trg_bbox)
            d = normalised_distances(res.transferred, pair.trg_kps, thr).tolist()
            for a in alphas:
                pck[name][a].append(pair_pck(d, a))
            if name == "float32":
                ref = res.transferred
            else:
                dists.extend(torch.linalg.vector_norm(res.transferred - ref, dim=1).tolist())
    within = sum(d <= 1.0 for d in dists) / len(dists)
    return {
        "pairs": len(pairs), "keypoints": len(dists), "within_1px": within, "max_px": max(dists),
        "pck": {name: {f"{a:.2f}": 100 * sum(v) / len(v) for a, v in by.items()} for name, by in pck.items()},
        "matching_seconds": times,
    }


def bench_memory_run(n_pairs: int = 2000, n_images: int = 400, side: int = 96, cache_gb: float = 0.02,
                     backbone: str = "efficientnet-lite0", sample_every: int = 100, workdir: Path | None = None) -> dict:
    """A long synthetic evaluation (generated images, real pipeline): RSS along the way.

    ``n_images`` random images are paired round-robin into ``n_pairs`` pairs; the small
    cache budget forces constant eviction, as on SPair-71k.
    """
    import tempfile

    import numpy as np
    from PIL import Image

    from . import SCOT, SCOTConfig
    from .datasets.base import Dataset, Pair
    from .evaluate import EvalSettings, evaluate

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


def format_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f} MiB"
