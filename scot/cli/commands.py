"""The ``scot`` application, and its small commands (layers, config, demo).

Each command parses, calls the library, and prints.  ``match`` (:mod:`.match`), ``eval`` and
``compare`` (:mod:`.eval`), ``search-layers`` (:mod:`.search`) and the ``bench`` group
(:mod:`.bench`) have modules of their own; this one registers them all.

Algorithm options come from :class:`~scot.SCOTConfig` (:func:`~.options.with_config`);
problems with the input are one line on stderr with exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from .eval import compare, eval_
from .match import match
from .options import OneLineErrors, PresetFileOpt, cli_errors, with_config
from .options import notice as _notice
from .options import on_write_error as _on_write_error
from .ranks import one_process
from .search import search_layers_cmd

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


# The commands, in the order the help lists them; match, eval, compare and search-layers live in
# their own modules, bench is a group of its own.
app.command()(match)
app.command("eval")(eval_)
app.command()(compare)
app.command("search-layers")(search_layers_cmd)


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
