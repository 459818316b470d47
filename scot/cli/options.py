"""The command line's glue: options generated from :class:`~scot.SCOTConfig`, one-line errors.

Every algorithm option is declared once, as a :class:`~scot.config.SCOTConfig` field with
its :class:`~scot.config.Spec`; :func:`with_config` turns those fields into command-line
options (help, flag names and the real default come from the declaration) and hands the
command the options the user actually gave.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ..config import SCOTConfig, Spec, kind, specs
from ..presets import PRESET_OPTIONS

CONFIG_SPECS: dict[str, Spec] = specs()

DATASET_PRESET = {"preset": "the dataset's; pfpascal for custom"}
"""How the commands that take ``--dataset`` describe their default preset."""

# Options that several commands share (not algorithm options: those come from SCOTConfig).
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for PyTorch.",
                                                show_default="one per core")]
PresetFileOpt = Annotated[Path | None, typer.Option("--preset-file", help=(
    "A JSON written by 'scot search-layers': its hyperpixel_ids, exp2 and options "
    f"({', '.join(PRESET_OPTIONS)}) apply unless given explicitly."))]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d",
                                         help="spair, pfpascal, pfwillow, or custom (your own pairs: "
                                              "--pair-list FILE).")]
DatapathOpt = Annotated[Path, typer.Option("--datapath", help="Folder holding PF-WILLOW/, PF-PASCAL/ and SPair-71k/.")]
SplitOpt = Annotated[str, typer.Option("--split", help="test, val or trn (PF-PASCAL, SPair-71k).")]
PairListOpt = Annotated[Path | None, typer.Option(
    "--pair-list", help="Use this pair file instead of the split's (e.g. an NCNet PF-PASCAL csv); with --dataset "
    "custom, your pairs: a JSON list or JSON Lines of {source, target, source_keypoints, target_keypoints[, "
    "target_bbox, category]}, image paths relative to the file.")]
ThresOpt = Annotated[str | None, typer.Option("--thres", help="PCK threshold: img or bbox.",
                                              show_default="the dataset's, as in the paper")]
LimitOpt = Annotated[int | None, typer.Option("--limit",
                                              help="Only the first N pairs (after --category and --sample).")]
CategoryOpt = Annotated[str | None, typer.Option("--category", help="Only pairs of this class.")]
SampleOpt = Annotated[int | None, typer.Option("--sample", help="Only N pairs spread evenly over the list (every class "
                                                                "represented).")]

# Flags of parameters that are not configuration fields but appear in errors.
OTHER_FLAGS = {"name": "--dataset", "preset_file": "--preset-file", "output_dir": "--output-dir", "pairs": "--pairs",
               "output": "--output", "resume": "--resume", "configuration": "--preset-file"}


def flag_of(name: str | None) -> str:
    """The command-line flag of a configuration field or library parameter."""
    if name is None:
        return ""
    if name in CONFIG_SPECS:
        return CONFIG_SPECS[name].flags[0]
    return OTHER_FLAGS.get(name, "--" + name.replace("_", "-"))


def _echo_error(message: str) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)


class OneLineErrors(TyperGroup):
    """A command group whose usage errors are one line on stderr (exit status 2)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              windows_expand_args=windows_expand_args, **extra)
        except typer.TyperException as exc:  # usage errors of the command-line parser
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as usual
                ctx = getattr(exc, "ctx", None)
                typer.echo(ctx.get_help() if ctx is not None else message)
                sys.exit(0)
            _echo_error(message)
            sys.exit(getattr(exc, "exit_code", 2))
        except typer.Abort:
            _echo_error("aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors become one line on stderr (exit 2); interrupts exit 130; memory exhaustion 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..errors import ScotError

        try:
            return fn(*args, **kwargs)
        except ScotError as exc:
            _echo_error(exc.for_cli(flag_of))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _echo_error("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if _out_of_memory(exc):
                _echo_error("out of memory; try --low-memory, a smaller --image-side or fewer --hyperpixel ids")
                raise typer.Exit(1) from None
            if os.environ.get("SCOT_DEBUG"):
                raise
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            _echo_error(f"unexpected {type(exc).__name__}: {first} (set SCOT_DEBUG=1 for the traceback)")
            raise typer.Exit(1) from None

    return wrapper


_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "floats": str, "ids": str}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return str(value)


def _parameter(name: str, spec: Spec, default: Any, unset: str | None) -> inspect.Parameter:
    """The Typer parameter of one configuration field, defaulting to the field's default."""
    decls = [spec.flag] + ([spec.short] if spec.short else [])
    shown: Any = unset if unset is not None else (spec.unset if default is None else True)
    if isinstance(default, tuple):
        shown, default = unset or ",".join(f"{v:g}" for v in default), None
    metavar = {"floats": "<list>", "ids": "<ids>"}.get(kind(name))
    info = typer.Option(*decls, help=spec.help, show_default=shown, metavar=metavar)
    annotation: Any = Annotated[_TYPES[kind(name)] | None, info]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None if unset else default,
                             annotation=annotation)


