"""``scot eval`` (PCK on a benchmark or your own pairs, over any number of processes) and
``scot compare`` (two runs on the pairs they share)."""

from __future__ import annotations

import sys
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

from .options import (
    DATASET_PRESET,
    CategoryOpt,
    DatapathOpt,
    DatasetOpt,
    LimitOpt,
    PairListOpt,
    PresetFileOpt,
    SampleOpt,
    SplitOpt,
    ThreadsOpt,
    ThresOpt,
    cli_errors,
    dataset_preset,
    set_threads,
    with_config,
)
from .options import build_model as _model
from .options import notice as _notice
from .ranks import RankTimeoutOpt
from .ranks import bar as _bar
from .ranks import ranks as _ranks
from .ranks import show_sharding as _show_sharding


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
    from ..writing import WriteError, check_folder

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


def _ask(question: str) -> bool:
    return sys.stdin is not None and sys.stdin.isatty() and typer.confirm(question, default=False)


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
    from ..writing import atomic_write_json, check_file

    if json_file is not None:
        check_file(json_file, option="json", overwrite=True)
    result = compare_runs(read_run(run_a), read_run(run_b), resamples, seed)
    typer.echo(format_comparison(result))
    if json_file is not None:
        atomic_write_json(json_file, result)
        typer.echo(f"written: {json_file}")
