"""``--dataset custom``: your own pairs in JSON or JSON Lines, scored like the benchmarks, and
the protocol card every run records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import one_line_error
from scot import SCOT, SCOTConfig
from scot.cli import app
from scot.datasets import Dataset, load_dataset
from scot.errors import ScotError
from scot.evaluation import EvalSettings, evaluate

runner = CliRunner()


def _objects(data: Dataset, path_of=str) -> list[dict]:
    """The pairs of a benchmark as custom pair objects (every field, the target box included)."""
    return [{"source": path_of(p.src), "target": path_of(p.trg), "source_keypoints": p.src_kps.tolist(),
             "target_keypoints": p.trg_kps.tolist(), "target_bbox": list(p.trg_bbox), "category": p.category}
            for p in data.pairs]


def _write(path: Path, objects: list, lines: bool = True) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects) if lines else json.dumps(objects, indent=1))
    return path


def _rows(run: Path) -> list[dict]:
    return list(csv.DictReader(open(run / "per_pair.csv", newline="")))


def test_pfwillow_pairs_as_a_custom_file_load_as_the_pfwillow_loader_reads_them(willow_root, tmp_path):
    """Every one of the 200 shared pairs, written as a JSON list with paths relative to the file."""
    willow = load_dataset("pfwillow", willow_root.parent)
    (tmp_path / "images").symlink_to(willow_root, target_is_directory=True)
    relative = _objects(willow, lambda p: str(Path("images") / p.relative_to(willow_root)))
    pair_file = _write(tmp_path / "pairs.json", relative, lines=False)
    custom = load_dataset("custom", pair_list=pair_file)
    assert (custom.name, custom.split, custom.default_thres, len(custom)) == ("custom", "pairs.json", "bbox", 200)
    assert custom.categories == willow.categories
    for a, b in zip(willow.pairs, custom.pairs):
        assert b.src == tmp_path / "images" / a.src.relative_to(willow_root) and b.src.resolve() == a.src.resolve()
        assert b.trg.resolve() == a.trg.resolve()
        assert (a.index, a.pair_id, a.category, a.trg_bbox) == (b.index, b.pair_id, b.category, b.trg_bbox)
        assert a.src_kps.equal(b.src_kps) and a.trg_kps.equal(b.trg_kps)


def test_pfwillow_pairs_as_a_custom_file_score_exactly_as_pfwillow(willow_root, tmp_path):
    willow = load_dataset("pfwillow", willow_root.parent)
    pair_file = _write(tmp_path / "willow.jsonl", _objects(willow))
    common = ["--backbone", "efficientnet-lite0", "--sample", "10", "--threads", "1"]
    ref = runner.invoke(app, ["eval", "--dataset", "pfwillow", "--datapath", str(willow_root.parent), *common,
                              "-o", str(tmp_path / "willow")])
    assert ref.exit_code == 0, ref.output
    res = runner.invoke(app, ["eval", "--dataset", "custom", "--pair-list", str(pair_file), "--preset", "pfwillow",
                              *common, "-o", str(tmp_path / "custom")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "custom" / "per_pair.csv").read_bytes() == (tmp_path / "willow" / "per_pair.csv").read_bytes()
    assert len(_rows(tmp_path / "custom")) == 10 and len({r["category"] for r in _rows(tmp_path / "custom")}) == 10
    a, b = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("willow", "custom"))
    assert a["pck"] == b["pck"] and b["dataset"]["thres"] == "bbox"
    basis = "the longer side of the box spanned by the target's ground-truth keypoints"
    assert a["protocol"]["threshold"]["measured_on"] == basis
    assert b["protocol"]["threshold"]["measured_on"] == "the longer side of the target's annotated bounding box"
    # the protocol line comes before the table
    lines = res.stdout.splitlines()
    card = next(i for i, line in enumerate(lines) if line.startswith("protocol: "))
    assert card < next(i for i, line in enumerate(lines) if line.startswith("class "))
    assert "custom willow.jsonl, 10 of 200 pairs, 100 keypoints" in lines[card]
    assert "left out: 190 pairs not selected (sample 10)" in lines[card]


def test_json_list_and_json_lines_null_rows_default_class_and_threshold(photo_willow, tmp_path):
    willow = load_dataset("pfwillow", photo_willow.parent).select(limit=3)
    objects = _objects(willow)
    objects[1]["source_keypoints"][2] = None  # not visible in the source
    objects[1]["target_keypoints"][4] = None  # not visible in the target
    del objects[2]["target_bbox"], objects[2]["category"]
    as_lines = load_dataset("custom", pair_list=_write(tmp_path / "a.jsonl", objects))
    as_list = load_dataset("custom", pair_list=_write(tmp_path / "b.json", objects, lines=False))
    for data in (as_lines, as_list):
        assert [len(p.src_kps) for p in data.pairs] == [10, 8, 10]
        assert [p.hidden_kps for p in data.pairs] == [0, 2, 0]
        assert data.pairs[2].category == "all" and data.pairs[2].trg_bbox is None
        assert data.default_thres == "img"  # not every pair has a box
        kept = [k for k in range(len(objects[1]["source_keypoints"])) if k not in (2, 4)]
        assert data.pairs[1].trg_kps.tolist() == [willow.pairs[1].trg_kps[k].tolist() for k in kept]


def test_thres_bbox_needs_every_pairs_box(photo_willow, tmp_path):
    objects = _objects(load_dataset("pfwillow", photo_willow.parent).select(limit=3))
    del objects[1]["target_bbox"]
    pair_file = _write(tmp_path / "p.jsonl", objects)
    res = runner.invoke(app, ["eval", "--dataset", "custom", "--pair-list", str(pair_file), "--thres", "bbox",
                              "--backbone", "efficientnet-lite0", "-o", str(tmp_path / "run")])
    one_line_error(res, "--thres: bbox needs every pair's target box", str(pair_file),
                   "pair 1 (photo.png -> small_mirrored.png)")
    assert not (tmp_path / "run").exists()


def _bad(photo_willow: Path) -> dict:
    """One valid pair object on the generated images (the photo 512x600, the zoomed copy 432x600)."""
    root = photo_willow / "duck(S)"
    return {"source": str(root / "photo.png"), "target": str(root / "zoomed.png"),
            "source_keypoints": [[10, 20], [100, 200], [300, 400]],
            "target_keypoints": [[12, 22], [90, 210], [280, 390]], "target_bbox": [5, 5, 400, 590], "category": "duck"}


@pytest.mark.parametrize("change, fragments", [
    ({"target_box": [1, 2, 3, 4]}, ["pair 0", "unknown field 'target_box'"]),
    ({"source": None}, ["pair 0", "'source' must be an image path"]),
    ({"target": "missing.png"}, ["pair 0", "'target'", "missing.png", "does not exist"]),
    ({"source_keypoints": [[10, 20], [100, 200]]}, ["'source_keypoints' has 2 rows but 'target_keypoints' has 3"]),
    ({"source_keypoints": [[10, 20], [100, "x"], [1, 1]]}, ["'source_keypoints' row 1", "not a number"]),
    ({"source_keypoints": [[10, 20], [100, 200, 3], [1, 1]]}, ["'source_keypoints' row 1 must be [x, y] or null"]),
    ({"target_keypoints": [[12, 22], [90, 2100], [280, 390]]},
     ["'target_keypoints' row 1 (90, 2100) lies outside the 432x600 image"]),
    ({"source_keypoints": [[-40, 20], [100, 200], [1, 1]]},
     ["'source_keypoints' row 0 (-40, 20) lies outside the 512x600 image"]),
    ({"source_keypoints": [None, None, [1, 1]], "target_keypoints": [[1, 1], [2, 2], None]},
     ["no keypoint is visible in both"]),
    ({"target_bbox": [5, 5, 900, 590]}, ["'target_bbox' (5, 5, 900, 590) lies outside the 432x600 target image"]),
    ({"target_bbox": [5, 5, 5.5, 5.5]}, ["'target_bbox' (5, 5, 5.5, 5.5)", "must be at least 1 px"]),
    ({"target_bbox": [50, 5, 5, 590]}, ["'target_bbox'", "empty or reversed"]),
    ({"category": ""}, ["'category' must be a non-empty string"]),
])
def test_impossible_pairs_fail_with_one_line_naming_the_pair_and_field(photo_willow, tmp_path, change, fragments):
    good = _bad(photo_willow)
    pair_file = _write(tmp_path / "pairs.jsonl", [good, {**good, **change}])
    res = runner.invoke(app, ["eval", "--dataset", "custom", "--pair-list", str(pair_file), "-o",
                              str(tmp_path / "run")])
    fragments = [f.replace("pair 0", "line 2 (pair 1)") for f in fragments]
    one_line_error(res, str(pair_file), *fragments)
    load_dataset("custom", pair_list=_write(tmp_path / "good.jsonl", [good]))  # the unchanged pair is fine


@pytest.mark.parametrize("text, fragment", [
    ("", "is empty"),
    ('{"source": "a.png"\n', "line 1 is not valid JSON"),
    ('[{"source": 1}', "is not valid JSON"),
    ("[]", "no pairs"),
    ("[1]", "pair 0 must be a JSON object"),
    ('{"source": "a.png"}\n', "has no 'target', 'source_keypoints', 'target_keypoints'"),
])
def test_malformed_custom_files_fail_with_one_line(tmp_path, text, fragment):
    pair_file = tmp_path / "pairs.json"
    pair_file.write_text(text)
    res = runner.invoke(app, ["eval", "--dataset", "custom", "--pair-list", str(pair_file), "-o",
                              str(tmp_path / "run")])
    one_line_error(res, str(pair_file), fragment)


def test_custom_needs_its_pair_file_and_has_no_splits(photo_willow, tmp_path):
    one_line_error(runner.invoke(app, ["eval", "--dataset", "custom"]),
                   "--pair-list: the custom dataset needs its pair file")
    pair_file = _write(tmp_path / "p.jsonl", [_bad(photo_willow)])
    one_line_error(runner.invoke(app, ["eval", "--dataset", "custom", "--pair-list", str(pair_file), "--split", "val"]),
                   "--split: a custom pair file has no splits")
    with pytest.raises(ScotError, match="pair_list: .* does not exist"):
        load_dataset("custom", pair_list=tmp_path / "none.json")


def test_custom_run_resumes_and_records_its_protocol(photo_willow, tmp_path, monkeypatch):
    willow = load_dataset("pfwillow", photo_willow.parent)
    objects = _objects(willow)
    objects[3]["source_keypoints"][0] = None
    data = load_dataset("custom", pair_list=_write(tmp_path / "p.jsonl", objects)).select(limit=6)
    model = SCOT(SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow", cam=False))
    settings = EvalSettings(thres="bbox", batch_size=2)
    selection = {"category": None, "limit": 6, "sample": None}

    def interrupt_after_four(done, total, rate, pck):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(model, data, tmp_path / "run", settings, selection, on_progress=interrupt_after_four)
    partial = json.loads((tmp_path / "run" / "summary.json").read_text())["protocol"]
    assert partial["pairs"] == {"scored": 4, "listed": 20}
    assert {"count": 2, "what": "pairs", "why": "not scored yet (run interrupted)"} in partial["left_out"]
    titles = []
    monkeypatch.setattr("scot.viz2d.bar_chart", lambda labels, values, title, *a: titles.append(title))
    monkeypatch.setattr("scot.viz2d.line_chart", lambda x, series, title, *a: titles.append(title))
    summary = evaluate(model, data, tmp_path / "run", settings, selection, resume=True)
    protocol = summary["protocol"]
    assert summary["status"] == "complete" and protocol["pairs"] == {"scored": 6, "listed": 20}
    assert protocol["keypoints"]["scored"] == sum(len(p.src_kps) for p in data.pairs) == 6 * 10 - 1
    assert protocol["left_out"] == [{"count": 14, "what": "pairs", "why": "not selected (limit 6)"},
                                    {"count": 1, "what": "keypoints", "why": "not visible in both images (null rows)"}]
    assert protocol["threshold"]["rule"] == "bbox" and protocol["image_side"] == 300
    assert protocol["averaging"] == {"headline": "mean over pairs",
                                     "reported": ["mean over pairs", "mean over keypoints"]}
    assert protocol["alphas"] == [0.05, 0.1, 0.15] and (protocol["dataset"], protocol["split"]) == ("custom", "p.jsonl")
    assert len(titles) == 2 and all("bbox: α · target box side" in t for t in titles)
    assert "PCK@0.10 per class, mean over pairs" in titles[0]
    assert "mean over pairs (headline), mean over keypoints" in titles[1]


def test_images_are_checked_only_when_asked(photo_willow, tmp_path):
    good = _bad(photo_willow)
    pair_file = _write(tmp_path / "p.jsonl", [{**good, "target": "elsewhere/zoomed.png"}])
    with pytest.raises(ScotError, match="does not exist"):
        load_dataset("custom", pair_list=pair_file)
    data = load_dataset("custom", pair_list=pair_file, check_images=False)
    assert data.pairs[0].trg == tmp_path / "elsewhere" / "zoomed.png"
    with Image.open(photo_willow / "duck(S)" / "zoomed.png") as im:
        assert im.size == (432, 600)  # the size the messages above quote


def test_custom_pairs_under_torchrun_report_what_one_process_reports(photo_willow, tmp_path):
    import os
    import subprocess
    import sys

    import torch

    from conftest import REPO

    pair_file = _write(tmp_path / "p.jsonl", _objects(load_dataset("pfwillow", photo_willow.parent)))
    args = ["eval", "--dataset", "custom", "--pair-list", str(pair_file), "--backbone", "efficientnet-lite0",
            "--threads", "1", "--limit", "6", "--batch-size", "3"]
    before = torch.get_num_threads()
    try:
        one = runner.invoke(app, [*args, "-o", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(before)
    assert one.exit_code == 0, one.output
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "scot", *args, "-o", str(tmp_path / "two")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "one" / "per_pair.csv").read_bytes() == (tmp_path / "two" / "per_pair.csv").read_bytes()
    a, b = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "two"))
    assert a["pck"] == b["pck"] and b["world_size"] == 2 and a["protocol"] == b["protocol"]
    assert two.stdout.count("protocol: custom p.jsonl, 6 of 20 pairs") == 1  # rank 0 prints it, once
