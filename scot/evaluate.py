"""``scot eval``: run a benchmark through the SCOT API and report PCK like the paper.

The runner:

* extracts every image once into a byte-budgeted LRU cache and reuses it across pairs;
* matches pairs in batches through the batched solver;
* appends each finished pair to ``pairs.jsonl`` (flushed and fsync'd), so an interruption
  or crash loses nothing already scored and ``--resume`` continues after the last pair;
* rewrites ``per_pair.csv`` and ``summary.json`` atomically as it goes and at the end,
  then draws ``pck_per_class.png``, ``pck_curve.png`` and optional visualisations.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .cache import LRUCache
from .datasets import Dataset, Pair
from .errors import ScotError
from .features import Hyperpixels
from .image import load_image
from .io import atomic_write_json, atomic_write_text
from .model import SCOT
from .pck import ALPHAS, HEADLINE_ALPHA, PCKTable, normalised_distances, pair_pck, pck_threshold

JOURNAL = "pairs.jsonl"
RUN_FILE = "run.json"
SNAPSHOT_SECONDS = 15.0


@dataclass
class EvalSettings:
    thres: str  # "img" or "bbox"
    batch_size: int = 1
    cache_bytes: int = 2 << 30
    save_viz: int = 0
    alphas: tuple[float, ...] = ALPHAS


@dataclass
class RunState:
    """What has been scored so far (restored from the journal on --resume)."""

    table: PCKTable = field(default_factory=PCKTable)
    records: list[dict] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    feature_seconds: float = 0.0
    match_seconds: float = 0.0
    images_extracted: int = 0
    wall_seconds: float = 0.0


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import numpy

    from . import __version__

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


def run_identity(model: SCOT, dataset: Dataset, settings: EvalSettings, selection: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for a run to be resumed."""
    cfg = model.config.to_dict()
    cfg.pop("device", None)
    return {
        "dataset": dataset.name, "split": dataset.split, "pair_file": str(dataset.source_file),
        "selection": selection, "thres": settings.thres, "backbone": model.backbone.name,
        "weights": model.backbone.weights_source, "config": cfg,
    }


# --------------------------------------------------------------------------------------
# journal
def load_journal(run_dir: Path) -> RunState:
    state = RunState()
    path = run_dir / JOURNAL
    if not path.is_file():
        return state
    good_bytes = 0
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                rec = json.loads(raw)
                if not raw.endswith(b"\n"):
                    raise ValueError("partial line")
            except ValueError:
                break  # a line cut short by a crash: drop it and everything after
            good_bytes += len(raw)
            _absorb(state, rec)
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as fh:
            fh.truncate(good_bytes)
    return state


def _absorb(state: RunState, rec: dict) -> None:
    if rec.get("kind") == "timing":
        state.feature_seconds = rec["feature_seconds"]
        state.match_seconds = rec["match_seconds"]
        state.images_extracted = rec["images_extracted"]
        state.wall_seconds = rec["wall_seconds"]
        return
    if rec["index"] in state.done:
        return
    state.done.add(rec["index"])
    state.records.append(rec)
    state.table.add(rec["category"], rec["dist"], rec.get("flags"))


class Journal:
    def __init__(self, path: Path) -> None:
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        for rec in records:
            self.fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


# --------------------------------------------------------------------------------------
# images
def _prepare_image(model: SCOT, pair: Pair, which: str) -> Hyperpixels:
    return model.extract(pair.src if which == "src" else pair.trg, flip=pair.flip)


def score_pair(pair: Pair, result, thres: str, alphas=ALPHAS) -> dict:
    """Score one matched pair in the resized target frame; return its journal record."""
    s, t = result.src, result.trg
    _, trg_kps, trg_bbox = pair.oriented(s.original_size[0], t.original_size[0])
    if thres == "bbox" and trg_bbox is None:
        raise ScotError(f"--thres bbox: pair {pair.pair_id} has no target bounding box (annotation files missing?)")
    thr = pck_threshold(thres, t.original_size, trg_bbox)
    gt_resized = trg_kps * t.ratio
    dist = normalised_distances(result.transferred_resized, gt_resized, thr * t.ratio).tolist()
    rec = {
        "index": pair.index, "pair_id": pair.pair_id, "category": pair.category,
        "src": str(pair.src), "trg": str(pair.trg), "flip": pair.flip, "n_kps": len(dist),
        "thr": thr, "dist": [round(d, 6) for d in dist],
        "pred": [[round(x, 3), round(y, 3)] for x, y in result.transferred.tolist()],
        "gt": [[round(x, 3), round(y, 3)] for x, y in trg_kps.tolist()],
        "pck": {f"{a:.2f}": pair_pck(dist, a) for a in alphas},
    }
    if pair.flags:
        rec["flags"] = pair.flags
    return rec


