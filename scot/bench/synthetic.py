"""``scot bench synthetic``: the matching stages on random hyperpixels in a preset's layout,
against the dense matmul of the same problem and against a plain copy of the N x M matrix."""

from __future__ import annotations

import math

import torch

from .. import device as _device
from ..errors import ScotError
from ..hyperpixels import Hyperpixels
from ..precision import fp32_precision
from .measure import (
    MATCH_STAGES,
    PeakMemory,
    Stat,
    copy_bandwidth,
    format_bytes,
    matrix_passes,
    peak_rss_bytes,
    rss_bytes,
    stage_lines,
    timed,
)


def grid_shape(n: int, aspect: float = 4 / 3) -> tuple[int, int]:
    """(rows, cols) with rows * cols == n and cols / rows as close to ``aspect`` as possible."""
    best = (1, n)
    for rows in range(1, int(math.isqrt(n)) + 1):
        if n % rows == 0:
            cols = n // rows
            if abs(math.log(cols / rows / aspect)) < abs(math.log(best[1] / best[0] / aspect)):
                best = (rows, cols)
    return best


def _synthetic_hyperpixels(grid: tuple[int, int], fine_dim: int, coarse_dim: int, coarse_stride: int,
                           seed: int, device: torch.device) -> Hyperpixels:
    """Random maps in the layout of a real preset: ``fine_dim`` channels on the grid and
    ``coarse_dim`` channels ``coarse_stride`` times coarser, with boxes, weights and geometry."""
    from ..backbones import Geometry
    from ..hyperpixels import LayerGroup, bilinear_matrix, box_centres, receptive_field_boxes

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
    from .. import SCOT, SCOTConfig
    from ..cost import Correlation

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
            t = timed(lambda: torch.mm(dense_src, dense_trg.t()), dev)
            if rep >= 2:
                runs.append(dict(result.timings))
                dense.append(t)
        peak = memory.peak()
        t_corr = [timed(lambda: Correlation(src, trg).full(), dev) for _ in range(repeats)]
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


def format_synthetic(res: dict, repeats: int, fine_dim: int, coarse_dim: int, coarse_stride: int, two_way: bool) -> str:
    """The report of :func:`bench_synthetic`."""
    lines = [f"synthetic match: n={res['n']} x m={res['m']}, D={res['dim']} ({fine_dim} on the grid + {coarse_dim} at "
             f"1/{coarse_stride}), {'two' if two_way else 'one'}-way, {res['threads']} threads, {res['device']}, "
             f"median [min-max] of {repeats}"]
    lines += stage_lines(res["stages"], res["bandwidth"], res["copy_bandwidth"])
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
