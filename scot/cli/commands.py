"""The ``scot`` commands.  Each one parses, calls the library, and prints.

Algorithm options come from :class:`~scot.SCOTConfig` (:func:`~.options.with_config`);
problems with the input are one line on stderr with exit status 2.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .. import __version__
from .options import (
    CategoryOpt,
    DatapathOpt,
    DatasetOpt,
    LimitOpt,
    OneLineErrors,
    PairListOpt,
    PresetFileOpt,
    SampleOpt,
    SplitOpt,
    ThreadsOpt,
    ThresOpt,
    cli_errors,
    dataset_preset,
    progress,
    set_threads,
    with_config,
)
from .options import build_model as _model
from .options import notice as _notice
from .ranks import RankTimeoutOpt, one_process
from .ranks import bar as _bar
from .ranks import ranks as _ranks

app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Training-free semantic correspondence (SCOT: optimal transport + regularized Hough matching).")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"scot {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                     help="Print the version and exit.")] = None,
) -> None:
    """Training-free semantic correspondence (SCOT: optimal transport + regularized Hough matching)."""


DATASET_PRESET = {"preset": "the dataset's; pfpascal for custom"}

@app.command()
@cli_errors
@with_config()
def match(
    config: dict,
    src: Annotated[str | None, typer.Argument(help="Source image.", show_default=False)] = None,
    trg: Annotated[str | None, typer.Argument(help="Target image.", show_default=False)] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the outputs.")] = Path("."),
    keypoints: Annotated[str | None, typer.Option("--keypoints", "-k", help="Source keypoints to transfer: "
                                                                            "JSON [[x, y], ...] or CSV x,y rows.")
                         ] = None,
    pairs: Annotated[Path | None, typer.Option("--pairs", help="CSV of source,target[,keypoints] rows to match in one "
                                                               "run; relative paths resolve from the CSV's folder.")
                     ] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="How many of the most confident matches to draw.")] = 100,
    foreground: Annotated[bool, typer.Option("--foreground/--anywhere", help="Draw only matches on the object (CAM > "
                                                                             "0.4), or rank all.")] = True,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write the PNG picture (off: only the JSON).")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier result of the same images, and an "
                                                                "existing --flow file.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="With --pairs: keep the rows that already have "
                                                                        "a result of the same images in the output "
                                                                        "folder and match the rest (finishes an "
                                                                        "interrupted run).")] = False,
    flow: Annotated[str | None, typer.Option("--flow", help="Also write the dense flow: FILE.npz (flow (H, W, 2) and "
                                                            "confidence (H, W)) or FILE.npy ((H, W, 3): x, y, "
                                                            "confidence); with --pairs a template holding {name}. An "
                                                            "existing file is kept unless --overwrite.")] = None,
    warp: Annotated[bool, typer.Option("--warp", help="Also write the target warped into the source frame "
                                                      "(<name>.warp.png) and a checkerboard with the source "
                                                      "(<name>.warp-check.png).")] = False,
    mask: Annotated[str | None, typer.Option("--mask", help="A binary, grey, 16-bit or palette label mask of the "
                                                            "source image to move into the target frame "
                                                            "(<name>.mask.png, labels and palette kept; "
                                                            "<name>.mask-view.png shows both).")] = None,
    html: Annotated[bool, typer.Option("--html", help="Also write <name>.html, an interactive viewer that opens "
                                                      "offline in any browser.")] = False,
    preset_file: PresetFileOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Match two images (or every row of --pairs); write a JSON of every match and a PNG picture."""
    from ..errors import ScotError
    from ..io import WriteError, check_folder, read_pair_list
    from ..outputs import Extras, Job, Outputs, match_jobs, prepare_jobs

    one_process("match")
    if top_k < 1:
        raise ScotError(f"must be at least 1, got {top_k}", option="top_k")
    set_threads(threads)
    if pairs is not None and (src or trg or keypoints):
        raise ScotError("give either SRC TRG [--keypoints] or --pairs, not both", option="pairs")
    if pairs is None and not (src and trg):
        raise ScotError("missing SRC and TRG images (or use --pairs FILE)")
    if skip_existing and (pairs is None or overwrite):
        raise ScotError("applies to --pairs runs, without --overwrite", option="skip_existing")
    extras = Extras(flow, warp, mask, html)
    extras.check(several=pairs is not None)
    if pairs is not None:
        jobs = [Job(r.source, r.target, r.keypoints, r.line, k) for k, r in enumerate(read_pair_list(pairs))]
    else:
        assert src is not None and trg is not None  # checked above
        jobs = [Job(src, trg, keypoints)]
    folder = check_folder(output)
    jobs, failed = prepare_jobs(jobs, stop_on_error=pairs is None, mask=mask)
    model = _model(config, preset_file) if jobs else None  # no model when every row failed its checks
    kw: dict[str, Any] = dict(top_k=top_k, foreground=foreground, picture=plot, overwrite=overwrite, extras=extras)
    if pairs is None:
        assert src is not None and trg is not None and model is not None  # one pair, checked: a model was built
        t0 = time.perf_counter()
        try:
            [out], _, _ = match_jobs(model, jobs, folder, **kw)
        except WriteError as exc:
            raise exc.then("run the same command again", done="nothing of this result was kept") from None
        n = 0 if jobs[0].points is None else len(jobs[0].points)
        moved = f", {n} keypoint{'s' if n != 1 else ''} transferred" if n else ""
        typer.echo(f"matched {Path(src).name} -> {Path(trg).name}{moved} [{model.backbone.name}, "
                   f"{time.perf_counter() - t0:.2f}s]")
        typer.echo("\n".join(f"  {p}" for p in out.files()))
        return
    total, done, saved = len(jobs) + len(failed), [0], [0]
    with progress(TextColumn("matching"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("pairs", total=len(jobs))

        def advance(_: Any, outcome: Any) -> None:
            done[0] += 1
            saved[0] += isinstance(outcome, Outputs)
            bar.advance(task)

        try:
            written, more, kept = match_jobs(model, jobs, folder, numbered=True, skip_existing=skip_existing,
                                             on_done=advance, **kw)
        except KeyboardInterrupt:
            _notice(f"interrupted after {done[0]} of {len(jobs)} pairs; their results are in {folder}: finish with "
                    "the same command plus --skip-existing")
            raise typer.Exit(130) from None
        except WriteError as exc:
            raise exc.then("finish with the same command plus --skip-existing",
                           done=f"{saved[0]} pairs were written in this run and are kept") from None
    already = _kept(kept)
    backbone = f" [{model.backbone.name}]" if model is not None else ""
    typer.echo(f"matched {len(written)} of {total} pairs{already}{backbone}; outputs in {folder}")
    failures = failed + more
    if failures:
        from .options import flag_of

        for f in failures:
            typer.echo(f"  failed: {pairs} line {f.job.line}: {f.error.for_cli(flag_of)}", err=True)
        raise typer.Exit(1)


@contextmanager
def _on_write_error(then: str, done: str = "") -> Iterator[None]:
    """A file that cannot be written (a full disk, a read-only folder) is one line saying how to go on."""
    from ..io import WriteError

    try:
        yield
    except WriteError as exc:
        raise exc.then(then, done) from None


def _kept(kept: list[tuple[Any, Any]]) -> str:
    """`` (2 already had results; 1 being matched by another scot process (pid ...))``, or ``""``."""
    had = sum(skip.holder is None for _, skip in kept)
    busy = sorted({skip.holder.describe() for _, skip in kept if skip.holder is not None})
    parts = ([f"{had} already had results"] if had else []) + (
        [f"{len(kept) - had} being matched by {' and '.join(busy)}"] if busy else [])
    return f" ({'; '.join(parts)})" if parts else ""


@app.command("eval")
@cli_errors
@with_config(unset=DATASET_PRESET)
def eval_(
    config: dict,
    dataset: DatasetOpt,
    datapath: DatapathOpt = Path("data"),
    split: SplitOpt = "test",
    pair_list: PairListOpt = None,
    thres: ThresOpt = None,
    limit: LimitOpt = None,
    category: CategoryOpt = None,
    sample: SampleOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size",
                                            help="Pairs per batched solve (0: 1 on the CPU, 8 on a GPU).")] = 0,
    cache_gb: Annotated[float, typer.Option("--cache-gb",
                                            help="Memory budget of the per-image feature cache, GB.")] = 2.0,
    save_viz: Annotated[int, typer.Option("--save-viz", help="Also draw the N worst and N best pairs.")] = 0,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Run folder.",
                                                    show_default="results/<dataset>-<backbone>-<time>")] = None,
    results: Annotated[Path, typer.Option("--results", help="Where run folders are created.")] = Path("results"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the newest unfinished run of this dataset and "
                                                          "backbone (or --output-dir).")] = False,
    download: Annotated[bool, typer.Option("--download",
                                           help="Download the dataset if it is missing, without asking.")] = False,
    preset_file: PresetFileOpt = None,
    threads: ThreadsOpt = None,
    rank_timeout: RankTimeoutOpt = 120.0,
) -> None:
    """Evaluate PCK on PF-WILLOW, PF-PASCAL, SPair-71k or your own pairs, scored as the paper scores it.

    Under torchrun (torchrun --nproc-per-node N -m scot eval ...) the ranks share the pairs.
    """
    from ..datasets import open_dataset
    from ..distributed.group import Stopped
    from ..distributed.world import in_turns
    from ..evaluation import EvalSettings, evaluate, format_table
    from ..evaluation.folder import check_resumable, shared_run_folder
    from ..evaluation.protocol import check_threshold, protocol_line
    from ..io import WriteError, check_folder

    # the folder that will hold the run, checked before the data and the model (nothing is created yet)
    if output_dir is not None:
        check_folder(output_dir, "output_dir", create=False)
        if resume:
            check_resumable(output_dir)
    else:
        check_folder(results, "results", create=False)
    set_threads(threads)
    where: list[Path] = []
    with _ranks(config, rank_timeout, lambda: f"; scored pairs are kept in {where[0]}: finish with the same command "
                f"plus --resume -o {where[0]}" if where else "") as group:
        main = group.rank == 0

        def open_data() -> Any:
            with _bar(main, TextColumn(f"downloading {dataset}"), BarColumn(), DownloadColumn(), transient=True) as bar:
                task = bar.add_task("download", total=None)
                return open_dataset(dataset, datapath, split, pair_list, download=download, ask=_ask,
                                    progress=lambda done, total: bar.update(task, completed=done, total=total))

        data = in_turns(group, "open dataset", open_data)
        with group.step("model"):
            data = data.select(category, limit, sample)
            model = _model(config, preset_file, **dataset_preset(dataset))
            settings = EvalSettings.create(thres or data.default_thres, batch_size, cache_gb, save_viz, model.device)
            check_threshold(data, settings.thres)
        run_dir, resume = shared_run_folder(group, output_dir, results, dataset, model.backbone.name, resume)
        where.append(run_dir)
        if main:
            typer.echo(f"{data.name} {data.split}: {len(data)} pairs, {len(data.image_keys())} images | "
                       f"{model.backbone.name} "
                       f"({model.backbone.weights_source}) on {model.device} | PCK threshold: {settings.thres} | "
                       f"{run_dir}")
        with _bar(main, TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task(data.name, total=len(data), info="")
            try:
                summary = evaluate(model, data, run_dir, settings,
                                   {"category": category, "limit": limit, "sample": sample, "pairs": len(data)},
                                   resume=resume,
                                   on_progress=lambda done, total, rate, pck: bar.update(
                                       task, completed=done, info=f"{rate:.2f} pairs/s  PCK@0.1 {pck:.1f}%"),
                                   group=group,
                                   on_sharding=_show_sharding, notice=_notice)
            except Stopped:
                raise  # torchrun stopped this rank: _ranks says why
            except KeyboardInterrupt:
                if main:
                    _notice(f"interrupted; scored pairs are saved in {run_dir}; continue with the same command plus "
                            f"--resume -o {run_dir}")
                raise typer.Exit(130) from None
            except WriteError as exc:
                raise exc.then(f"continue with the same command plus --resume -o {run_dir}",
                               done="the pairs scored before are kept") from None
        if summary is not None:
            typer.echo(protocol_line(summary["protocol"]))
            typer.echo(format_table(summary))
            sharding = summary.get("sharding")
            if sharding:
                typer.echo(f"images described per rank: {', '.join(map(str, sharding['images_described_per_rank']))} "
                           f"(a round-robin split would describe "
                           f"{', '.join(map(str, sharding['round_robin_images_per_rank']))})")
            typer.echo(f"results: {run_dir}")


def _show_sharding(sharding: Any) -> None:
    """Rank 0 prints how the pairs are split when several processes share them."""
    if sharding.world_size > 1:
        typer.echo(sharding.describe())


def _ask(question: str) -> bool:
    return sys.stdin is not None and sys.stdin.isatty() and typer.confirm(question, default=False)


@app.command()
@cli_errors
def compare(
    run_a: Annotated[Path, typer.Argument(help="A run folder of scot eval (A, the reference).", metavar="RUN_A",
                                          show_default=False)],
    run_b: Annotated[Path, typer.Argument(help="Another run folder of the same dataset and protocol (B).",
                                          metavar="RUN_B", show_default=False)],
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Also write the comparison to this JSON file (replaced if it exists).")] = None,
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples (at least 2000).")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap's random generator.")] = 0,
) -> None:
    """Compare two scot eval runs on the pairs they share: per-class and overall PCK, B − A, and a
    paired bootstrap 95 % interval of the overall difference."""
    from ..evaluation.compare import compare_runs, format_comparison, read_run
    from ..io import atomic_write_json, check_file

    if json_file is not None:
        check_file(json_file, option="json", overwrite=True)
    result = compare_runs(read_run(run_a), read_run(run_b), resamples, seed)
    typer.echo(format_comparison(result))
    if json_file is not None:
        atomic_write_json(json_file, result)
        typer.echo(f"written: {json_file}")


