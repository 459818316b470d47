"""Shared fixtures: where the shared real data lives, and small helpers."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """``$SCOT_DATA`` or ``../shared`` beside the repository."""
    env = os.environ.get("SCOT_DATA")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    root = shared_root()
    if not (root / "datasets").is_dir():
        pytest.fail(f"shared data not found at {root} (set SCOT_DATA to the folder holding datasets/)")
    return root


@pytest.fixture(scope="session")
def willow_root(shared: Path) -> Path:
    return shared / "datasets" / "pfwillow-dev" / "PF-WILLOW"


@pytest.fixture(scope="session")
def willow_rows(willow_root: Path) -> list[dict]:
    """The shared PF-WILLOW pairs as dicts with image paths and (10, 2) keypoints."""
    rows = []
    with open(willow_root / "test_pairs.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            src = willow_root / Path(*Path(row["imageA"]).parts[1:])
            trg = willow_root / Path(*Path(row["imageB"]).parts[1:])
            skp = torch.tensor([[float(row[f"XA{i}"]), float(row[f"YA{i}"])] for i in range(1, 11)])
            tkp = torch.tensor([[float(row[f"XB{i}"]), float(row[f"YB{i}"])] for i in range(1, 11)])
            rows.append({"src": src, "trg": trg, "src_kps": skp, "trg_kps": tkp, "cls": Path(row["imageA"]).parts[1]})
    return rows


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def one_line_error(res, *fragments: str) -> None:
    """A CLI run failed with exit 2 and one line on stderr holding every fragment."""
    assert res.exit_code == 2, (res.exit_code, res.output)
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)
