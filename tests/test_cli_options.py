"""Every option is declared once (SCOTConfig) and reaches the command line, its help and the README."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scot import SCOTConfig
from scot.cli import app
from scot.config import options_table, specs

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

# A value other than the default for every field, as typed on the command line and as the config holds it.
SAMPLES = {
    "backbone": ("efficientnet-lite0", "efficientnet-lite0"), "weights": ("random:3", "random:3"),
    "preset": ("spair", "spair"), "hyperpixel_ids": ("(2,5)", [2, 5]), "image_side": ("240", 240),
    "device": ("cpu", "cpu"), "cam": (False, False), "cam_scales": ("1,2", [1.0, 2.0]),
    "cam_weighting": ("linear", "linear"), "feature_scales": ("1,1.5", [1.0, 1.5]), "center_features": (True, True),
    "tf32": (False, False), "exp1": ("2", 2.0), "ot": (False, False), "eps": ("0.07", 0.07),
    "sinkhorn_iters": ("3", 3), "sinkhorn_tol": ("0.001", 0.001), "sinkhorn_mode": ("log", "log"),
    "unbalanced_tau": ("0.5", 0.5), "max_eps_doublings": ("4", 4), "exp2": ("0.7", 0.7), "rhm": (False, False),
    "rhm_cells": ("4096", 4096), "rhm_kernel": ("5", 5), "symmetric": (True, True), "transfer": ("median", "median"),
    "subpixel": ("3", 3), "flip": ("auto", "auto"), "flip_margin": ("0.1", 0.1), "sided_parts": ("keep", "keep"), "mutual": (True, True), "low_memory": (False, False), "low_memory_rows": ("512", 512),
}


def _args(name: str) -> list[str]:
    spec = specs()[name]
    text, _ = SAMPLES[name]
    if isinstance(text, bool):
        on, off = (spec.flags + [spec.flags[0]])[:2]
        return [on if text else off]
    return [spec.flags[0], text]


def test_every_field_has_a_sample():
    assert set(SAMPLES) == {f.name for f in dataclasses.fields(SCOTConfig)}


@pytest.mark.parametrize("name", list(specs()))
def test_every_field_is_reachable_from_the_command_line(name):
    res = runner.invoke(app, ["config", "--backbone", "efficientnet-lite0", *_args(name)])
    assert res.exit_code == 0, res.output
    resolved = json.loads(res.stdout)
    assert resolved[name] == SAMPLES[name][1]


def test_help_shows_every_flag_with_its_real_default():
    res = runner.invoke(app, ["match", "--help"], terminal_width=400)
    text = " ".join(res.stdout.split())
    for f in dataclasses.fields(SCOTConfig):
        spec = f.metadata["spec"]
        assert spec.flags[0] in text, spec.flag
        if f.default is None:
            shown = f"[default: ({spec.unset})]"
        elif isinstance(f.default, bool):
            shown = f"[default: {spec.flags[0 if f.default else 1].lstrip('-')}]"
        elif isinstance(f.default, tuple):
            shown = "[default: (" + ",".join(f"{v:g}" for v in f.default) + ")]"
        else:
            shown = f"[default: {f.default}]"
        assert shown in text, (f.name, shown)


def test_help_keeps_literal_brackets_and_shows_flags_without_a_metavar():
    text = " ".join(runner.invoke(app, ["match", "--help"], terminal_width=400).stdout.split())
    assert "JSON [[x, y], ...]" in text  # rich markup would eat the inner brackets
    assert "<bool>" not in text and "--cam / --no-cam " in text
    assert re.search(r"--eps <float> Entropic regularisation of Sinkhorn\. \[default: 0\.05\]", text)


def test_eval_help_says_the_preset_is_the_datasets():
    text = " ".join(runner.invoke(app, ["eval", "--help"], terminal_width=400).stdout.split())
    assert "--preset <str>" in text and "[default: (the dataset's; pfpascal for custom)]" in text


def test_version():
    import scot

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"scot {scot.__version__}"


def test_usage_errors_are_one_line():
    from conftest import one_line_error

    one_line_error(runner.invoke(app, ["match", "a.png", "b.png", "--eps", "abc"]), "--eps", "number")
    one_line_error(runner.invoke(app, ["match", "a.png", "b.png", "--no-such-flag"]), "--no-such-flag")


def test_readme_options_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    assert options_table() in readme, "regenerate the README's options table with scot.config.options_table()"


def test_readme_code_layout_is_the_tree():
    """The README's code layout (to which the package docstring points) names every module
    and package of scot/, and nothing that is not there."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Code layout", 1)[1].split("```", 2)[1]
    listed = {line.split()[0].rstrip("/") for line in block.strip().splitlines() if line.startswith("scot/")}
    package = REPO / "scot"
    tree = {f"scot/{p.name}" for p in package.iterdir()
            if (p.suffix == ".py" and p.name not in ("__init__.py", "__main__.py"))
            or (p.is_dir() and (p / "__init__.py").exists())}
    assert listed == tree, (sorted(tree - listed), sorted(listed - tree))
