"""Hostile use of the command line: nothing silently wrong, nothing lost, errors before work.

Each case asserts a one-line error naming the file or flag, or a correct result.  The
images are generated (``photo_rows``), so no real data is needed.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import one_line_error
from scot.cli import app

runner = CliRunner()
LITE = ["--backbone", "efficientnet-lite0", "--no-plot"]


def strict_json(path: Path) -> dict:
    """Parse as strict JSON: NaN and Infinity are not JSON."""
    def refuse(name: str) -> None:
        raise ValueError(f"{name} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def images(photo_rows, tmp_path_factory) -> dict[str, str]:
    """Two images, and the first saved again as a JPEG with the same stem."""
    folder = tmp_path_factory.mktemp("hostile-images")
    a, b = Path(photo_rows[0]["src"]), Path(photo_rows[0]["trg"])
    shutil.copy(a, folder / "a.png")
    shutil.copy(b, folder / "b.png")
    Image.open(a).convert("RGB").save(folder / "a.jpg", quality=95)
    return {"a.png": str(folder / "a.png"), "a.jpg": str(folder / "a.jpg"), "b.png": str(folder / "b.png")}


# ---------------------------------------------------------------------------------------
# options: every float finite, every range checked, before any work
@pytest.mark.parametrize("flag, value, fragment", [
    ("--eps", "nan", "finite"), ("--eps", "inf", "finite"), ("--eps", "-1", "> 0"), ("--exp2", "nan", "finite"),
    ("--exp2", "0", "> 0"), ("--tau", "inf", "finite"), ("--sinkhorn-tol", "nan", "finite"), ("--exp1", "-inf", "finite"),
    ("--cam-scales", "1,nan", "finite"), ("--feature-scales", "1,inf", "finite"), ("--feature-scales", "2", "include 1"),
    ("--image-side", "8", "at least 32"), ("--rhm-kernel", "4", "odd"), ("--subpixel", "2", "odd"),
    ("--sinkhorn-iters", "0", "at least 1"), ("--hyperpixel", "(1,x)", "not a list"), ("--transfer", "vote", "vote"),
    ("--backbone", "vgg", "vgg"), ("--device", "tpu", "tpu"), ("--tf32", None, "CUDA"),
])
def test_bad_option_values(images, tmp_path, flag, value, fragment):
    args = [flag] if value is None else [flag, value]
    res = runner.invoke(app, ["match", images["a.png"], images["b.png"], "-o", str(tmp_path / "o"), *LITE, *args])
    one_line_error(res, flag, fragment)
    assert not any((tmp_path / "o").glob("*.json")), "a failed run must leave no output that looks like a result"


def test_nan_never_reaches_the_outputs(images, tmp_path):
    """A valid but extreme option still yields strict JSON (or a clear error), never NaN."""
    out = tmp_path / "o"
    res = runner.invoke(app, ["match", images["a.png"], images["b.png"], "-o", str(out), *LITE, "--eps", "1e-6",
                              "--max-eps-doublings", "2"])
    if res.exit_code == 0:
        for f in out.glob("*.json"):
            strict_json(f)
    else:
        one_line_error(res, "--eps")
        assert not any(out.glob("*.json"))


# ---------------------------------------------------------------------------------------
# outputs: unique names for different inputs, never a silent overwrite, checked before work
def test_same_stems_get_different_names(images, tmp_path):
    out = tmp_path / "o"
    for src in ("a.png", "a.jpg"):
        res = runner.invoke(app, ["match", images[src], images["b.png"], "-o", str(out), *LITE])
        assert res.exit_code == 0, res.output
    records = sorted(out.glob("*.json"))
    assert [r.name for r in records] == ["a__b-2.json", "a__b.json"]
    assert {Path(strict_json(r)["source"]["path"]).name for r in records} == {"a.png", "a.jpg"}


def test_a_result_of_the_same_images_is_not_replaced_without_overwrite(images, tmp_path):
    out = tmp_path / "o"
    args = ["match", images["a.png"], images["b.png"], "-o", str(out), *LITE]
    assert runner.invoke(app, args).exit_code == 0
    before = (out / "a__b.json").read_bytes()
    one_line_error(runner.invoke(app, args), "a__b.json", "--overwrite")
    assert (out / "a__b.json").read_bytes() == before
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_an_existing_flow_file_is_not_replaced_without_overwrite(images, tmp_path):
    """``--flow`` names a file outside the output folder: a second run with another ``-o``
    must not replace it silently, and an unwritable flow folder fails before matching."""
    flow = tmp_path / "flow.npz"
    first = ["match", images["a.png"], images["b.png"], "--flow", str(flow), *LITE]
    assert runner.invoke(app, [*first, "-o", str(tmp_path / "o1")]).exit_code == 0
    before = flow.read_bytes()
    one_line_error(runner.invoke(app, [*first, "-o", str(tmp_path / "o2")]), "--flow", "flow.npz", "--overwrite")
    assert flow.read_bytes() == before and not list((tmp_path / "o2").glob("*.json"))
    assert runner.invoke(app, [*first, "-o", str(tmp_path / "o3"), "--overwrite"]).exit_code == 0
    one_line_error(runner.invoke(app, ["match", images["a.png"], images["b.png"], "-o", str(tmp_path / "o4"),
                                       "--flow", "/proc/scot-flow/f.npz", *LITE]), "--flow", "cannot write to /proc")


def test_unwritable_system_folder_is_refused_before_any_work(images, monkeypatch):
    import scot.cli.match as cli_app

    monkeypatch.setattr(cli_app, "_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no model first")))
    # /proc accepts no new folders, even for root
    one_line_error(runner.invoke(app, ["match", images["a.png"], images["b.png"], "-o", "/proc/scot-out", *LITE]),
                   "--output", "cannot write to /proc/scot-out")


def test_search_layers_checks_its_files_before_any_work(tmp_path, monkeypatch):
    """A layer search can run for hours: an existing preset at ``-o`` (no ``--overwrite``),
    an unwritable ``-o`` or ``--resume-file``, or a folder as ``-o`` fail before the data
    is even read, not after the search."""
    import scot.cli.search as cli_app

    monkeypatch.setattr(cli_app, "_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no model first")))
    search = ["search-layers", "--dataset", "pfwillow", "--datapath", str(tmp_path / "not-read"), "--limit", "2"]
    preset = tmp_path / "preset.json"
    preset.write_text("{}")
    one_line_error(runner.invoke(app, [*search, "-o", str(preset)]), "--output", "preset.json", "--overwrite")
    assert preset.read_text() == "{}"
    one_line_error(runner.invoke(app, [*search, "-o", "/proc/scot-search/p.json"]), "--output", "cannot write to /proc")
    one_line_error(runner.invoke(app, [*search, "-o", str(tmp_path)]), "--output", "is a folder")
    one_line_error(runner.invoke(app, [*search, "-o", str(tmp_path / "new.json"), "--resume-file", "/proc/scot-r/r.json"]),
                   "--resume-file", "cannot write to /proc")
    one_line_error(runner.invoke(app, [*search, "-o", str(tmp_path / "new.json"), "--beam", "0"]), "--beam", "got 0")
    one_line_error(runner.invoke(app, [*search, "-o", str(tmp_path / "new.json"), "--max-size", "0"]), "--max-size")
    # with --overwrite the same preset path goes on to the search (here: the missing data)
    one_line_error(runner.invoke(app, [*search, "-o", str(preset), "--overwrite"]), "not-read")


def test_eval_checks_its_run_folder_before_any_work(tmp_path, monkeypatch):
    """``scot eval -o FILE`` or an unwritable ``--results`` used to end in "unexpected
    FileExistsError/FileNotFoundError" after the model was built; now a one-line error
    comes before the data is read, and nothing is created on the way."""
    import scot.cli.eval as cli_app

    monkeypatch.setattr(cli_app, "_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no model first")))
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    ev = ["eval", "--dataset", "pfwillow", "--datapath", str(tmp_path / "not-read"), "--limit", "2"]
    one_line_error(runner.invoke(app, [*ev, "-o", str(a_file)]), "--output-dir", "not a folder")
    one_line_error(runner.invoke(app, [*ev, "-o", str(a_file / "run")]), "--output-dir", "cannot write to")
    one_line_error(runner.invoke(app, [*ev, "--results", "/proc/scot-results"]), "--results", "cannot write to /proc")
    one_line_error(runner.invoke(app, [*ev, "--results", str(a_file)]), "--results", "not a folder")
    # a writable new folder passes the check without being created (here: the missing data)
    one_line_error(runner.invoke(app, [*ev, "--results", str(tmp_path / "new" / "results")]), "not-read")
    assert not (tmp_path / "new").exists()


def test_output_that_is_a_file_is_refused(images, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    one_line_error(runner.invoke(app, ["match", images["a.png"], images["b.png"], "-o", str(f), *LITE]),
                   "--output", "not a folder")


def test_output_folder_under_a_file_is_refused(images, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    one_line_error(runner.invoke(app, ["match", images["a.png"], images["b.png"], "-o", str(f / "sub"), *LITE]),
                   "--output", "cannot write")


def test_names_longer_than_the_filesystem_allows_are_refused_before_work(images, tmp_path):
    long = tmp_path / ("x" * 200 + ".png")
    shutil.copy(images["a.png"], long)
    other = tmp_path / ("y" * 200 + ".png")
    shutil.copy(images["b.png"], other)
    res = runner.invoke(app, ["match", str(long), str(other), "-o", str(tmp_path / "o"), *LITE])
    one_line_error(res, "--output", "longer than")


# ---------------------------------------------------------------------------------------
# keypoints: checked against the image before the network runs
@pytest.mark.parametrize("content, fragment", [
    ("[[1, 2], [5000, 3]]", "outside"), ("[[1, 2], [-1, 3]]", "outside"), ("[[NaN, 2]]", "keypoints"),
    ("{oops", "not valid JSON"), ("[]", "no keypoints"), ("[[1, 2, 3]]", "keypoints"),
])
def test_bad_keypoints_are_reported_before_feature_extraction(images, tmp_path, monkeypatch, content, fragment):
    import scot.cli.match as cli_app

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be built before the keypoints are checked")

    monkeypatch.setattr(cli_app, "_model", no_model)
    kp = tmp_path / "k.json"
    kp.write_text(content)
    res = runner.invoke(app, ["match", images["a.png"], images["b.png"], "-o", str(tmp_path / "o"), *LITE,
                              "--keypoints", str(kp)])
    one_line_error(res, fragment)


def test_one_keypoint_is_singular(images, tmp_path):
    kp = tmp_path / "k.json"
    kp.write_text("[[50, 60]]")
    res = runner.invoke(app, ["match", images["a.png"], images["b.png"], "-o", str(tmp_path / "o"), *LITE,
                              "--keypoints", str(kp)])
    assert res.exit_code == 0 and "1 keypoint transferred" in res.stdout


# ---------------------------------------------------------------------------------------
# --pairs: one resolution rule, bad rows do not stop the good ones
def test_pair_paths_resolve_from_the_csv_folder_wherever_the_command_runs(images, tmp_path, monkeypatch):
    folder = Path(images["a.png"]).parent
    csv_file = folder / "pairs.csv"
    csv_file.write_text("a.png,b.png\n")
    decoy = tmp_path / "cwd"
    decoy.mkdir()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(decoy / "a.png")  # same name in the working folder
    monkeypatch.chdir(decoy)
    res = runner.invoke(app, ["match", "--pairs", str(csv_file), "-o", str(tmp_path / "o"), *LITE])
    assert res.exit_code == 0, res.output
    [record] = (tmp_path / "o").glob("*.json")
    assert Path(strict_json(record)["source"]["path"]) == folder / "a.png"


def test_bad_rows_are_reported_and_good_rows_kept(images, tmp_path):
    folder = Path(images["a.png"]).parent
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text(f"{folder}/a.png,{folder}/b.png\n{folder}/missing.png,{folder}/b.png\n"
                        f"{folder}/b.png,{folder}/a.png\n")
    out = tmp_path / "o"
    res = runner.invoke(app, ["match", "--pairs", str(csv_file), "-o", str(out), *LITE])
    assert res.exit_code == 1
    assert "matched 2 of 3 pairs" in res.stdout
    assert "line 2" in res.stderr and "missing.png" in res.stderr
    assert len(list(out.glob("*.json"))) == 2


def test_pairs_and_images_together_are_refused(images, tmp_path):
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("a.png,b.png\n")
    one_line_error(runner.invoke(app, ["match", images["a.png"], "--pairs", str(csv_file), *LITE]), "--pairs")


@pytest.mark.parametrize("content, fragment", [("", "empty"), ("# only a comment\n", "no pairs"), ("only-one-column\n", "line 1"),
                                                ("a,b,c,d\n", "line 1")])
def test_malformed_pair_lists(tmp_path, content, fragment):
    csv_file = tmp_path / "p.csv"
    csv_file.write_text(content)
    one_line_error(runner.invoke(app, ["match", "--pairs", str(csv_file), *LITE]), "--pairs", fragment)


# ---------------------------------------------------------------------------------------
# preset files: the authoritative ids, and conflicts
def test_preset_file_whose_ids_disagree_is_refused(images, tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"backbone": "efficientnet-lite0", "hyperpixel_ids": [3, 8],
                             "results": [{"hyperpixel_ids": [3, 8, 11]}]}))
    one_line_error(runner.invoke(app, ["match", images["a.png"], images["b.png"], "--preset-file", str(f), *LITE]),
                   "--preset-file", "differ")


def test_preset_file_top_level_ids_are_used(images, tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"backbone": "efficientnet-lite0", "hyperpixel_ids": [3, 8]}))
    out = tmp_path / "o"
    res = runner.invoke(app, ["match", images["a.png"], images["b.png"], "--preset-file", str(f), "-o", str(out), *LITE])
    assert res.exit_code == 0, res.output
    assert strict_json(out / "a__b.json")["config"]["hyperpixel_ids"] == [3, 8]


# ---------------------------------------------------------------------------------------
# a second writer of one evaluation run is refused
def test_concurrent_writers_of_one_run_are_refused(photo_willow, tmp_path):
    from scot.evaluation.journal import RunLock

    run = tmp_path / "run"
    run.mkdir()
    held = RunLock(run)
    try:
        res = runner.invoke(app, ["eval", "--dataset", "pfwillow", "--datapath", str(photo_willow.parent),
                                  "--backbone", "efficientnet-lite0", "--limit", "1", "-o", str(run), "--resume"])
        one_line_error(res, "--output-dir", "another scot process")
    finally:
        held.release()


def test_search_base_ids_error_names_its_flag(photo_willow, tmp_path):
    res = runner.invoke(app, ["search-layers", "--dataset", "pfwillow", "--datapath", str(photo_willow.parent),
                              "--backbone", "efficientnet-lite0", "--base-ids", "x", "-o", str(tmp_path / "s.json")])
    one_line_error(res, "--base-ids")


def test_bench_pairs_zero_names_its_flag(photo_willow):
    res = runner.invoke(app, ["bench", "pairs", "--datapath", str(photo_willow.parent), "--pairs", "0"])
    one_line_error(res, "--pairs", "at least 1")
    res = runner.invoke(app, ["bench", "pairs", "--datapath", str(photo_willow.parent), "--repeats", "0"])
    one_line_error(res, "--repeats", "at least 1")  # was "unexpected KeyError: 'cost'" after the work


@pytest.mark.parametrize("flag", ["--base-ids", "--candidates"])
def test_search_ids_out_of_range_name_their_flag(photo_willow, tmp_path, flag):
    res = runner.invoke(app, ["search-layers", "--dataset", "pfwillow", "--datapath", str(photo_willow.parent), "--limit",
                              "2", "--backbone", "efficientnet-lite0", flag, "999", "-o", str(tmp_path / "s.json")])
    one_line_error(res, flag, "[999] out of range")


def test_layers_needs_no_weights():
    res = runner.invoke(app, ["layers", "--backbone", "resnet101"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].startswith("resnet101: ids 0..33")


@pytest.mark.parametrize("case, expected", [("size", "10x10"), ("colour", "is a colour image"),
                                            ("text", "not an image file")])
def test_a_bad_mask_is_refused_before_any_work(images, tmp_path, monkeypatch, case, expected):
    import scot.cli.match as cli_app

    monkeypatch.setattr(cli_app, "_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no model first")))
    mask = tmp_path / "m.png"
    if case == "size":
        Image.new("L", (10, 10), 1).save(mask)
    elif case == "colour":
        Image.new("RGB", Image.open(images["a.png"]).size, (255, 0, 0)).save(mask)
    else:
        mask.write_text("labels")
    res = runner.invoke(app, ["match", images["a.png"], images["b.png"], "-o", str(tmp_path / "o"), *LITE,
                              "--mask", str(mask)])
    one_line_error(res, "--mask", expected)
    assert not any((tmp_path / "o").glob("*.json"))


def test_weights_that_give_nan_features_are_blamed_on_the_weights(images, tmp_path):
    import torch

    from scot.backbones import build_backbone

    state = build_backbone("efficientnet-lite0", "random:0").net.state_dict()
    state["_blocks.2._bn2.running_var"] = torch.full_like(state["_blocks.2._bn2.running_var"], float("nan"))
    bad = tmp_path / "nan.pth"
    torch.save(state, bad)
    res = runner.invoke(app, ["match", images["a.png"], images["b.png"], "-o", str(tmp_path / "o"), "--backbone",
                              "efficientnet-lite0", "--weights", str(bad), "--no-plot"])
    one_line_error(res, "--weights", "not finite", "nan.pth")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.json"))


def test_sizes_the_machine_cannot_hold_are_refused_before_any_work(images, tmp_path, monkeypatch):
    import scot.device

    monkeypatch.setattr(scot.device, "available_memory", lambda device: 2 << 30)  # a 2 GB machine
    res = runner.invoke(app, ["match", images["a.png"], images["b.png"], "-o", str(tmp_path / "o"), *LITE,
                              "--image-side", "2000"])
    one_line_error(res, "--image-side", "available")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.json"))


def test_a_matrix_that_does_not_fit_streams_or_is_refused(images, monkeypatch):
    import scot.device
    from scot import SCOT, SCOTConfig, ScotError

    model = SCOT(SCOTConfig(backbone="efficientnet-lite0", preset="pfwillow"))
    s, t = model.extract(images["a.png"]), model.extract(images["b.png"])
    reference = SCOT(model.config.replace(symmetric=False), backbone=model.backbone).match(s, t, keep_plan=False)
    notices = []
    model.matcher._notice = notices.append
    monkeypatch.setattr(scot.device, "available_memory", lambda device: 4 * s.n * t.n)  # less than one N x M matrix
    streamed = model.match(s, t, keep_plan=False)
    assert notices and "low-memory mode" in notices[0]
    assert float((streamed.best == reference.best).float().mean()) > 0.999  # one way, streamed
    with pytest.raises(ScotError, match="^image_side: .* cannot stream"):
        model.match(s, t, keep_plan=True)


def test_a_file_name_the_font_cannot_draw_gives_no_warning(images, tmp_path):
    """The picture's title shows the file names; a script the font lacks (here CJK) must
    not print matplotlib's "Glyph ... missing" warning into the user's terminal."""
    src = tmp_path / "\u8eca.png"
    shutil.copy(images["a.png"], src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = runner.invoke(app, ["match", str(src), images["b.png"], "-o", str(tmp_path / "o"),
                                  "--backbone", "efficientnet-lite0"])
    assert res.exit_code == 0, res.output
    assert not [w for w in caught if "Glyph" in str(w.message)], [str(w.message) for w in caught]
    assert (tmp_path / "o" / "\u8eca__b.png").stat().st_size > 0


@pytest.mark.parametrize("command", [["match", "a.png", "b.png"], ["demo"]], ids=["match", "demo"])
def test_one_process_commands_refuse_torchrun(command, monkeypatch, tmp_path):
    """``torchrun -m scot match`` ran the same match on every rank, each writing the same
    files; rank 0 now says it runs in one process and the other ranks exit quietly."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    one_line_error(runner.invoke(app, [*command, "-o", str(tmp_path / "o")]), f"scot {command[0]} runs in one process")
    monkeypatch.setenv("RANK", "1")
    res = runner.invoke(app, [*command, "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.output == "", res.output
    assert not (tmp_path / "o").exists()


def test_missing_images_are_found_before_the_model_is_built(images, tmp_path, monkeypatch):
    """Both images of every pair are checked from their headers first: a missing or empty
    target fails before the network is built, and a --pairs run whose rows all fail that
    check reports them without building it."""
    import scot.cli.match as cli_app

    monkeypatch.setattr(cli_app, "_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no model first")))
    empty = tmp_path / "empty.png"
    empty.touch()
    one_line_error(runner.invoke(app, ["match", images["a.png"], str(tmp_path / "gone.png"), "-o", str(tmp_path / "o"),
                                       *LITE]), "gone.png: does not exist")
    one_line_error(runner.invoke(app, ["match", images["a.png"], str(empty), "-o", str(tmp_path / "o"), *LITE]),
                   "empty.png: is empty")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"{images['a.png']},{tmp_path / 'gone.png'}\n{empty},{images['b.png']}\n")
    res = runner.invoke(app, ["match", "--pairs", str(pairs), "-o", str(tmp_path / "o"), *LITE])
    assert res.exit_code == 1 and "matched 0 of 2 pairs" in res.stdout
    assert "line 1: " in res.stderr and "gone.png: does not exist" in res.stderr and "line 2: " in res.stderr
