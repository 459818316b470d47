"""What an evaluation run reports: ``summary.json``, ``per_pair.csv``, charts, pictures, the table."""

from __future__ import annotations

import csv
import io
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..datasets import Dataset
from ..pck import ALPHAS, HEADLINE_ALPHA
from ..writing import atomic_write_json, atomic_write_text
from .journal import RunState
from .protocol import build_protocol, threshold_label
from .scoring import mirror_keypoints

if TYPE_CHECKING:
    from ..cache import LRUCache
    from ..model import SCOT
    from .settings import EvalSettings


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import numpy

    from .. import __version__

    try:
        tv = version("torchvision")
    except PackageNotFoundError:  # pragma: no cover
        tv = "not installed"
    info = {
        "scot": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "torchvision": tv, "numpy": numpy.__version__, "platform": platform.platform(),
        "cpu_threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def write_per_pair_csv(path: Path, records: list[dict], alphas=ALPHAS) -> None:
    records = sorted(records, key=lambda r: r["index"])
    flag_names = sorted({k for r in records for k in (r.get("flags") or {})})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "pair_id", "category", "source", "target", "flipped", "n_kps", "thr_px"]
               + [f"pck@{a:.2f}" for a in alphas] + flag_names + ["pred_xy", "gt_xy", "dist_over_thr"])
    for r in records:
        w.writerow([r["index"], r["pair_id"], r["category"], r["src"], r["trg"], int(r.get("flipped", False)),
                    r["n_kps"], f"{r['thr']:.3f}"]
                   + [f"{r['pck'][f'{a:.2f}']:.6f}" for a in alphas]
                   + [(r.get("flags") or {}).get(f, "") for f in flag_names]
                   + [";".join(f"{x:.3f} {y:.3f}" for x, y in r["pred"]),
                      ";".join(f"{x:.3f} {y:.3f}" for x, y in r["gt"]),
                      ";".join(f"{d:.6f}" for d in r["dist"])])
    atomic_write_text(path, buf.getvalue())


def build_summary(model: SCOT, dataset: Dataset, identity: dict, state: RunState, status: str,
                  total_pairs: int, cache: LRUCache | None, settings: EvalSettings, world_size: int = 1,
                  sharding: dict | None = None) -> dict:
    """The ``summary.json`` document.

    Clocks are those of every journal in the run (:meth:`RunState.totals`): seconds and
    images summed over processes, wall time the longest.  ``world_size`` is the number of
    processes of the run (torchrun); ``sharding`` describes how they split the pairs.
    """
    n = len(state.records)
    tables = state.table.summary() if n else {}
    headline = tables.get("overall", {}).get("pck_mean_over_pairs", {}).get(f"{HEADLINE_ALPHA:.2f}")
    clocks = state.totals()
    wall, feature, match = clocks["wall_seconds"], clocks["feature_seconds"], clocks["match_seconds"]
    timing = {
        "wall_seconds": round(wall, 3),
        "feature_seconds": round(feature, 3),
        "matching_seconds": round(match, 3),
        "seconds_per_pair": round(wall / n, 4) if n else None,
        "matching_seconds_per_pair": round(match / n, 4) if n else None,
        "pairs_per_second": round(n / wall, 3) if wall else None,
        "images_extracted": clocks["images_extracted"],
        "images_per_second": round(clocks["images_extracted"] / feature, 3) if feature else None,
        "batch_size": settings.batch_size,
        "cache_budget_gb": round(settings.cache_bytes / 2**30, 3),
    }
    if cache is not None:
        timing["cache_hits"], timing["cache_misses"] = cache.hits, cache.misses
    protocol = build_protocol(dataset, state.records, settings.thres, settings.alphas, model.config.image_side,
                              identity["selection"], status)
    summary = {
        "status": status,
        "protocol": protocol,
        "pairs_scored": n,
        "pairs_total": total_pairs,
        "world_size": world_size,
        "headline": {"metric": f"PCK@{HEADLINE_ALPHA:.2f}, mean over pairs (%)", "value": headline},
        "dataset": {"name": dataset.name, "split": dataset.split, "root": str(dataset.root),
                    "pair_file": str(dataset.source_file), "selection": identity["selection"],
                    "thres": settings.thres, "alphas": list(settings.alphas)},
        "model": model.describe(),
        "versions": {**versions(), **model.device_info()},
        "pck": tables,
        "timing": timing,
    }
    if sharding is not None:
        summary["sharding"] = sharding
    return summary


def write_charts(run_dir: Path, state: RunState, protocol: dict) -> None:
    """``pck_per_class.png`` and ``pck_curve.png``, titled with the run's threshold rule and averaging."""
    from ..viz2d import bar_chart, line_chart

    label = f"{protocol['dataset']} ({protocol['split']})"
    rule, headline = threshold_label(protocol), protocol["averaging"]["headline"]
    cats = state.table.by_category()
    labels = list(cats)
    values = [state.table.mean_over_pairs(HEADLINE_ALPHA, recs) for recs in cats.values()]
    labels.append("mean")
    values.append(state.table.mean_over_pairs(HEADLINE_ALPHA))
    bar_chart(labels, values, f"{label}: PCK@{HEADLINE_ALPHA:.2f} per class, {headline}\nthreshold {rule}", "PCK (%)",
              run_dir / "pck_per_class.png")
    alphas = [i / 100 for i in range(0, 21)]
    others = [a for a in protocol["averaging"]["reported"] if a != headline]
    line_chart(alphas, state.table.curve(alphas), f"{label}: PCK against α\nthreshold {rule}\n{headline} (headline)"
               + "".join(f", {a}" for a in others), "α", "PCK (%)", run_dir / "pck_curve.png")


