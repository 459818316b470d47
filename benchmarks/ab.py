"""Time two checkouts of scot side by side, in alternating rounds, and give a paired interval.

Each round starts one fresh process per checkout (``PYTHONPATH`` set to it), in alternating
order, so both versions see the same machine state; a round's ratio is old / new, and the
report gives the median ratio with a distribution-free interval over rounds (order
statistics of the ratios: the sign test's interval for the median).

    python benchmarks/ab.py describe --old ../base --new . --backbone efficientnet-lite2 \\
        --images ../shared/datasets/pfpascal-val/PF-PASCAL/JPEGImages --count 12 --rounds 8
    python benchmarks/ab.py eval --old ../base --new . --rounds 5 -- \\
        --dataset pfwillow --datapath ../shared/datasets/pfwillow-dev --backbone efficientnet-lite2 --limit 40
    python benchmarks/ab.py pairs --old ../base --new . --rounds 4 -- \\
        --datapath ../shared/datasets/pfwillow-dev --backbone resnet101 --weights random --pairs 3 --repeats 3

``describe`` times ``SCOT(SCOTConfig(backbone=..., preset=...)).extract(image)`` on ``count``
distinct images (after one warm-up image), one thread; a round's figure is the mean over the
images.  ``eval`` runs ``python -m scot eval ARGS --threads 1 -o TMP`` and reads the run's
``summary.json`` (wall, describe and matching seconds).  ``pairs`` runs ``python -m scot
bench pairs ARGS --threads 1`` and reads its first "matching per pair" figure (the chosen
route).  Nothing here is part of the package: it compares versions of it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DESCRIBE = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from scot import SCOT, SCOTConfig
backbone, weights, preset, *images = sys.argv[1:]
kw = {"backbone": backbone, "preset": preset}
if weights:
    kw["weights"] = weights
model = SCOT(SCOTConfig(**kw))
model.extract(images[0])
times = []
for image in images[1:]:
    start = time.perf_counter()
    model.extract(image)
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def sign_interval(ratios: list[float], level: float = 0.9) -> tuple[float, float]:
    """The order-statistics interval ``[r_(k), r_(n+1-k)]`` for the median, covering at least ``level``.

    Its coverage is ``1 - 2 P(Bin(n, 1/2) < k)``; with too few rounds for ``level`` the full
    range is returned.
    """
    r = sorted(ratios)
    n = len(r)
    k = 1
    while k + 1 <= n // 2:
        below = sum(math.comb(n, i) for i in range(k + 1)) / 2**n  # P(Bin < k + 1)
        if 1 - 2 * below < level:
            break
        k += 1
    return r[k - 1], r[n - k]


def run_version(root: Path, argv: list[str]) -> str:
    """Run ``python -P ARGV`` with ``root`` as the only source of ``scot``, in the caller's folder.

    ``-P`` keeps the working folder off ``sys.path`` (else ``-m scot`` run from one checkout
    would import that checkout whatever ``PYTHONPATH`` says), so relative paths in the
    arguments mean what they mean to the caller.
    """
    env = dict(os.environ, PYTHONPATH=str(root.resolve()), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-P", *argv], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        sys.exit(f"{root}: {' '.join(argv[:3])} failed: {tail[0]}")
    return done.stdout


def measure(kind: str, root: Path, args: argparse.Namespace) -> dict[str, float]:
    if kind == "describe":
        folder = Path(args.images)
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        images = images[: args.count + 1]
        times = json.loads(run_version(root, ["-c", DESCRIBE, args.backbone, args.weights or "", args.preset,
                                              *map(str, images)]).strip().splitlines()[-1])
        return {"describe per image": statistics.fmean(times)}
    if kind == "eval":
        with tempfile.TemporaryDirectory() as out:
            run_version(root, ["-m", "scot", "eval", *args.rest, "--threads", "1", "-o", str(Path(out) / "run")])
            timing = json.loads((Path(out) / "run" / "summary.json").read_text())["timing"]
        return {"wall": timing["wall_seconds"], "describe": timing["feature_seconds"],
                "matching per pair": timing["matching_seconds_per_pair"]}
    text = run_version(root, ["-m", "scot", "bench", "pairs", *args.rest, "--threads", "1"])
    found = re.search(r"matching per pair: ([0-9.]+) s", text)
    if found is None:
        sys.exit(f"{root}: no 'matching per pair' figure in the output of scot bench pairs")
    return {"matching per pair": float(found.group(1))}


def main() -> None:
    if sys.version_info < (3, 11):
        sys.exit("benchmarks/ab.py needs Python 3.11 or later (python -P)")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["describe", "eval", "pairs"])
    parser.add_argument("--old", required=True, help="checkout of the previous version")
    parser.add_argument("--new", required=True, help="checkout of this version")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--backbone", default="efficientnet-lite2")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--preset", default="pfpascal")
    parser.add_argument("--images", default=None, help="folder of images (describe)")
    parser.add_argument("--count", type=int, default=10, help="images timed per round (describe)")
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(rest) - (1 if "--" in argv else 0)])
    args.rest = rest  # what follows -- goes to scot eval / scot bench pairs
    if args.kind == "describe" and not args.images:
        parser.error("describe needs --images FOLDER")
    roots = {"old": Path(args.old), "new": Path(args.new)}
    rows: list[dict[str, dict[str, float]]] = []
    for r in range(args.rounds):
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        rows.append({v: measure(args.kind, roots[v], args) for v in order})
        shown = "  ".join(f"{k}: {rows[-1]['old'][k]:.3f} / {rows[-1]['new'][k]:.3f} s" for k in rows[-1]["old"])
        print(f"round {r + 1} ({order[0]} first)  old / new  {shown}", flush=True)
    print(f"{args.kind}: {args.rounds} rounds, old = {args.old}, new = {args.new}")
    for key in rows[0]["old"]:
        ratios = [row["old"][key] / row["new"][key] for row in rows]
        low, high = sign_interval(ratios)
        old = statistics.median(row["old"][key] for row in rows)
        new = statistics.median(row["new"][key] for row in rows)
        print(f"  {key}: old {old:.3f} s, new {new:.3f} s (medians); old/new median {statistics.median(ratios):.3f}, "
              f"~90 % interval [{low:.3f}, {high:.3f}]")


if __name__ == "__main__":
    main()
