"""``scot compare``: two runs on their shared pairs, with a paired bootstrap interval."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import one_line_error
from scot.cli import app
from scot.errors import ScotError
from scot.evaluation.compare import paired_bootstrap, verdict

runner = CliRunner()

# per-pair differences (two statistics) of two classes whose means differ a lot, so that
# resampling within class and resampling the pooled pairs give clearly different intervals
DIFFS = np.array([[0.6, 0.1], [0.4, 0.0], [0.9, 0.3],
                  [-0.5, -0.2], [-0.2, 0.1], [-0.6, -0.4], [0.1, 0.0]])
GROUPS = np.array(["a", "a", "a", "b", "b", "b", "b"])


def _exact_means() -> np.ndarray:
    """Every resample within class, each equally likely (3^3 * 4^4 = 6,912): its mean difference."""
    a, b = DIFFS[GROUPS == "a"], DIFFS[GROUPS == "b"]
    means = []
    for ia in itertools.product(range(3), repeat=3):
        sa = a[list(ia)].sum(0)
        for ib in itertools.product(range(4), repeat=4):
            means.append((sa + b[list(ib)].sum(0)) / len(DIFFS))
    return np.array(means)


def test_bootstrap_interval_agrees_with_the_exact_bootstrap_distribution():
    exact = _exact_means()
    interval = paired_bootstrap(DIFFS, GROUPS, resamples=20_000, seed=3)
    for j in range(DIFFS.shape[1]):
        lo_band = np.quantile(exact[:, j], [0.02, 0.03], method="inverted_cdf")
        hi_band = np.quantile(exact[:, j], [0.97, 0.98], method="inverted_cdf")
        assert lo_band[0] - 1e-12 <= interval[j, 0] <= lo_band[1] + 1e-12, (j, interval[j], lo_band)
        assert hi_band[0] - 1e-12 <= interval[j, 1] <= hi_band[1] + 1e-12, (j, interval[j], hi_band)
    # resampling the pooled pairs, ignoring the classes, is a different (wider) bootstrap: the check above
    # tells them apart
    pooled = paired_bootstrap(DIFFS, np.zeros(len(DIFFS)), resamples=20_000, seed=3)
    assert not np.quantile(exact[:, 0], 0.02, method="inverted_cdf") <= pooled[0, 0]


def test_bootstrap_is_reproducible_and_needs_enough_resamples():
    one = paired_bootstrap(DIFFS, GROUPS, resamples=2000, seed=0)
    assert np.array_equal(one, paired_bootstrap(DIFFS, GROUPS, resamples=2000, seed=0))
    assert not np.array_equal(one, paired_bootstrap(DIFFS, GROUPS, resamples=2000, seed=1))
    with pytest.raises(ScotError, match="resamples: must be at least 2000, got 1999"):
        paired_bootstrap(DIFFS, GROUPS, resamples=1999)
    same = paired_bootstrap(np.zeros((5, 1)), np.array(list("aabbb")), resamples=2000)
    assert same.tolist() == [[0.0, 0.0]]


def test_verdict_line():
    line = "B − A = +1.4 points at α = .10, 95 % interval [−0.3, +3.1]: not distinguishable"
    assert verdict(1.44, (-0.3, 3.1), 0.10) == line
    assert verdict(-2.0, (-3.5, -0.4), 0.05).endswith("[−3.5, −0.4]: distinguishable, A higher")
    assert verdict(2.0, (0.4, 3.5), 0.15).endswith(": distinguishable, B higher")


def _eval(photo_willow: Path, out: Path, *extra: str) -> Path:
    res = runner.invoke(app, ["eval", "--dataset", "pfwillow", "--datapath", str(photo_willow.parent), "--backbone",
                              "efficientnet-lite0", "--threads", "1", "-o", str(out), *extra])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def runs(photo_willow, tmp_path_factory) -> dict[str, Path]:
    """Real runs on the generated pairs: A (6 pairs), B (8 pairs, random weights), C (6 pairs, image threshold)."""
    root = tmp_path_factory.mktemp("runs")
    import torch

    before = torch.get_num_threads()
    try:
        return {"a": _eval(photo_willow, root / "a", "--limit", "6"),
                "b": _eval(photo_willow, root / "b", "--limit", "8", "--weights", "random"),
                "c": _eval(photo_willow, root / "c", "--limit", "6", "--thres", "img")}
    finally:
        torch.set_num_threads(before)


def _pck(run: Path) -> dict[str, tuple[str, list[float]]]:
    return {r["pair_id"]: (r["category"], [float(r[f"pck@{a}"]) for a in ("0.05", "0.10", "0.15")])
            for r in csv.DictReader(open(run / "per_pair.csv", newline=""))}


def test_compare_two_runs_on_their_shared_pairs(runs, tmp_path):
    out = tmp_path / "cmp.json"
    res = runner.invoke(app, ["compare", str(runs["a"]), str(runs["b"]), "--json", str(out), "--resamples", "4000"])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    a, b = _pck(runs["a"]), _pck(runs["b"])
    shared = [k for k in a if k in b]
    assert result["shared_pairs"] == len(shared) == 6 and (result["only_in_a"], result["only_in_b"]) == (0, 2)
    for j, alpha in enumerate(("0.05", "0.10", "0.15")):
        mean_a = 100 * np.mean([a[k][1][j] for k in shared])
        mean_b = 100 * np.mean([b[k][1][j] for k in shared])
        assert result["overall"]["a"][alpha] == pytest.approx(mean_a)
        assert result["overall"]["b"][alpha] == pytest.approx(mean_b)
        assert result["overall"]["difference"][alpha] == pytest.approx(mean_b - mean_a)
        lo, hi = result["overall"]["interval"][alpha]
        assert lo <= hi
    for cat, row in result["per_class"].items():
        keys = [k for k in shared if a[k][0] == cat]
        assert row["pairs"] == len(keys)
        assert row["a"]["0.10"] == pytest.approx(100 * np.mean([a[k][1][1] for k in keys]))
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == f"written: {out}" and lines[-2] == result["verdict"]
    assert result["verdict"] == verdict(result["overall"]["difference"]["0.10"], result["overall"]["interval"]["0.10"],
                                        0.10)
    assert result["overall"]["difference"]["0.05"] < 0  # random weights match worse
    assert "6 shared pairs (0 only in A, 2 only in B, left out)" in res.stdout
    assert result["bootstrap"] == {"resamples": 4000, "seed": 0, "level": 0.95, "resampled": "pairs, within each class"}


def test_a_run_compared_with_itself_differs_by_nothing(runs):
    res = runner.invoke(app, ["compare", str(runs["a"]), str(runs["a"])])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == ("B − A = +0.0 points at α = .10, 95 % interval [+0.0, +0.0]: "
                                                   "not distinguishable")


def _altered(run: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "altered"
    shutil.copytree(run, copy)
    summary = json.loads((copy / "summary.json").read_text())
    change(summary)
    (copy / "summary.json").write_text(json.dumps(summary))
    return copy


def test_compare_refuses_runs_of_different_protocols_datasets_or_splits(runs, tmp_path):
    one_line_error(runner.invoke(app, ["compare", str(runs["a"]), str(runs["c"])]),
                   "cannot compare runs of different protocols: threshold rule is 'bbox' in", "but 'img' in")
    other = _altered(runs["a"], tmp_path, lambda s: s["protocol"].update(dataset="spair"))
    one_line_error(runner.invoke(app, ["compare", str(runs["a"]), str(other)]),
                   "cannot compare runs of different datasets: dataset is 'pfwillow' in", f"but 'spair' in {other}")


def test_compare_refuses_what_is_not_a_run(runs, tmp_path):
    one_line_error(runner.invoke(app, ["compare", str(runs["a"]), str(tmp_path / "nothing")]),
                   f"{tmp_path / 'nothing'} is not a run folder of scot eval")
    old = _altered(runs["a"], tmp_path, lambda s: s.pop("protocol"))
    one_line_error(runner.invoke(app, ["compare", str(old), str(runs["a"])]), "has no protocol record", "--resume -o")
    one_line_error(runner.invoke(app, ["compare", str(runs["a"]), str(runs["b"]), "--resamples", "100"]),
                   "--resamples: must be at least 2000")