def with_config(exclude: tuple[str, ...] = (),
                unset: dict[str, str] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per :class:`SCOTConfig` field (but ``exclude``).

    Help text, flags and the shown default come from the field's declaration.  The
    command receives ``config``: field -> value for exactly the options given on the
    command line, so presets and preset files fill the rest.  ``unset`` replaces how a
    field's default is described (e.g. ``eval``'s preset is the dataset's).
    """
    unset = unset or {}
    fields = {f.name: f.default for f in SCOTConfig.__dataclass_fields__.values()}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "config"]
        added = [_parameter(name, spec, fields[name], unset.get(name)) for name, spec in CONFIG_SPECS.items()
                 if name not in exclude]
        context = inspect.Parameter("_scot_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            ctx = kwargs.pop("_scot_context")
            given = {}
            for p in added:
                value = kwargs.pop(p.name)
                source = ctx.get_parameter_source(p.name)
                if value is not None and source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
                    given[p.name] = value
            return fn(config=given, **kwargs)

        params = own + added + [context]
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # Typer must read the new signature, not the original's
        return wrapper

    return decorate


def notice(message: str) -> None:
    """A notice for the user, on stderr."""
    typer.echo(message, err=True)


def dataset_preset(dataset: str) -> dict[str, str]:
    """The preset a dataset's command defaults to: the one named after it (none for ``custom``:
    the configuration's default preset applies)."""
    from ..config import PRESETS

    return {"preset": dataset} if dataset in PRESETS else {}


def build_model(config: dict[str, Any], preset_file: Path | None = None, **defaults: Any) -> Any:
    """The :class:`~scot.SCOT` model of the options the user gave (``config``), over
    ``defaults`` (such as the dataset's preset) and the ``preset_file``; notices go to stderr."""
    from .. import SCOT
    from ..config import build_config

    return SCOT(build_config({**defaults, **config}, preset_file), notice=notice)


def set_threads(threads: int | None) -> None:
    """``--threads``: the CPU threads PyTorch uses."""
    from ..errors import ScotError

    if threads is None:
        return
    if threads < 1:
        raise ScotError(f"must be at least 1, got {threads}", option="threads")
    import torch

    torch.set_num_threads(threads)


def progress(*columns: Any, transient: bool = False) -> Any:
    """A rich progress bar on stderr, so stdout keeps only results."""
    from rich.console import Console
    from rich.progress import Progress

    return Progress(*columns, console=Console(stderr=True), transient=transient)


@contextmanager
def on_write_error(then: str, done: str = "") -> Iterator[None]:
    """A file that cannot be written (a full disk, a read-only folder) is one line saying how to go on."""
    from ..writing import WriteError

    try:
        yield
    except WriteError as exc:
        raise exc.then(then, done) from None
