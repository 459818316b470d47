"""scot bench: the commands run with their defaults and print the figures the README quotes."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def test_bench_synthetic_prints_stages_and_ratio():
    res = runner.invoke(app, ["bench", "synthetic", "--n", "64", "--dim", "32", "--repeats", "1"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("synthetic match: n=64 x m=64, D=32,") and ", cpu," in res.output.splitlines()[0]
    for dtype in ("float32", "bfloat16"):
        assert f"cost dtype {dtype}" in res.output
    for stage in ("cost", "sinkhorn", "rhm", "transfer", "matmul alone"):
        assert re.search(rf"^\s+{stage}\s+\d+\.\d ms", res.output, re.M), stage
    ratios = re.findall(r"ratio after-features / matmul alone: (\d+\.\d+)", res.output)
    assert len(ratios) == 2 and all(float(r) > 0 for r in ratios)


def test_bench_synthetic_bad_device_is_one_line():
    from test_cli_match import one_line_error

    one_line_error(runner.invoke(app, ["bench", "synthetic", "--n", "64", "--dim", "8", "--device", "tpu"]), "--device", "tpu")
