"""``scot bench memory``: resident memory sampled along a long synthetic evaluation, to show
that it stays flat however many pairs are scored."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .measure import format_bytes, rss_bytes


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

    from .. import SCOT, SCOTConfig
    from ..datasets.base import Dataset, Pair
    from ..evaluation import EvalSettings, evaluate

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


def format_memory(res: dict, side: int, cache_gb: float) -> str:
    """The report of :func:`bench_memory_run`."""
    return "\n".join([
        f"synthetic evaluation: {res['pairs']} pairs over {res['images']} images ({side}px), cache {cache_gb} GB, "
        f"{res['seconds']:.0f} s",
        "  pairs done -> RSS: " + ", ".join(f"{d}: {format_bytes(r)}" for d, r in res["samples"]),
        f"  after warm-up: first {format_bytes(res['rss_first'])}, last {format_bytes(res['rss_last'])}, "
        f"min {format_bytes(res['rss_min'])}, max {format_bytes(res['rss_max'])}",
    ])
