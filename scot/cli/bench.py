"""``scot bench``: speed and memory, stage by stage (the measurements live in :mod:`scot.bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import (
    DatapathOpt,
    OneLineErrors,
    ThreadsOpt,
    build_model,
    cli_errors,
    dataset_preset,
    set_threads,
    with_config,
)

bench_app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, rich_markup_mode=None,
                        help="Measure speed and memory, stage by stage.")


@bench_app.command("synthetic")
@cli_errors
def bench_synthetic_cmd(
    n: Annotated[int, typer.Option("--n", help="Hyperpixels per image (a grid of about this many cells).")] = 4000,
    fine_dim: Annotated[int, typer.Option("--fine-dim", help="Channels on the hyperpixel grid.")] = 256,
    coarse_dim: Annotated[int, typer.Option("--coarse-dim", help="Channels of the coarse layer group.")] = 6144,
    coarse_stride: Annotated[int, typer.Option("--coarse-stride", help="How much coarser that group's grid is.")] = 4,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repetitions (after two warm-up runs).")] = 5,
    two_way: Annotated[bool, typer.Option("--two-way/--one-way",
                                          help="Time two-way matching (the Lite presets').")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:INDEX.")] = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Matching stages on random hyperpixels (default: ResNet-101's PF layout) against their floors."""
    from ..bench.synthetic import bench_synthetic, format_synthetic
    from ..errors import ScotError
    from ..model import resolve_device

    set_threads(threads)
    if n < 16 or min(fine_dim, coarse_dim, coarse_stride, repeats) < 1:
        raise ScotError("--n must be >= 16; --fine-dim, --coarse-dim, --coarse-stride and --repeats >= 1")
    res = bench_synthetic(n, fine_dim, coarse_dim, coarse_stride, repeats, str(resolve_device(device)), two_way)
    typer.echo(format_synthetic(res, repeats, fine_dim, coarse_dim, coarse_stride, two_way))


@bench_app.command("pairs")
@cli_errors
@with_config(unset={"preset": "the dataset's"})
def bench_pairs_cmd(
    config: dict,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Benchmark to take pairs from.")] = "pfwillow",
    datapath: DatapathOpt = Path("data"),
    pairs: Annotated[int, typer.Option("--pairs", help="Number of pairs (the first ones).")] = 3,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repetitions (after one warm-up round).")] = 3,
    threads: ThreadsOpt = None,
) -> None:
    """Every stage on real pairs, for each correlation path (factorized, dense, and the chosen one)."""
    from .. import SCOT
    from ..bench.pairs import bench_pairs, format_pairs
    from ..datasets import load_dataset
    from ..errors import ScotError

    if repeats < 1:
        raise ScotError(f"must be at least 1, got {repeats}", option="repeats")
    set_threads(threads)
    data = load_dataset(dataset, datapath).select(limit=pairs, option="pairs")
    model = build_model(config, None, **dataset_preset(dataset))
    if model.config.flip == "auto":  # the stages of one orientation; auto matches two
        typer.echo("note: timed with --flip off; --flip auto also matches the mirrored source (twice the matching; "
                   "scot eval reports its matching time)", err=True)
        model = SCOT(model.config.replace(flip="off"), backbone=model.backbone)
    res = bench_pairs(model, [(p.src, p.trg, p.src_kps) for p in data.pairs], repeats)
    typer.echo(format_pairs(res, dataset))


@bench_app.command("features")
@cli_errors
def bench_features_cmd(
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Backbones to time, comma-separated.")]
    = "efficientnet-lite2,resnet101",
    weights: Annotated[str | None, typer.Option("--weights", help="Weights for every backbone, e.g. 'random' "
                                                "(default: ImageNet, or seeded random ones where unavailable).")
                       ] = None,
    preset: Annotated[str, typer.Option("--preset", help="Configuration of the image descriptions.")] = "pfpascal",
    side: Annotated[int, typer.Option("--image-side", help="Longest side of the scale-1 image.")] = 300,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repetitions (after one warm-up).")] = 5,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:INDEX.")] = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Network passes per backbone and input scale (time, FLOPs, GFLOP/s) against the compute and memory roofs."""
    from ..backbones import BACKBONE_NAMES
    from ..bench.features import bench_features, format_features
    from ..errors import ScotError
    from ..model import resolve_device

    names = [b.strip() for b in backbone.split(",") if b.strip()]
    bad = [b for b in names if b not in BACKBONE_NAMES]
    if bad or not names:
        raise ScotError(f"unknown backbone(s) {bad or [backbone]} (choose from {', '.join(BACKBONE_NAMES)})",
                        option="backbone")
    if repeats < 1:
        raise ScotError(f"must be at least 1, got {repeats}", option="repeats")
    if side < 32:
        raise ScotError(f"must be at least 32 px, got {side}", option="image_side")
    set_threads(threads)
    res = bench_features(names, weights, side, repeats=repeats, device=str(resolve_device(device)), preset=preset,
                         notice=lambda m: typer.echo(m, err=True))
    typer.echo(format_features(res, preset))


@bench_app.command("memory")
@cli_errors
def bench_memory_cmd(
    pairs: Annotated[int, typer.Option("--pairs", help="Pairs in the synthetic evaluation.")] = 2000,
    images: Annotated[int, typer.Option("--images", help="Distinct generated images.")] = 400,
    side: Annotated[int, typer.Option("--image-side", help="Image side (small keeps the run short).")] = 96,
    cache_gb: Annotated[float, typer.Option("--cache-gb",
                                            help="Feature cache budget (small: constant eviction).")] = 0.02,
    threads: ThreadsOpt = None,
) -> None:
    """Resident memory along a long synthetic evaluation: it must stay flat."""
    from ..bench.memory import bench_memory_run, format_memory

    set_threads(threads)
    typer.echo(format_memory(bench_memory_run(pairs, images, side, cache_gb), side, cache_gb))