# --------------------------------------------------------------------------------------
# reports
def write_per_pair_csv(path: Path, records: list[dict], alphas=ALPHAS) -> None:
    records = sorted(records, key=lambda r: r["index"])
    flag_names = sorted({k for r in records for k in (r.get("flags") or {})})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "pair_id", "category", "source", "target", "n_kps", "thr_px"]
               + [f"pck@{a:.2f}" for a in alphas] + flag_names + ["pred_xy", "gt_xy", "dist_over_thr"])
    for r in records:
        w.writerow([r["index"], r["pair_id"], r["category"], r["src"], r["trg"], r["n_kps"], f"{r['thr']:.3f}"]
                   + [f"{r['pck'][f'{a:.2f}']:.6f}" for a in alphas]
                   + [(r.get("flags") or {}).get(f, "") for f in flag_names]
                   + [";".join(f"{x:.3f} {y:.3f}" for x, y in r["pred"]),
                      ";".join(f"{x:.3f} {y:.3f}" for x, y in r["gt"]),
                      ";".join(f"{d:.6f}" for d in r["dist"])])
    atomic_write_text(path, buf.getvalue())


def build_summary(model: SCOT, dataset: Dataset, identity: dict, state: RunState, status: str,
                  total_pairs: int, cache: LRUCache | None, settings: EvalSettings) -> dict:
    n = len(state.records)
    tables = state.table.summary() if n else {}
    headline = tables.get("overall", {}).get("pck_mean_over_pairs", {}).get(f"{HEADLINE_ALPHA:.2f}")
    timing = {
        "wall_seconds": round(state.wall_seconds, 3),
        "feature_seconds": round(state.feature_seconds, 3),
        "matching_seconds": round(state.match_seconds, 3),
        "seconds_per_pair": round(state.wall_seconds / n, 4) if n else None,
        "matching_seconds_per_pair": round(state.match_seconds / n, 4) if n else None,
        "pairs_per_second": round(n / state.wall_seconds, 3) if state.wall_seconds else None,
        "images_extracted": state.images_extracted,
        "images_per_second": round(state.images_extracted / state.feature_seconds, 3) if state.feature_seconds else None,
        "batch_size": settings.batch_size,
        "cache_budget_gb": round(settings.cache_bytes / 2**30, 3),
    }
    if cache is not None:
        timing["cache_hits"], timing["cache_misses"] = cache.hits, cache.misses
    return {
        "status": status,
        "pairs_scored": n,
        "pairs_total": total_pairs,
        "headline": {"metric": f"PCK@{HEADLINE_ALPHA:.2f}, mean over pairs (%)", "value": headline},
        "dataset": {"name": dataset.name, "split": dataset.split, "root": str(dataset.root),
                    "pair_file": str(dataset.source_file), "selection": identity["selection"],
                    "thres": settings.thres, "alphas": list(settings.alphas)},
        "model": model.describe(),
        "versions": versions(),
        "pck": tables,
        "timing": timing,
    }


def write_charts(run_dir: Path, state: RunState, dataset_label: str) -> None:
    from .viz2d import bar_chart, line_chart

    cats = state.table.by_category()
    labels = list(cats)
    values = [state.table.mean_over_pairs(HEADLINE_ALPHA, recs) for recs in cats.values()]
    labels.append("mean")
    values.append(state.table.mean_over_pairs(HEADLINE_ALPHA))
    bar_chart(labels, values, f"{dataset_label}: PCK@0.1 per class (mean over pairs)", "PCK (%)", run_dir / "pck_per_class.png")
    alphas = [i / 100 for i in range(0, 21)]
    line_chart(alphas, state.table.curve(alphas), f"{dataset_label}: PCK against alpha", "alpha", "PCK (%)", run_dir / "pck_curve.png")


