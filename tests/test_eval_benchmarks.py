"""``scot eval`` end to end on a few real pairs of each benchmark (the shared PF-PASCAL val,
SPair-71k val and full-resolution SPair-71k pairs), with the embedded EfficientNet-Lite2.

A few pairs say nothing about accuracy, so no figure is asserted; what must hold is that
the run completes, each pair is scored against the threshold its benchmark defines (read
here from the annotations and image files, independently of the run), the PCK table agrees
with the per-pair rows, and matching beats chance by far: for each pair, the chance that a
point dropped uniformly on the target image lands within α·thr of a keypoint's truth is
at most π(α·thr)² / (W·H).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scot.cli import app
from scot.datasets import load_dataset
from scot.image import image_size
from scot.pck import pck_threshold

runner = CliRunner()

BENCHMARKS = {  # fixture: (dataset, split, selection)
    "pfpascal_val": ("pfpascal", "val", ["--sample", "3"]),
    "spair_val": ("spair", "val", ["--sample", "2"]),
    "spair_fullres": ("spair", "test", ["--limit", "2"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("fixture", list(BENCHMARKS))
def test_eval_on_real_benchmark_pairs(request, tmp_path, fixture):
    folder: Path = request.getfixturevalue(fixture)
    dataset, split, selection = BENCHMARKS[fixture]
    out = tmp_path / "run"
    res = runner.invoke(app, ["eval", "--dataset", dataset, "--split", split, "--datapath", str(folder.parent),
                              "--backbone", "efficientnet-lite2", *selection, "-o", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "per_pair.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    n = int(selection[1])
    assert summary["status"] == "complete" and len(rows) == n

    data = load_dataset(dataset, folder.parent, split=split)
    pairs = {p.pair_id: p for p in data.pairs}
    chance = []
    for row in rows:
        pair = pairs[row["pair_id"]]
        size = image_size(pair.trg)
        thr = pck_threshold(data.default_thres, size, pair.trg_bbox)  # img: PF-PASCAL, bbox: SPair-71k
        assert float(row["thr_px"]) == pytest.approx(thr, abs=1e-3)
        dist = [float(d) for d in row["dist_over_thr"].split(";")]
        assert len(dist) == int(row["n_kps"]) == len(pair.trg_kps) and all(math.isfinite(d) for d in dist)
        for alpha in ("0.05", "0.10", "0.15"):
            correct = sum(d <= float(alpha) for d in dist)
            assert float(row[f"pck@{alpha}"]) == pytest.approx(correct / len(dist), abs=1e-6)  # rows: 6 decimals
        chance.append(min(1.0, math.pi * (0.10 * thr) ** 2 / (size[0] * size[1])))

    overall = summary["pck"]["overall"]["pck_mean_over_pairs"]
    pck = [overall[a] for a in ("0.05", "0.10", "0.15")]
    assert pck == sorted(pck) and all(0.0 <= v <= 100.0 for v in pck)
    assert pck[1] == pytest.approx(100.0 * sum(float(r["pck@0.10"]) for r in rows) / n, abs=1e-3)  # rows: 6 decimals
    assert pck[1] > 3 * 100.0 * sum(chance) / n, (pck, chance)
