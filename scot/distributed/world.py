"""The processes that share a run, seen from one of them: a torchrun group, or one process.

:func:`start` joins the other ranks as a :class:`~.group.Group` when torchrun started this
process with more than one rank, and otherwise returns a :class:`WorldOfOne`: the same
interface (:data:`World`), whose collectives do nothing, so ``scot eval`` and
``scot search-layers`` run one code path whatever the number of processes.
:func:`in_turns` runs work that may create shared files one node at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from .group import DEFAULT_TIMEOUT, Group, PeerError
from .launch import ALONE, Launch, launch_from_env

T = TypeVar("T")


class WorldOfOne:
    """One process alone, with the interface of :class:`~.group.Group`: every collective is the
    identity and there is nobody to wait for.

    Args:
        device: the device the process computes on (unchanged).
        launch: its place (:data:`~.launch.ALONE` unless torchrun started a world of one).
    """

    def __init__(self, device: str = "cpu", launch: Launch = ALONE) -> None:
        self.launch = launch
        self.rank = 0
        self.world_size = 1
        self.device = device
        self._progress = (0, 0.0)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run the body; its errors are raised as they are."""
        yield

    def decide_each(self, name: str, fn: Callable[[], T]) -> T:
        """``fn()``."""
        return fn()

    def decide(self, name: str, fn: Callable[[], Any]) -> Any:
        """``fn()``."""
        return fn()

    def gather(self, name: str, value: Any, on_wait: Callable[[], None] | None = None) -> list[Any]:
        """``[value]``."""
        return [value]

    def all_reduce_sum(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` unchanged."""
        return tensor

    def set_progress(self, done: int, value: float = 0.0) -> None:
        """Remember the progress for :meth:`progress`."""
        self._progress = (int(done), float(value))

    def progress(self) -> tuple[int, float]:
        """The progress last set."""
        return self._progress

    def check(self) -> None:
        """Nobody else can fail."""

    def fail(self, error: BaseException) -> None:
        """Nobody else to tell."""

    def stopped(self) -> PeerError:
        """A signal stopped this process."""
        return PeerError("stopped by a signal")

    def close(self) -> None:
        """Nothing to leave."""


World = Group | WorldOfOne
"""The processes that share a run, seen from one of them (:func:`start`)."""


def start(device: str, timeout: float = DEFAULT_TIMEOUT, env: Mapping[str, str] | None = None) -> World:
    """Join the other ranks when torchrun started this process with more than one rank.

    Args:
        device: the configured device (each rank then uses :attr:`Group.device <.group.Group.device>`).
        timeout: see :meth:`Group.start <.group.Group.start>`.
        env: the environment to read (``os.environ`` by default).

    Returns:
        The :class:`Group`, or a :class:`WorldOfOne` on ``device`` for a plain process (or
        a torchrun world of one): then the process runs exactly as without torchrun.
    """
    launch = launch_from_env(env)
    if launch is None or launch.world_size == 1:
        return WorldOfOne(device, launch or ALONE)
    return Group.start(launch, device, timeout)


def in_turns(world: World, name: str, fn: Callable[[], T]) -> T:
    """``fn()`` on every rank: first on rank 0, then on the first rank of every other node,
    then on the rest, each turn a :meth:`Group.step <.group.Group.step>` (a world of one just runs ``fn()``).

    For work that may create shared files, such as downloading a dataset: one process per
    folder does it and the others find it done.
    """
    mine = 0 if world.rank == 0 else 1 if world.launch.local_rank == 0 else 2
    value: Any = None
    for turn in range(3):
        with world.step(f"{name} ({turn + 1}/3)"):
            if turn == mine:
                value = fn()
    return value