@app.command("search-layers")
@cli_errors
@with_config(exclude=("hyperpixel_ids",), unset=DATASET_PRESET)
def search_layers_cmd(
    config: dict,
    dataset: DatasetOpt,
    datapath: DatapathOpt = Path("data"),
    split: Annotated[str, typer.Option("--split", help="Split to search on (use a validation split where there is "
                                                       "one).")] = "test",
    pair_list: PairListOpt = None,
    limit: LimitOpt = None,
    category: CategoryOpt = None,
    sample: SampleOpt = None,
    thres: ThresOpt = None,
    grid_stride: Annotated[int, typer.Option("--grid-stride", help="Base ids are the layers of this stride (the "
                                                                   "hyperpixel grid).")] = 4,
    base_ids: Annotated[str | None, typer.Option("--base-ids", help="Explicit base ids, e.g. '(2,3,4)' (overrides "
                                                                    "--grid-stride).")] = None,
    candidates: Annotated[str | None, typer.Option("--candidates", help="Ids that may be added.",
                                                   show_default="every id")] = None,
    beam: Annotated[int, typer.Option("--beam", help="Beam width.")] = 3,
    max_size: Annotated[int, typer.Option("--max-size", help="Largest id set.")] = 6,
    resume_file: Annotated[Path | None, typer.Option("--resume-file", help="Scores are saved here after every "
                                                                           "evaluation and reused on rerun.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Preset JSON to write (load it with --preset-file).")
                      ] = Path("search-layers.json"),
    overwrite: Annotated[bool, typer.Option("--overwrite",
                                            help="Replace an existing preset file at --output.")] = False,
    threads: ThreadsOpt = None,
    rank_timeout: RankTimeoutOpt = 120.0,
) -> None:
    """Beam search over hyperpixel ids maximising PCK@0.1; writes a preset file.

    Under torchrun (torchrun --nproc-per-node N -m scot search-layers ...) the ranks share the pairs.
    """
    from ..datasets import load_dataset
    from ..io import check_file
    from ..search import check_beam, format_results, plan_search, search_layers, write_preset

    check_beam(beam, max_size)
    check_file(output, option="output", overwrite=overwrite)  # before hours of search, not after
    if resume_file is not None:
        check_file(resume_file, option="resume_file", overwrite=True)
    set_threads(threads)
    again = "run the same command again" + (f" (it reuses the scores saved in {resume_file})" if resume_file else "")
    with _ranks(config, rank_timeout) as group, _on_write_error(again):
        main = group.rank == 0
        with group.step("setup"):
            data = load_dataset(dataset, datapath, split, pair_list).select(category, limit, sample)
            model = _model(config, None, **dataset_preset(dataset))
            plan = plan_search(model, data, thres, grid_stride, base_ids, candidates)
        if main:
            typer.echo(plan.describe(data))
        with _bar(main, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn()) as bar:
            images = bar.add_task("backbone passes", total=len(data.image_keys()), info="")
            depth = bar.add_task("depth 1", total=1, info="", visible=False)
            results = search_layers(model, data, thres=plan.thres, base_ids=plan.base_ids,
                                    candidate_ids=plan.candidates, beam=beam, max_size=max_size,
                                    resume_file=resume_file,
                                    on_image=lambda i, n: bar.update(images, completed=i, total=n),
                                    on_depth=lambda d, n: bar.reset(depth, total=n, description=f"depth {d}",
                                                                    visible=True),
                                    on_eval=lambda ev, best: bar.update(
                                        depth, advance=1, info=f"best {best.score:.2f}% {list(best.ids)}"),
                                    group=group, on_sharding=_show_sharding)
        if main:
            command = "scot search-layers " + " ".join(sys.argv[2:])
            write_preset(output, results, model, data, plan.thres, command)
            typer.echo(format_results(results))
            typer.echo(f"preset written to {output} (use --preset-file {output})")


