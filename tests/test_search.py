"""scot search-layers: finds the better id set, writes a usable preset, resumes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from conftest import one_line_error
from scot.cli import app
from scot import SCOT, SCOTConfig, load_preset_file
from scot.datasets import load_dataset
from scot.evaluation import EvalSettings, evaluate
from scot.search import search_layers

runner = CliRunner()


def test_search_prefers_the_known_better_set(willow_root, tmp_path):
    out = tmp_path / "preset.json"
    resume = tmp_path / "resume.json"
    # id 11 (a semantic stride-16 block) against id 2 (stride 4, but 24 low-level channels)
    args = ["search-layers", "--dataset", "pfwillow", "--datapath", str(willow_root.parent), "--backbone",
            "efficientnet-lite0", "--limit", "6", "--base-ids", "(2,11)", "--candidates", "(16)", "--beam", "1",
            "--max-size", "2", "--no-cam", "-o", str(out), "--resume-file", str(resume)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    scores = {tuple(r["hyperpixel_ids"]): r["pck"]["0.10"] for r in doc["results"]}
    assert scores[(11,)] > scores[(2,)] + 5
    assert doc["hyperpixel_ids"][0] == 11 and doc["grid_stride"] == 16 and doc["backbone"] == "efficientnet-lite0"
    assert set(scores) == {(2,), (11,), (11, 16)}  # beam 1 extends only the best base
    assert doc["results"][0]["pck"]["0.10"] == max(scores.values())
    assert load_preset_file(out)["hyperpixel_ids"] == tuple(doc["hyperpixel_ids"])
    # the file records the options the sets were scored with, and loading it restores them
    assert doc["options"] == {"feature_scales": [1.0, 1.5, 2.0], "center_features": True, "symmetric": True, "transfer": "weighted",
                              "flip": "off"}
    assert load_preset_file(out)["transfer"] == "weighted"

    # the reported PCK is what scot eval gets with that id set
    model = SCOT(SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow", cam=False, hyperpixel_ids=(11,)))
    data = load_dataset("pfwillow", willow_root.parent).select(limit=6)
    summary = evaluate(model, data, tmp_path / "check", EvalSettings(thres="bbox"), {})
    assert abs(summary["pck"]["overall"]["pck_mean_over_pairs"]["0.10"] - scores[(11,)]) < 1e-9

    # rerun with the resume file: nothing is evaluated again (the preset exists: --overwrite)
    before = json.loads(resume.read_text())["evaluated"]
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads(resume.read_text())["evaluated"] == before

    # and the preset file drives scot match
    row = data.pairs[0]
    res = runner.invoke(app, ["match", str(row.src), str(row.trg), "--preset-file", str(out), "-o", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    js = next((tmp_path / "m").glob("*.json"))
    assert json.loads(js.read_text())["config"]["hyperpixel_ids"] == doc["hyperpixel_ids"]


def test_search_api_grows_only_deeper_ids(photo_willow):
    model = SCOT(SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow", cam=False, hyperpixel_ids=(4,)))
    data = load_dataset("pfwillow", photo_willow.parent).select(limit=2)
    results = search_layers(model, data, thres="bbox", base_ids=[5], candidate_ids=[2, 4, 8], beam=2, max_size=3)
    evaluated = {r.ids for r in results}
    assert evaluated == {(5,), (5, 8)}  # 2 and 4 are shallower than the base: never added


def test_bad_thres_is_one_line_before_any_work(photo_willow, tmp_path):
    for cmd in ("eval", "search-layers"):
        res = runner.invoke(app, [cmd, "--dataset", "pfwillow", "--datapath", str(photo_willow.parent), "--backbone",
                                  "efficientnet-lite0", "--thres", "foo", "-o", str(tmp_path / cmd)])
        one_line_error(res, "--thres", "foo")
        assert not (tmp_path / cmd).exists()


def test_search_tries_options_on_the_best_set(willow_root, tmp_path):
    """--try scores the best id set under every combination of the tried values and the
    command's own; each score is what scot eval gets with that setting, and the preset file
    gets the best combination."""
    out = tmp_path / "preset.json"
    args = ["search-layers", "--dataset", "pfwillow", "--datapath", str(willow_root.parent), "--backbone",
            "efficientnet-lite0", "--limit", "6", "--base-ids", "(11)", "--candidates", "(16)", "--beam", "1",
            "--max-size", "1", "--no-cam", "-o", str(out), "--try", "transfer=mean", "--try", "exp2=1",
            "--try", "feature-scales=1", "--try", "transfer=weighted"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    rows = doc["results"]
    assert doc["evaluated_sets"] == 8 and all(r["hyperpixel_ids"] == [11] for r in rows)  # 2 x 2 x 2 combinations
    tried = [r.get("options", {}) for r in rows]
    assert {} in tried and {"transfer": "mean", "exp2": 1.0, "feature_scales": [1.0]} in tried
    assert rows[0]["pck"]["0.10"] == max(r["pck"]["0.10"] for r in rows)
    best = rows[0].get("options", {})
    assert doc["exp2"] == best.get("exp2", 0.5) and doc["options"]["transfer"] == best.get("transfer", "weighted")
    assert doc["options"]["feature_scales"] == best.get("feature_scales", [1.0, 1.5, 2.0])

    data = load_dataset("pfwillow", willow_root.parent).select(limit=6)
    for row in rows[:: 3]:  # a few settings, with and without another network pass
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in row.get("options", {}).items()}
        model = SCOT(SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow", cam=False, hyperpixel_ids=(11,),
                                **options))
        summary = evaluate(model, data, tmp_path / f"check{len(list(tmp_path.iterdir()))}", EvalSettings(thres="bbox"), {})
        assert abs(summary["pck"]["overall"]["pck_mean_over_pairs"]["0.10"] - row["pck"]["0.10"]) < 1e-9, options


def test_bad_try_is_one_line_before_any_work(photo_willow, tmp_path):
    base = ["search-layers", "--dataset", "pfwillow", "--datapath", str(photo_willow.parent), "-o",
            str(tmp_path / "p.json")]
    for bad, said in (("transfer", "expected NAME=VALUE"), ("eps=0.1", "'eps' cannot be tried"),
                      ("transfer=middle", "'middle' is not one of"), ("symmetric=maybe", "is not on or off"),
                      ("exp2=big", "is not a number"), ("exp2=-1", "must be > 0")):
        one_line_error(runner.invoke(app, [*base, "--try", bad]), "--try", said)
    assert not (tmp_path / "p.json").exists()
