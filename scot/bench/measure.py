"""What every ``scot bench`` measurement shares: timing from and to an idle device, memory
high-water marks, the median-and-spread statistic, and the floors (the N x M matrix's
traffic per matching stage and the bandwidth of a plain copy)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..timing import synchronize


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-memory high-water mark (Linux); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux) in bytes, or None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """VmHWM of this process (Linux), else ru_maxrss."""
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """VmRSS of this process (Linux), else the peak."""
    rss = _proc_status_bytes("VmRSS")
    return rss if rss is not None else peak_rss_bytes()


@dataclass
class Stat:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values))

    def ms(self) -> str:
        return f"{1000 * self.median:9.1f} ms  [{1000 * self.low:.1f}-{1000 * self.high:.1f}]"


class PeakMemory:
    """The memory high-water mark of a measurement on ``device``: bytes PyTorch allocated on
    a CUDA device, the process's resident set on the CPU."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.label = "peak GPU memory allocated" if self.cuda else "peak RSS"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()

    def current(self) -> int:
        return int(torch.cuda.memory_allocated(self.device)) if self.cuda else rss_bytes()

    def peak(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.device)) if self.cuda else peak_rss_bytes()


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds ``fn`` takes, from and to an idle ``device``."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


MATCH_STAGES = ("cost", "ot", "rhm", "transfer")


def matrix_passes(stage: str, factorized: bool, two_way: bool) -> int:
    """How many times a matching stage streams the N x M float32 matrix through memory.

    Counted from the code: ``cost`` writes the product (+ reads and writes it again for the
    factorized groups' update) and clamps and shifts it (:func:`scot.cost.log2_kernel_`);
    ``ot`` reads it in the first Sinkhorn sweep and reads and rewrites it as votes in the
    second (+ writes the reverse votes); ``rhm`` reads the votes for the Hough sums,
    re-weights them in place and reads them for the arg-max (two-way: both directions,
    plus two maxima and the combination).  ``transfer`` never touches the matrix.
    """
    if stage == "cost":
        return (3 if factorized else 1) + 4
    if stage == "ot":
        return 3 + (1 if two_way else 0)
    if stage == "rhm":
        return 3 + 1 if not two_way else 2 * 3 + 2 + 2 + 3 + 1
    return 0


def copy_bandwidth(n: int, m: int, device: torch.device | str = "cpu", repeats: int = 5) -> float:
    """Bytes per second of ``torch.empty(n, m).copy_(x)`` (a read and a write of the matrix): the floor."""
    x = torch.rand(n, m, device=device)
    y = torch.empty(n, m, device=device)
    y.copy_(x)
    best = min(timed(lambda: y.copy_(x), device) for _ in range(repeats))
    return 2 * 4 * n * m / best


def format_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f} MiB"


def stage_lines(stages: dict[str, Stat], bandwidth: dict[str, float] | None = None,
                 floor: float | None = None) -> list[str]:
    """Report lines: each stage's time, and where given its bandwidth against the copy floor."""
    lines = []
    for name, stat in stages.items():
        extra = ""
        if bandwidth and name in bandwidth and floor:
            extra = (f"   {bandwidth[name] / 1e9:5.1f} GB/s of the matrix "
                     f"({100 * bandwidth[name] / floor:.0f} % of a copy)")
        lines.append(f"  {name:<13}{stat.ms()}{extra}")
    return lines