def save_visualisations(model: SCOT, dataset: Dataset, state: RunState, run_dir: Path, n: int) -> list[Path]:
    """Match visualisations of the n worst and n best pairs (by PCK@0.1, then distance)."""
    from .viz2d import plot_matches

    key = f"{HEADLINE_ALPHA:.2f}"
    ranked = sorted(state.records, key=lambda r: (r["pck"][key], -sum(r["dist"]) / max(len(r["dist"]), 1)))
    chosen = [("worst", r) for r in ranked[:n]] + [("best", r) for r in ranked[::-1][:n]]
    by_index = {p.index: p for p in dataset.pairs}
    out_dir = run_dir / "viz"
    written = []
    for tag, rec in chosen:
        pair = by_index.get(rec["index"])
        if pair is None:
            continue
        s, t = _prepare_image(model, pair, "src"), _prepare_image(model, pair, "trg")
        src_kps, trg_kps, _ = pair.oriented(s.original_size[0], t.original_size[0])
        result = model.match(s, t, src_kps, keep_plan=False, check_bounds=False)
        src_img = load_image(pair.src).tensor
        trg_img = load_image(pair.trg).tensor
        if pair.flip:
            src_img, trg_img = src_img.flip(-1), trg_img.flip(-1)
        path = out_dir / f"{tag}-{rec['index']:05d}-{pair.pair_id.replace(':', '_').replace('/', '_')}.png"
        plot_matches(src_img, trg_img, result.matches(60), src_kps, result.transferred, gt_keypoints=trg_kps,
                     title=f"{pair.pair_id}  ({tag})",
                     subtitle=f"PCK@0.10 = {100 * rec['pck'][key]:.0f}%   dotted: ground truth   {model.backbone.name}",
                     path=path)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------
def _batches(pairs: list[Pair], size: int) -> Iterator[list[Pair]]:
    for i in range(0, len(pairs), size):
        yield pairs[i : i + size]


