"""``scot match``: two images, or every row of a pair list; the JSON, the picture and the extras."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from .options import (
    PresetFileOpt,
    ThreadsOpt,
    cli_errors,
    progress,
    set_threads,
    with_config,
)
from .options import build_model as _model
from .options import notice as _notice
from .ranks import one_process


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
    from ..io import read_pair_list
    from ..outputs import Extras, Job, Outputs, match_jobs, prepare_jobs
    from ..writing import WriteError, check_folder

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


def _kept(kept: list[tuple[Any, Any]]) -> str:
    """`` (2 already had results; 1 being matched by another scot process (pid ...))``, or ``""``."""
    had = sum(skip.holder is None for _, skip in kept)
    busy = sorted({skip.holder.describe() for _, skip in kept if skip.holder is not None})
    parts = ([f"{had} already had results"] if had else []) + (
        [f"{len(kept) - had} being matched by {' and '.join(busy)}"] if busy else [])
    return f" ({'; '.join(parts)})" if parts else ""
