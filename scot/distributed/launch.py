"""Where this process stands in a ``torchrun`` job, as the launcher's environment says.

``torchrun`` starts one process per *rank* and tells each one its place through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...).  :func:`launch_from_env`
reads it; it returns None in a process that torchrun did not start.  On a CUDA device
each rank computes on ``cuda:LOCAL_RANK`` (:func:`rank_device`), and the group uses
``gloo`` for CPU tensors and ``nccl`` for CUDA ones (:func:`backend_for`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import ScotError


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun job, as the launcher's environment gives it.

    Attributes:
        rank: global rank, 0 .. world_size - 1.
        world_size: number of processes in the job.
        local_rank: rank on this node (the GPU index on a CUDA node).
        local_world_size: processes on this node.
        restart_count: how many times torchrun restarted the workers so far.
        max_restarts: how many restarts torchrun allows (``--max-restarts``).
        run_id: the launcher's job id (the rendezvous id), the same for every rank and
            restart; empty for a process that torchrun did not start.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    restart_count: int = 0
    max_restarts: int = 0
    run_id: str = ""

    @property
    def restarts_left(self) -> int:
        """How many more times torchrun will restart the workers when one fails."""
        return max(0, self.max_restarts - self.restart_count)


ALONE = Launch(rank=0, world_size=1, local_rank=0, local_world_size=1)
"""The place of a process that torchrun did not start."""


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch | None:
    """This process's :class:`Launch`, or None when ``RANK`` and ``WORLD_SIZE`` are not set.

    Args:
        env: the environment to read (``os.environ`` by default).

    Raises:
        ScotError: a variable is not a whole number, or the rank is outside the world.
    """
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None

    def number(name: str, default: int) -> int:
        text = env.get(name)
        if text is None or text == "":
            return default
        try:
            return int(text)
        except ValueError:
            raise ScotError(f"torchrun environment: {name} is '{text}', not a whole number") from None

    world = number("WORLD_SIZE", 1)
    rank = number("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ScotError(f"torchrun environment: RANK {rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE {world})")
    return Launch(rank=rank, world_size=world, local_rank=number("LOCAL_RANK", rank),
                  local_world_size=number("LOCAL_WORLD_SIZE", world),
                  restart_count=number("TORCHELASTIC_RESTART_COUNT", 0),
                  max_restarts=number("TORCHELASTIC_MAX_RESTARTS", 0), run_id=env.get("TORCHELASTIC_RUN_ID", ""))


def rank_device(requested: str, launch: Launch) -> str:
    """The device a rank computes on: ``cuda:LOCAL_RANK`` when ``requested`` is a CUDA device.

    Args:
        requested: the configured device, e.g. ``cpu`` or ``cuda``.
        launch: this process's place in the job.

    Returns:
        ``requested`` unchanged unless it names CUDA, else ``cuda:<local rank>``.

    Raises:
        ScotError: ``requested`` names another GPU index than the local rank, or the node
            has fewer GPUs than processes.
    """
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        return requested  # SCOT reports a malformed device with its own message
    if device.type != "cuda":
        return requested
    if device.index is not None and device.index != launch.local_rank:
        raise ScotError(f"'{requested}': under torchrun each process uses the GPU of its local rank "
                        f"(cuda:{launch.local_rank} here); give cuda", option="device")
    if torch.cuda.is_available() and launch.local_rank >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ScotError(f"local rank {launch.local_rank} needs cuda:{launch.local_rank} but this node has {count} GPU"
                        f"{'s' if count != 1 else ''}; start at most {count} processes per node", option="device")
    return f"cuda:{launch.local_rank}"


def backend_for(device: str) -> str:
    """The ``torch.distributed`` backend for a rank computing on ``device``.

    ``gloo`` on the CPU; on CUDA, ``nccl`` for CUDA tensors and ``gloo`` for CPU tensors.
    """
    return "cpu:gloo,cuda:nccl" if torch.device(device).type == "cuda" else "gloo"