@app.command()
@cli_errors
def layers(
    backbone: Annotated[str, typer.Option("--backbone", "-b",
                                          help="The backbone whose ids to list.")] = "efficientnet-lite2",
    image_side: Annotated[int, typer.Option("--image-side", help="Image side to compute grid sizes for.")] = 300,
) -> None:
    """List a backbone's hyperpixel ids with their stride, receptive field and channels (no weights needed)."""
    from ..backbones import id_table

    typer.echo(id_table(backbone, image_side))


@app.command("config")
@cli_errors
@with_config()
def config_cmd(
    config: dict,
    preset_file: PresetFileOpt = None,
) -> None:
    """Print the configuration the options resolve to (presets and preset file applied), as JSON."""
    import json

    from ..config import build_config

    cfg = build_config(config, preset_file)
    backbone = cfg.backbone if cfg.backbone != "auto" else None
    resolved = cfg.resolve(backbone) if backbone else cfg
    unfit = _check_config_ids(backbone, resolved.hyperpixel_ids)
    typer.echo(json.dumps(resolved.to_dict(), indent=2))
    if backbone is None:
        _notice("note: with --backbone auto the preset's ids are filled once the backbone is known")
    if unfit:
        _notice(f"note: {unfit}; --backbone auto uses it when the resnet101 ImageNet weights are unavailable")


