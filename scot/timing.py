"""Stage timers that count a GPU's queued work in the stage that queued it."""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for the queued work of ``device`` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Accumulates stage durations into an optional dict.

    The clock starts, and every :meth:`lap` ends, after the queued work of ``device`` (the
    device the timed stages run on) has finished, so a GPU's asynchronous kernels are
    counted in the stage that queued them.  Without a sink nothing is synchronised.
    """

    def __init__(self, sink: dict[str, float] | None, device: torch.device | str = "cpu") -> None:
        self.sink = sink
        self.device = torch.device(device)
        if sink is not None:
            synchronize(self.device)
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        """Add the seconds since the start or the previous lap to ``sink[name]``."""
        if self.sink is None:
            return
        synchronize(self.device)
        now = time.perf_counter()
        self.sink[name] = self.sink.get(name, 0.0) + now - self.t
        self.t = now
