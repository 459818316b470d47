"""``scot demo``: works from a fresh install, with no data and no network."""

from __future__ import annotations

import json
import math
import re
import socket
import statistics
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from scot.cli import app
from scot import ScotError
from scot.demo import KEYPOINTS, run_demo, transform_point
from test_cli_match import check_match_json

runner = CliRunner()


def strict_json(text: str) -> Any:
    """``json.loads`` that rejects NaN and Infinity, which strict JSON readers refuse."""

    def reject(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every attempt to open a network connection fails, as on a machine without one."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_strict_json_rejects_nan_and_infinity():
    for text in ('{"a": NaN}', "[Infinity]", "[-Infinity]"):
        with pytest.raises(ValueError, match="non-standard JSON constant"):
            strict_json(text)
    assert strict_json('{"a": 1.5}') == {"a": 1.5}


def test_demo_writes_the_match_outputs_offline(tmp_path, no_network):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "-o", str(out)])
    assert res.exit_code == 0, res.output
    png, js = out / "grace_hopper__grace_hopper_zoomed.png", out / "grace_hopper__grace_hopper_zoomed.json"
    target = out / "grace_hopper_zoomed.png"
    for path in (png, js, target):
        assert path.is_file() and str(path) in res.stdout, path
    assert "copy of itself" in res.stdout and "efficientnet-lite2" in res.stdout
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 200

    doc = strict_json(js.read_text())
    check_match_json(doc, 100, len(KEYPOINTS))
    assert doc["backbone"] == "efficientnet-lite2" and doc["source"]["path"].endswith("grace_hopper.jpg")
    with Image.open(target) as im:
        assert (doc["target"]["width"], doc["target"]["height"]) == im.size
    # the copy's crop and scale are known, so the transferred keypoints can be checked
    errors = [math.dist(k["target"], transform_point(*KEYPOINTS[k["index"]])) for k in doc["keypoints"]]
    assert sorted(errors)[len(errors) // 2] < 6, errors
    assert sum(e <= 20 for e in errors) >= 8, errors
    printed = re.search(r"median error ([0-9.]+) px", res.stdout)
    assert printed and abs(float(printed.group(1)) - statistics.median(errors)) <= 0.051


def test_run_demo_returns_the_paths_and_rejects_a_file_as_output(tmp_path, no_network):
    result = run_demo(tmp_path / "out")
    assert result.png.is_file() and result.json.is_file() and result.pair.target.is_file()
    assert result.png.parent == result.json.parent == tmp_path / "out"
    assert len(result.errors_px) == len(KEYPOINTS) and result.median_error_px < 6
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ScotError, match="exists and is not a folder"):
        run_demo(blocker)
