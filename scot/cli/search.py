"""``scot search-layers``: the beam search over hyperpixel ids, written as a preset file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from ..presets import FILE_OPTIONS
from .options import (
    DATASET_PRESET,
    CategoryOpt,
    DatapathOpt,
    DatasetOpt,
    LimitOpt,
    PairListOpt,
    SampleOpt,
    ThreadsOpt,
    ThresOpt,
    cli_errors,
    dataset_preset,
    set_threads,
    with_config,
)
from .options import build_model as _model
from .options import on_write_error as _on_write_error
from .ranks import RankTimeoutOpt
from .ranks import bar as _bar
from .ranks import ranks as _ranks
from .ranks import show_sharding as _show_sharding


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
    tries: Annotated[list[str] | None, typer.Option(
        "--try", help="After the ids, score the best set with this option value too, e.g. --try transfer=mean "
                      "--try exp2=1 --try feature_scales=1 (repeatable; every combination of the values tried and "
                      f"the command's own is scored). Options: {', '.join(FILE_OPTIONS)}.", show_default=False,
        metavar="NAME=VALUE")
    ] = None,
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
    from ..search import check_beam, format_results, parse_tries, plan_search, search_layers, write_preset
    from ..writing import check_file

    check_beam(beam, max_size)
    tried = parse_tries(tries or [])
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

            def on_options(n: int) -> None:
                bar.reset(depth, total=n, description="options", visible=True)

            results = search_layers(model, data, thres=plan.thres, base_ids=plan.base_ids,
                                    candidate_ids=plan.candidates, beam=beam, max_size=max_size,
                                    resume_file=resume_file,
                                    on_image=lambda i, n: bar.update(images, completed=i, total=n),
                                    on_depth=lambda d, n: bar.reset(depth, total=n, description=f"depth {d}",
                                                                    visible=True),
                                    on_eval=lambda ev, best: bar.update(
                                        depth, advance=1, info=f"best {best.score:.2f}% {list(best.ids)}"
                                                               + "".join(f" {k}={v}" for k, v in best.options.items())),
                                    group=group, on_sharding=_show_sharding, tries=tried, on_options=on_options)
        if main:
            command = "scot search-layers " + " ".join(sys.argv[2:])
            write_preset(output, results, model, data, plan.thres, command)
            typer.echo(format_results(results))
            typer.echo(f"preset written to {output} (use --preset-file {output})")