def save_visualisations(model: SCOT, dataset: Dataset, state: RunState, run_dir: Path, n: int) -> list[Path]:
    """Match visualisations of the n worst and n best pairs (by PCK@0.1, then distance); a
    run of fewer than 2n pairs draws each pair once, its worse half as worst."""
    from ..image import load_image
    from ..viz2d import DISPLAY_SIDE, plot_matches

    key = f"{HEADLINE_ALPHA:.2f}"
    ranked = sorted(state.records, key=lambda r: (r["pck"][key], -sum(r["dist"]) / max(len(r["dist"]), 1)))
    worst = ranked[:min(n, (len(ranked) + 1) // 2)]
    best = ranked[len(worst):][::-1][:n]
    chosen = [("worst", r) for r in worst] + [("best", r) for r in best]
    by_index = {p.index: p for p in dataset.pairs}
    out_dir = run_dir / "viz"
    written = []
    for tag, rec in chosen:
        pair = by_index.get(rec["index"])
        if pair is None:
            continue
        s = model.extract(pair.src, flip=pair.flip, with_mirror=model.config.flip == "auto")
        t = model.extract(pair.trg, flip=pair.flip)
        src_kps, trg_kps, _ = pair.oriented(s.original_size[0], t.original_size[0])
        result = model.match(s, t, src_kps, keep_plan=False, check_bounds=False,
                             mirror_keypoints=mirror_keypoints(model, pair, s.original_size[0]))
        src_img, trg_img = load_image(pair.src, max_side=DISPLAY_SIDE), load_image(pair.trg, max_side=DISPLAY_SIDE)
        a, b = src_img.tensor, trg_img.tensor
        if pair.flip:
            a, b = a.flip(-1), b.flip(-1)
        assert result.transferred is not None  # keypoints were given
        matches = result.matches(60)
        matches[:, 0:2] *= src_img.scale
        matches[:, 2:4] *= trg_img.scale
        path = out_dir / f"{tag}-{rec['index']:05d}-{pair.pair_id.replace(':', '_').replace('/', '_')}.png"
        plot_matches(a, b, matches, src_kps * src_img.scale, result.transferred * trg_img.scale,
                     gt_keypoints=trg_kps * trg_img.scale,
                     title=f"{pair.pair_id}  ({tag})",
                     subtitle=f"PCK@0.10 = {100 * rec['pck'][key]:.0f}%   dotted: ground truth   {model.backbone.name}"
                              + ("   source matched mirrored" if result.flipped else ""),
                     path=path)
        written.append(path)
    return written


def write_figures(model: SCOT, dataset: Dataset, state: RunState, run_dir: Path, summary: dict, n_viz: int) -> dict:
    """The charts of a finished run, and its ``n_viz`` worst and best pairs drawn.

    The drawings are listed in ``summary["visualisations"]`` and ``summary.json`` is
    rewritten with them; returns ``summary``.
    """
    if not state.records:
        return summary
    write_charts(run_dir, state, summary["protocol"])
    if n_viz > 0:
        summary["visualisations"] = [str(p) for p in save_visualisations(model, dataset, state, run_dir, n_viz)]
        atomic_write_json(run_dir / "summary.json", summary)
    return summary


def format_table(summary: dict) -> str:
    """A paper-style per-class table of PCK (mean over pairs) at every alpha."""
    pck = summary["pck"]
    if not pck:
        return "no pairs scored"
    alphas = summary["dataset"]["alphas"]
    head = f"{'class':<18}{'pairs':>7}" + "".join(f"{'a=' + format(a, '.2f'):>9}" for a in alphas)
    lines = [head, "-" * len(head)]
    for cat, row in pck["per_category"].items():
        lines.append(f"{cat:<18}{row['pairs']:>7}"
                     + "".join(f"{row['pck_mean_over_pairs'][f'{a:.2f}']:>9.1f}" for a in alphas))
    lines.append("-" * len(head))
    ov = pck["overall"]
    lines.append(f"{'mean over pairs':<18}{ov['pairs']:>7}"
                 + "".join(f"{ov['pck_mean_over_pairs'][f'{a:.2f}']:>9.1f}" for a in alphas))
    lines.append(f"{'mean over kps':<18}{ov['keypoints']:>7}"
                 + "".join(f"{ov['pck_mean_over_keypoints'][f'{a:.2f}']:>9.1f}" for a in alphas))
    for flag, levels in pck.get("per_flag", {}).items():
        cells = "  ".join(f"{lvl}: {row['pck_mean_over_pairs']['0.10']:.1f} ({row['pairs']})"
                          for lvl, row in levels.items())
        lines.append(f"{flag:<18} PCK@0.10 by level: {cells}")
    return "\n".join(lines)
