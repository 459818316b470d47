"""``scot eval`` end to end, resume after an interruption, SPair fixtures and downloads."""

from __future__ import annotations

import csv
import http.server
import io
import json
import shutil
import tarfile
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import one_line_error, write_photo_willow
from scot.cli import app
from scot import SCOT, SCOTConfig
from scot.datasets import download_dataset, load_dataset
from scot.errors import ScotError
from scot.evaluation import EvalSettings, evaluate

runner = CliRunner()


def test_eval_pfwillow_writes_all_outputs(willow_root, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["eval", "--dataset", "pfwillow", "--datapath", str(willow_root.parent), "--backbone",
                              "efficientnet-lite0", "--limit", "20", "-o", str(out), "--save-viz", "1"])
    assert res.exit_code == 0, res.output
    for name in ("summary.json", "per_pair.csv", "pck_per_class.png", "pck_curve.png", "pairs.jsonl", "run.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "viz").glob("*.png"))) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["pairs_scored"] == 20
    assert sorted(Path(p).name for p in summary["visualisations"]) == sorted(p.name for p in (out / "viz").glob("*.png"))
    assert summary["model"]["backbone"] == "efficientnet-lite0" and summary["dataset"]["thres"] == "bbox"
    assert summary["model"]["config"]["preset"] == "pfwillow"
    for key in ("seconds_per_pair", "images_per_second", "feature_seconds", "matching_seconds"):
        assert summary["timing"][key] > 0
    assert summary["versions"]["torch"] == torch.__version__
    rows = list(csv.DictReader(open(out / "per_pair.csv")))
    assert len(rows) == 20
    for a in ("0.05", "0.10", "0.15"):
        mean = 100 * sum(float(r[f"pck@{a}"]) for r in rows) / len(rows)
        assert summary["pck"]["overall"]["pck_mean_over_pairs"][a] == pytest.approx(mean, abs=1e-6)
    assert summary["headline"]["value"] == pytest.approx(summary["pck"]["overall"]["pck_mean_over_pairs"]["0.10"])
    # per_pair.csv carries predicted and ground-truth keypoints in original pixels
    first = rows[0]
    gt = [tuple(map(float, xy.split())) for xy in first["gt_xy"].split(";")]
    assert gt[0] == pytest.approx((24.221, 167.358), abs=1e-3)
    assert len(first["pred_xy"].split(";")) == 10
    assert "car(G)" in res.stdout and "mean over pairs" in res.stdout and "mean over kps" in res.stdout


def test_save_viz_draws_each_pair_once_when_there_are_few(photo_willow, tmp_path):
    """--save-viz N draws the N worst and N best pairs; with fewer than 2N pairs each pair
    is drawn once (it used to appear both as "worst" and as "best")."""
    out = tmp_path / "run"
    res = runner.invoke(app, ["eval", "--dataset", "pfwillow", "--datapath", str(photo_willow.parent), "--backbone",
                              "efficientnet-lite0", "--limit", "3", "-o", str(out), "--save-viz", "5"])
    assert res.exit_code == 0, res.output
    drawn = json.loads((out / "summary.json").read_text())["visualisations"]
    assert len(drawn) == 3 and len(set(drawn)) == 3
    assert sorted(Path(p).name.split("-")[0] for p in drawn) == ["best", "worst", "worst"]


def test_resume_after_interrupt_gives_the_same_numbers(photo_willow, tmp_path):
    model = SCOT(SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow", cam=False))
    data = load_dataset("pfwillow", photo_willow.parent).select(category="duck(S)", limit=8)
    settings = EvalSettings(thres="bbox", batch_size=2)
    selection = {"category": "duck(S)", "limit": 8}

    full = evaluate(model, data, tmp_path / "full", settings, selection)

    def interrupt_after_four(done, total, rate, pck):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(model, data, tmp_path / "cut", settings, selection, on_progress=interrupt_after_four)
    partial = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert partial["status"] == "interrupted" and partial["pairs_scored"] == 4
    assert len(list(csv.DictReader(open(tmp_path / "cut" / "per_pair.csv")))) == 4
    # a crash mid-write leaves half a line: it must be ignored
    with open(tmp_path / "cut" / "pairs.jsonl", "a") as fh:
        fh.write('{"index": 99, "pair_id": "half')
    with pytest.raises(ScotError, match="already holds results"):
        evaluate(model, data, tmp_path / "cut", settings, selection)
    resumed = evaluate(model, data, tmp_path / "cut", settings, selection, resume=True)
    assert resumed["status"] == "complete" and resumed["pairs_scored"] == 8
    assert resumed["pck"] == full["pck"]
    a = list(csv.DictReader(open(tmp_path / "full" / "per_pair.csv")))
    b = list(csv.DictReader(open(tmp_path / "cut" / "per_pair.csv")))
    assert a == b
    other = EvalSettings(thres="img", batch_size=2)
    with pytest.raises(ScotError, match="resume: .* different settings \\(thres differ\\)"):
        evaluate(model, data, tmp_path / "cut", other, selection, resume=True)


def test_batched_matching_equals_one_by_one(photo_willow):
    model = SCOT(SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow"))
    assert model.config.symmetric  # the preset's two-way matching, batched with padding too
    ds = load_dataset("pfwillow", photo_willow.parent)
    pairs = [ds.pairs[0], ds.pairs[7], ds.pairs[13]]  # different image sizes
    items = [(model.extract(p.src), model.extract(p.trg), p.src_kps) for p in pairs]
    assert len({it[0].n for it in items} | {it[1].n for it in items}) > 1
    batched = model.match_batch(items)
    for (s, t, k), res in zip(items, batched):
        single = model.match(s, t, k, keep_plan=False)
        torch.testing.assert_close(res.transferred, single.transferred)
        assert torch.equal(res.best, single.best)


def _fake_spair(sample: Path, root: Path) -> None:
    """The real SPair annotation sample with generated images of the stated sizes."""
    shutil.copytree(sample, root / "SPair-71k")
    for ann in (sample / "ImageAnnotation" / "aeroplane").glob("*.json"):
        info = json.loads(ann.read_text())
        img = Image.new("RGB", (info["image_width"], info["image_height"]), (120, 160, 220))
        path = root / "SPair-71k" / "JPEGImages" / "aeroplane" / info["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)


def test_spair_fixture_runs_with_flags(spair_sample, tmp_path):
    _fake_spair(spair_sample, tmp_path)
    out = tmp_path / "run"
    res = runner.invoke(app, ["eval", "--dataset", "spair", "--datapath", str(tmp_path), "--backbone",
                              "efficientnet-lite0", "-o", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["thres"] == "bbox" and summary["model"]["config"]["preset"] == "spair"
    assert summary["model"]["config"]["exp2"] == 1.0
    assert set(summary["pck"]["per_flag"]) == {"viewpoint_variation", "scale_variation", "truncation", "occlusion"}
    assert summary["pck"]["per_flag"]["truncation"]["2"]["pairs"] == 1
    row = next(csv.DictReader(open(out / "per_pair.csv")))
    assert float(row["thr_px"]) == 464.0 and row["occlusion"] == "2"


def _archive(folder: Path, name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=name)
    return buf.getvalue()


@pytest.fixture()
def http_server():
    """Serve bytes on 127.0.0.1: {path: payload}."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = files.get(self.path)
            if data is None:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()


def test_download_installs_and_checks_integrity(photo_willow, tmp_path, http_server):
    base, files = http_server
    src = tmp_path / "src" / "PF-WILLOW"
    shutil.copytree(photo_willow / "duck(S)", src / "duck(S)")
    lines = (photo_willow / "test_pairs.csv").read_text().splitlines()
    (src / "test_pairs.csv").write_text("\n".join([lines[0]] + [ln for ln in lines if "duck(S)" in ln]) + "\n")
    good = _archive(src, "PF-WILLOW")
    files["/good.tar.gz"] = good
    files["/cut.tar.gz"] = good[: len(good) // 2]
    files["/wrong.tar.gz"] = _archive(src / "duck(S)", "something-else")

    data = tmp_path / "data"
    seen = []
    # a truncated archive and one without the expected layout are rejected, leaving nothing behind
    with pytest.raises(ScotError, match="could not download PF-WILLOW") as info:
        download_dataset("pfwillow", data, urls=(f"{base}/cut.tar.gz", f"{base}/wrong.tar.gz", f"{base}/missing"))
    msg = str(info.value)
    assert "corrupt or truncated" in msg and "does not contain PF-WILLOW/test_pairs.csv" in msg and "404" in msg
    assert "put the PF-WILLOW folder" in msg
    assert sorted(p.name for p in data.iterdir()) == []

    folder = download_dataset("pfwillow", data, progress=lambda done, total: seen.append((done, total)),
                              urls=(f"{base}/good.tar.gz",))
    assert folder == data / "PF-WILLOW" and sorted(p.name for p in data.iterdir()) == ["PF-WILLOW"]
    assert seen[-1] == (len(good), len(good))
    meta = json.loads((folder / ".scot-download.json").read_text())
    assert meta["bytes"] == len(good) and len(meta["sha256"]) == 64
    assert len(load_dataset("pfwillow", data)) == 20


def test_eval_offline_fails_with_one_line(tmp_path):
    res = runner.invoke(app, ["eval", "--dataset", "pfwillow", "--datapath", str(tmp_path / "empty"), "--backbone", "efficientnet-lite0"])
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert "\n" not in err and "PF-WILLOW not found" in err and "--download" in err
    res = runner.invoke(app, ["eval", "--dataset", "pfwillow", "--datapath", str(tmp_path / "empty"), "--backbone",
                              "efficientnet-lite0", "--download"], env={"SCOT_DOWNLOAD_TIMEOUT": "5"})
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert "\n" not in err and "could not download PF-WILLOW" in err and "by hand" in err
    assert not (tmp_path / "empty" / "PF-WILLOW").exists()


def test_resume_scores_again_the_pairs_whose_inputs_changed(tmp_path):
    """A run records what each pair was scored from; --resume scores again the pairs whose
    annotations or images changed since (and says so), keeps the others, and ends with the
    rows a fresh run on the changed data gives.  Touching a file without changing it
    changes nothing."""
    root = write_photo_willow(tmp_path / "data")
    model = SCOT(SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow", cam=False))
    settings = EvalSettings(thres="bbox", batch_size=1)
    selection = {"limit": 6}

    def pairs():
        return load_dataset("pfwillow", root.parent).select(limit=6)

    def interrupt_after_four(done, total, rate, pck):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(model, pairs(), tmp_path / "run", settings, selection, on_progress=interrupt_after_four)
    data = pairs()
    assert [p.trg.name for p in data.pairs[:4]] == ["zoomed.png", "small_mirrored.png", "squashed.png", "grey.png"]
    # pair 1: one target keypoint moves 40 px; pair 3: its target image changes; pairs 0-3: their source is touched
    rows = list(csv.reader(open(root / "test_pairs.csv", newline="")))
    rows[2][2 + 20] = str(float(rows[2][2 + 20]) + 40.0)
    with open(root / "test_pairs.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    grey = data.pairs[3].trg
    with Image.open(grey) as im:
        im.rotate(5).save(grey)
    data.pairs[0].src.touch()

    said: list[str] = []
    resumed = evaluate(model, pairs(), tmp_path / "run", settings, selection, resume=True, notice=said.append)
    fresh = evaluate(model, pairs(), tmp_path / "fresh", settings, selection)
    assert resumed["status"] == "complete" and resumed["pck"] == fresh["pck"]
    assert (tmp_path / "run" / "per_pair.csv").read_bytes() == (tmp_path / "fresh" / "per_pair.csv").read_bytes()
    assert said == [f"resuming {tmp_path / 'run'}: scoring again 2 pairs whose annotations or images changed since "
                    "they were scored"]
    journal = [json.loads(line) for line in (tmp_path / "run" / "pairs.jsonl").read_text().splitlines()]
    scored = [r["index"] for r in journal if "index" in r]
    assert scored == [0, 2, 1, 3, 4, 5]  # pairs 0 and 2 kept, 1 and 3 scored again, 4 and 5 new
    # resuming the finished run finds nothing to score again
    said.clear()
    again = evaluate(model, pairs(), tmp_path / "run", settings, selection, resume=True, notice=said.append)
    assert said == [] and again["pck"] == fresh["pck"]


def test_resume_of_a_missing_folder_is_one_line(photo_willow, tmp_path):
    missing = tmp_path / "no-such-run"
    res = runner.invoke(app, ["eval", "--dataset", "pfwillow", "--datapath", str(photo_willow.parent), "--backbone",
                              "efficientnet-lite0", "--limit", "2", "-o", str(missing), "--resume"])
    one_line_error(res, "--resume", str(missing), "does not exist")
    assert not missing.exists()


def test_category_without_pairs_in_the_list_is_one_line(photo_willow, tmp_path):
    res = runner.invoke(app, ["eval", "--dataset", "pfwillow", "--datapath", str(photo_willow.parent), "--backbone",
                              "efficientnet-lite0", "--category", "car(G)", "-o", str(tmp_path / "run")])
    one_line_error(res, "--category", "'car(G)'", "no pfwillow pair", "duck(S)")
    assert not (tmp_path / "run").exists()


def test_drop_records_rewrites_only_the_journals_that_lose_records(tmp_path):
    from scot.evaluation.journal import drop_records, load_journals

    def line(rec):
        return json.dumps(rec) + "\n"

    timing = {"kind": "timing", "feature_seconds": 1.0, "match_seconds": 2.0, "images_extracted": 3, "wall_seconds": 4.0}
    recs = [{"index": i, "category": "c", "dist": [0.0], "inputs": f"d{i}", "pck": {"0.10": 1.0}} for i in range(4)]
    (tmp_path / "pairs.rank0.jsonl").write_text(line(recs[0]) + line(recs[2]) + line(timing) + '{"index": 9, "cat')
    kept = line(recs[1]) + line(recs[3]) + line(timing)
    (tmp_path / "pairs.rank1.jsonl").write_text(kept)
    before = (tmp_path / "pairs.rank1.jsonl").stat().st_mtime_ns

    dropped = drop_records(tmp_path, lambda rec: rec["index"] == 2)
    assert dropped == [recs[2]]
    assert (tmp_path / "pairs.rank0.jsonl").read_text() == line(recs[0]) + line(timing)  # the cut line goes too
    assert (tmp_path / "pairs.rank1.jsonl").read_text() == kept
    assert (tmp_path / "pairs.rank1.jsonl").stat().st_mtime_ns == before
    state = load_journals(tmp_path, own=None)
    assert sorted(state.done) == [0, 1, 3] and state.totals()["images_extracted"] == 6


def test_pair_input_digests_hash_image_bytes_without_file_digest(tmp_path, monkeypatch):
    """Image digests are the SHA-256 of the bytes, also where hashlib.file_digest is missing (Python 3.10)."""
    import hashlib

    from scot.evaluation.scoring import PairInputs

    data = bytes(range(256)) * 5000  # more than one read chunk
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    monkeypatch.delattr(hashlib, "file_digest", raising=False)
    assert PairInputs([])._file(path) == hashlib.sha256(data).hexdigest()