def evaluate(
    model: SCOT,
    dataset: Dataset,
    run_dir: Path,
    settings: EvalSettings,
    selection: dict[str, Any],
    resume: bool = False,
    on_progress: Callable[[int, int, float, float], None] | None = None,
) -> dict:
    """Score ``dataset`` with ``model``; write everything to ``run_dir``; return the summary.

    ``on_progress(done, total, pairs_per_second, running_pck)`` is called after each batch.
    KeyboardInterrupt and errors leave a consistent, resumable run directory behind.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = run_identity(model, dataset, settings, selection)
    run_file = run_dir / RUN_FILE
    if resume and run_file.is_file():
        previous = json.loads(run_file.read_text())
        if previous != identity:
            diff = sorted(k for k in identity if previous.get(k) != identity.get(k))
            raise ScotError(f"--resume: {run_dir} was run with different settings ({', '.join(diff)} differ)")
    elif (run_dir / JOURNAL).exists() and not resume:
        raise ScotError(f"{run_dir} already holds results; pass --resume to continue it or choose another --output-dir")
    atomic_write_json(run_file, identity)

    state = load_journal(run_dir) if resume else RunState()
    todo = [p for p in dataset.pairs if p.index not in state.done]
    total = len(dataset.pairs)
    cache: LRUCache[Hyperpixels] = LRUCache(settings.cache_bytes, lambda h: h.nbytes())
    journal = Journal(run_dir / JOURNAL)
    label = f"{dataset.name} ({dataset.split})"
    status = "interrupted"
    wall0 = time.perf_counter() - state.wall_seconds
    last_snapshot = time.perf_counter()

    def snapshot(final_status: str) -> dict:
        state.wall_seconds = time.perf_counter() - wall0
        journal.write([{"kind": "timing", "feature_seconds": state.feature_seconds, "match_seconds": state.match_seconds,
                        "images_extracted": state.images_extracted, "wall_seconds": state.wall_seconds}])
        summary = build_summary(model, dataset, identity, state, final_status, total, cache, settings)
        write_per_pair_csv(run_dir / "per_pair.csv", state.records, settings.alphas)
        atomic_write_json(run_dir / "summary.json", summary)
        return summary

    try:
        for batch in _batches(todo, max(1, settings.batch_size)):
            t0 = time.perf_counter()
            items = []
            for pair in batch:
                hs = []
                for which in ("src", "trg"):
                    key = pair.src_key if which == "src" else pair.trg_key
                    h = cache.get(key)
                    if h is None:
                        h = _prepare_image(model, pair, which)
                        cache.put(key, h)
                        state.images_extracted += 1
                    hs.append(h)
                src_kps, _, _ = pair.oriented(hs[0].original_size[0], hs[1].original_size[0])
                items.append((hs[0], hs[1], src_kps))
            t1 = time.perf_counter()
            results = model.match_batch(items, keep_plan=False, check_bounds=False)
            records = [score_pair(pair, res, settings.thres, settings.alphas) for pair, res in zip(batch, results)]
            t2 = time.perf_counter()
            state.feature_seconds += t1 - t0
            state.match_seconds += t2 - t1
            journal.write(records)
            for rec in records:
                _absorb(state, rec)
            if on_progress is not None:
                elapsed = time.perf_counter() - wall0
                on_progress(len(state.records), total, len(state.records) / max(elapsed, 1e-9),
                            state.table.mean_over_pairs(HEADLINE_ALPHA))
            if time.perf_counter() - last_snapshot > SNAPSHOT_SECONDS:
                snapshot("running")
                last_snapshot = time.perf_counter()
        status = "complete"
    finally:
        summary = snapshot(status)
        journal.close()
    if state.records:
        write_charts(run_dir, state, label)
    if settings.save_viz > 0 and state.records:
        summary["visualisations"] = [str(p) for p in save_visualisations(model, dataset, state, run_dir, settings.save_viz)]
        atomic_write_json(run_dir / "summary.json", summary)
    return summary


def find_resumable(results_root: Path, dataset: str, backbone: str) -> Path | None:
    """The newest run directory of ``dataset``/``backbone`` that is not complete."""
    if not results_root.is_dir():
        return None
    candidates = sorted(results_root.glob(f"{dataset}-{backbone}-*"), key=lambda p: p.name, reverse=True)
    for cand in candidates:
        summary = cand / "summary.json"
        if (cand / JOURNAL).is_file():
            try:
                if json.loads(summary.read_text()).get("status") == "complete":
                    continue
            except (OSError, ValueError):
                pass
            return cand
    return None


def format_table(summary: dict) -> str:
    """A paper-style per-class table of PCK (mean over pairs) at every alpha."""
    pck = summary["pck"]
    if not pck:
        return "no pairs scored"
    alphas = summary["dataset"]["alphas"]
    head = f"{'class':<18}{'pairs':>7}" + "".join(f"{'a=' + format(a, '.2f'):>9}" for a in alphas)
    lines = [head, "-" * len(head)]
    for cat, row in pck["per_category"].items():
        lines.append(f"{cat:<18}{row['pairs']:>7}" + "".join(f"{row['pck_mean_over_pairs'][f'{a:.2f}']:>9.1f}" for a in alphas))
    lines.append("-" * len(head))
    ov = pck["overall"]
    lines.append(f"{'mean over pairs':<18}{ov['pairs']:>7}" + "".join(f"{ov['pck_mean_over_pairs'][f'{a:.2f}']:>9.1f}" for a in alphas))
    lines.append(f"{'mean over kps':<18}{ov['keypoints']:>7}" + "".join(f"{ov['pck_mean_over_keypoints'][f'{a:.2f}']:>9.1f}" for a in alphas))
    for flag, levels in pck.get("per_flag", {}).items():
        cells = "  ".join(f"{lvl}: {row['pck_mean_over_pairs']['0.10']:.1f} ({row['pairs']})" for lvl, row in levels.items())
        lines.append(f"{flag:<18} PCK@0.10 by level: {cells}")
    return "\n".join(lines)
