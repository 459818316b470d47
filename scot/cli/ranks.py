"""Command-line glue for torchrun: join the ranks, report a failure once, draw progress on rank 0."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .options import progress

if TYPE_CHECKING:
    from ..distributed.world import World

RankTimeoutOpt = Annotated[float, typer.Option("--rank-timeout", help=(
    "Under torchrun: seconds another rank may show no sign of life before the run stops with an error naming it."))]


@contextmanager
def ranks(config: dict[str, Any], timeout: float, hint: Callable[[], str] = str) -> Iterator[World]:
    """The processes of the run: under torchrun, join the other ranks (yields a
    :class:`~scot.distributed.group.Group`), else a :class:`~scot.distributed.world.WorldOfOne`.

    In a group, sets ``config['device']`` to the rank's device; when the run fails, one
    rank prints one line (``hint()`` is added to it) and the others exit quietly.  A
    process alone reports its errors as any command does.
    """
    from ..config import SCOTConfig
    from ..distributed.group import PeerError, Stopped
    from ..distributed.world import start
    from ..errors import ScotError

    try:
        group = start(str(config.get("device") or SCOTConfig.__dataclass_fields__["device"].default), timeout)
    except ScotError as exc:  # before the ranks could agree: rank 0 alone reports an error all of them meet
        if not getattr(exc, "report", os.environ.get("RANK", "0") == "0"):
            raise typer.Exit(1) from None
        raise
    if group.world_size == 1:
        yield group
        return
    config["device"] = group.device
    try:
        yield group
    except BaseException as exc:
        if isinstance(exc, Stopped):
            exc = group.stopped()
        elif isinstance(exc, (typer.Exit, KeyboardInterrupt)):
            raise
        elif not isinstance(exc, PeerError):
            group.fail(exc)
            if not isinstance(exc, ScotError):
                raise
            exc = PeerError(f"{exc.message} (rank {group.rank} of {group.world_size})", option=exc.option)
        if not exc.report:
            raise typer.Exit(1) from None
        quiet_hint = exc.agreed or group.launch.restarts_left > 0  # a restarted launch resumes by itself
        raise PeerError(exc.message + ("" if quiet_hint else hint()), option=exc.option) from None
    finally:
        group.close()


def one_process(command: str) -> None:
    """Refuse to run ``scot command`` on several torchrun ranks: each would do the same work
    and write the same files.  Rank 0 says so in one line; the other ranks exit quietly."""
    from ..distributed.launch import launch_from_env
    from ..errors import ScotError

    launch = launch_from_env()
    if launch is None or launch.world_size == 1:
        return
    if launch.rank != 0:
        raise typer.Exit(2)
    raise ScotError(f"scot {command} runs in one process, not under torchrun ({launch.world_size} ranks); "
                    "torchrun shares the work of scot eval and scot search-layers")


def bar(show: bool, *columns: Any, transient: bool = False) -> Any:
    """A progress bar on stderr, drawn only where ``show`` (rank 0 under torchrun)."""
    if show:
        return progress(*columns, transient=transient)
    from rich.progress import Progress

    return Progress(*columns, disable=True)


def show_sharding(sharding: Any) -> None:
    """Rank 0 prints how the pairs are split when several processes share them."""
    if sharding.world_size > 1:
        typer.echo(sharding.describe())
