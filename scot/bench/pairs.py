"""``scot bench pairs``: every stage on real image pairs, for each correlation path (factorized,
dense, and the one the cost estimate chose) with the reason for the choice."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from ..hyperpixels import Hyperpixels
from .measure import MATCH_STAGES, PeakMemory, Stat, copy_bandwidth, format_bytes, matrix_passes, stage_lines


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
    from .. import SCOT
    from ..cost import correlation_flops
    from ..features import HyperpixelExtractor

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


def format_pairs(res: dict, dataset: str) -> str:
    """The report of :func:`bench_pairs`: every path, the estimate behind the choice, the floors."""
    n, m = res["hyperpixels"]
    lines = [f"{res['pairs']} {dataset} pairs x {res['repeats']} repeats | {res['backbone']} | {n} x {m} hyperpixels | "
             f"{'two' if res['two_way'] else 'one'}-way | {res['threads']} threads, {res['device']} | median [min-max]"]
    lines += stage_lines(res["features"])
    for path, label in (("auto", "chosen"), ("always", "factorized"), ("never", "dense")):
        r = res["paths"][path]
        groups = ", ".join(f"{c} ch at {h}x{w}{' (Gram)' if f else ''}" for (h, w), c, f in r["groups"])
        lines.append(f"path '{path}' ({label}): {groups}")
        lines.append(f"  estimate: {r['flops']['planned'] / 1e9:.2f} G multiply-adds for the correlation vs "
                     f"{r['flops']['dense'] / 1e9:.2f} G dense")
        lines.append(f"  {'fusion':<13}{r['fusion'].ms()}")
        lines += stage_lines(r["stages"], r["bandwidth"], res["copy_bandwidth"])
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
