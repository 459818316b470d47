"""End to end: ``scot match`` on real PF-WILLOW images and on generated photo pairs, and its error handling."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import one_line_error
from scot.cli import app

runner = CliRunner()


def check_match_json(doc: dict, top_k: int, n_keypoints: int | None) -> None:
    """The documented schema of the JSON written by ``scot match``."""
    for key in ("scot_version", "backbone", "weights", "device", "config", "source", "target", "matches", "keypoints", "timings", "drawn"):
        assert key in doc, key
    assert doc["drawn"]["top_k"] == top_k and isinstance(doc["drawn"]["foreground_only"], bool)
    for side in ("source", "target"):
        info = doc[side]
        assert isinstance(info["width"], int) and isinstance(info["height"], int) and info["path"]
        assert len(info["resized"]) == 2 and max(info["resized"]) == doc["config"]["image_side"]
    assert doc["config"]["backbone"] == doc["backbone"]
    assert len(doc["matches"]) == doc["source"]["hyperpixels"]  # one match per source hyperpixel
    assert all(isinstance(m["foreground"], bool) for m in doc["matches"])
    if not doc["config"]["cam"]:
        assert all(m["foreground"] for m in doc["matches"])
    confidences = [m["confidence"] for m in doc["matches"]]
    assert confidences == sorted(confidences, reverse=True)
    for m in doc["matches"]:
        sx, sy = m["source"]
        tx, ty = m["target"]
        assert -20 <= sx <= doc["source"]["width"] + 20 and -20 <= sy <= doc["source"]["height"] + 20
        assert -20 <= tx <= doc["target"]["width"] + 20 and -20 <= ty <= doc["target"]["height"] + 20
    if n_keypoints is None:
        assert doc["keypoints"] is None
    else:
        assert [k["index"] for k in doc["keypoints"]] == list(range(n_keypoints))
        for k in doc["keypoints"]:
            assert len(k["source"]) == 2 and len(k["target"]) == 2


def test_match_writes_png_and_json(tmp_path, willow_rows):
    row = willow_rows[0]
    kp_file = tmp_path / "kps.json"
    kp_file.write_text(json.dumps(row["src_kps"].tolist()))
    out = tmp_path / "out"
    res = runner.invoke(app, ["match", str(row["src"]), str(row["trg"]), "-o", str(out), "--backbone",
                              "efficientnet-lite0", "--keypoints", str(kp_file), "--top-k", "50"])
    assert res.exit_code == 0, res.output
    stem = f"{row['src'].stem}__{row['trg'].stem}"
    png, js = out / f"{stem}.png", out / f"{stem}.json"
    assert f"matched {row['src'].name} -> {row['trg'].name}" in res.stdout and str(png) in res.stdout
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 200
    doc = json.loads(js.read_text())
    check_match_json(doc, 50, 10)
    assert doc["backbone"] == "efficientnet-lite0" and doc["config"]["preset"] == "pfpascal"
    # keypoints are reported in original pixels and mostly land near the ground truth
    pred = [k["target"] for k in doc["keypoints"]]
    gt = row["trg_kps"].tolist()
    thr = 0.1 * max(max(p[0] for p in gt) - min(p[0] for p in gt), max(p[1] for p in gt) - min(p[1] for p in gt))
    close = sum(((p[0] - g[0]) ** 2 + (p[1] - g[1]) ** 2) ** 0.5 <= thr for p, g in zip(pred, gt))
    assert close >= 4


def test_match_pairs_csv(tmp_path, photo_rows):
    rows = photo_rows[:2]
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("source,target\n" + "".join(f"{r['src']},{r['trg']}\n" for r in rows))
    out = tmp_path / "many"
    res = runner.invoke(app, ["match", "--pairs", str(csv_file), "-o", str(out), "--backbone", "efficientnet-lite0", "--no-cam"])
    assert res.exit_code == 0, res.output
    assert "matched 2 of 2 pairs" in res.stdout
    assert len(list(out.glob("*.png"))) == 2 and len(list(out.glob("*.json"))) == 2
    doc = json.loads(sorted(out.glob("*.json"))[0].read_text())
    check_match_json(doc, 100, None)
    assert doc["config"]["cam"] is False


def test_an_interrupted_pairs_run_is_finished_with_skip_existing(tmp_path, photo_rows, monkeypatch):
    """Ctrl-C during --pairs says how far it got; the rerun with --skip-existing keeps the
    finished rows untouched and matches only the rest."""
    import scot.outputs.jobs

    rows = photo_rows[:3]
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("".join(f"{r['src']},{r['trg']}\n" for r in rows))
    out = tmp_path / "many"
    args = ["match", "--pairs", str(csv_file), "-o", str(out), "--backbone", "efficientnet-lite0", "--no-plot"]
    real_write, calls = scot.outputs.jobs.write_match, []

    def interrupted_on_the_second_row(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write(*a, **k)

    monkeypatch.setattr(scot.outputs.jobs, "write_match", interrupted_on_the_second_row)
    res = runner.invoke(app, args)
    assert res.exit_code == 130 and "interrupted after 1 of 3 pairs" in res.stderr and "--skip-existing" in res.stderr
    monkeypatch.setattr(scot.outputs.jobs, "write_match", real_write)
    [first] = out.glob("*.json")
    before = first.read_bytes()
    res = runner.invoke(app, [*args, "--skip-existing"])
    assert res.exit_code == 0, res.output
    assert "matched 2 of 3 pairs (1 already had results)" in res.stdout
    assert first.read_bytes() == before and len(list(out.glob("*.json"))) == 3
    # without the flag the finished rows are refused, one line each, and the run says so
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and res.stderr.count("--overwrite") == 3


@pytest.mark.parametrize("variant", ["missing", "directory", "not-image", "tiny"])
def test_bad_images(tmp_path, photo_rows, variant):
    good = str(photo_rows[0]["src"])
    bad = tmp_path / "bad.png"
    if variant == "directory":
        bad = tmp_path
    elif variant == "not-image":
        bad.write_text("plain text")
    elif variant == "tiny":
        Image.new("RGB", (16, 16)).save(bad)
    res = runner.invoke(app, ["match", good, str(bad), "-o", str(tmp_path / "o"), "--backbone", "efficientnet-lite0"])
    expected = {"missing": "does not exist", "directory": "is a directory", "not-image": "not an image file", "tiny": "at least 32 px"}[variant]
    one_line_error(res, str(bad), expected)


def test_bad_options(tmp_path, photo_rows):
    src, trg = str(photo_rows[0]["src"]), str(photo_rows[0]["trg"])
    o = ["-o", str(tmp_path / "o")]
    one_line_error(runner.invoke(app, ["match", src, trg, *o, "--backbone", "alexnet"]), "--backbone", "alexnet")
    one_line_error(runner.invoke(app, ["match", src, trg, *o, "--preset", "nope"]), "--preset", "nope")
    one_line_error(runner.invoke(app, ["match", src, trg, *o, "--eps", "0"]), "--eps")
    one_line_error(runner.invoke(app, ["match", src, trg, *o, "--transfer", "vote"]), "--transfer", "vote")
    one_line_error(runner.invoke(app, ["match", src, trg, *o, "--symmetric", "--low-memory"]), "--symmetric", "low memory")
    one_line_error(runner.invoke(app, ["match", src, trg, *o, "--backbone", "efficientnet-lite0", "--hyperpixel", "(1,99)"]), "99", "out of range")
    kp = tmp_path / "k.json"
    kp.write_text("[[1, 2], [5000, 3]]")
    one_line_error(runner.invoke(app, ["match", src, trg, *o, "--backbone", "efficientnet-lite0", "--keypoints", str(kp)]), "outside")
    kp.write_text("{oops")
    one_line_error(runner.invoke(app, ["match", src, trg, *o, "--backbone", "efficientnet-lite0", "--keypoints", str(kp)]), "k.json", "not valid JSON")
    w = tmp_path / "w.pth"
    w.write_bytes(b"garbage")
    one_line_error(runner.invoke(app, ["match", src, trg, *o, "--backbone", "resnet50", "--weights", str(w)]), "w.pth")
    one_line_error(runner.invoke(app, ["match", src, *o]), "missing SRC and TRG")


def test_console_script_runs(tmp_path, photo_rows):
    """The installed ``scot`` entry point works as a subprocess."""
    exe = shutil.which("scot") or str(Path(sys.executable).with_name("scot"))
    row = photo_rows[5]
    proc = subprocess.run([exe, "match", str(row["src"]), str(row["trg"]), "-o", str(tmp_path), "--backbone",
                           "efficientnet-lite0", "--top-k", "10"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(list(tmp_path.glob("*.json"))) == 1