def _check_config_ids(backbone: str | None, ids: tuple[int, ...] | None) -> str | None:
    """Check the ids as :class:`~scot.SCOT` will, against the backbone's architecture (no weights read).

    With ``auto`` (None) the ids must fit one of the backbones it may pick; returns why they
    do not fit the other, if so.
    """
    from ..backbones import FALLBACK_BACKBONE, build_backbone
    from ..errors import ScotError

    if ids is None:
        return None
    if backbone is not None:
        build_backbone(backbone, "random").check_ids(ids)
        return None
    problems = []
    for name in ("resnet101", FALLBACK_BACKBONE):
        try:
            build_backbone(name, "random").check_ids(ids)
        except ScotError as exc:
            problems.append(exc)
    if len(problems) == 2:
        raise problems[0]
    return problems[0].message if problems else None


@app.command()
@cli_errors
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the outputs.")] = Path("scot-demo"),
) -> None:
    """Match a photo that matplotlib ships against a modified copy of itself: no data, no network."""
    from ..demo import run_demo

    one_process("demo")
    with _on_write_error("run scot demo again"):
        res = run_demo(output, notice=_notice)
    typer.echo(f"demo: {res.pair.description} [{res.backbone}]")
    typer.echo(f"{len(res.errors_px)} keypoints transferred, median error {res.median_error_px:.1f} px "
               f"(the copy's crop and scale are known)")
    typer.echo(f"  {res.png}\n  {res.json}\n  {res.pair.target}")


from .bench import bench_app  # noqa: E402  (the bench commands live in their own module)

app.add_typer(bench_app, name="bench")


def main() -> None:  # pragma: no cover - the console script
    app()
