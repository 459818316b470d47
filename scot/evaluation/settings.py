"""How an evaluation run scores and batches (not what the model does)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ScotError
from ..pck import ALPHAS


@dataclass
class EvalSettings:
    """How a run scores and batches (not what the model does).

    Attributes:
        thres: the PCK threshold, ``img`` or ``bbox``.
        batch_size: pairs per batched solve.
        cache_bytes: the budget of the per-image feature cache.
        save_viz: how many of the worst and of the best pairs to draw.
        alphas: the PCK tolerances reported.
    """

    thres: str
    batch_size: int = 1
    cache_bytes: int = 2 << 30
    save_viz: int = 0
    alphas: tuple[float, ...] = ALPHAS

    @classmethod
    def create(cls, thres: str, batch_size: int = 0, cache_gb: float = 2.0, save_viz: int = 0,
               device: Any = "cpu") -> EvalSettings:
        """Checked settings; ``batch_size`` 0 means 1 on the CPU and 8 on a GPU."""
        if thres not in ("img", "bbox"):
            raise ScotError(f"must be img or bbox, got '{thres}'", option="thres")
        if not (math.isfinite(cache_gb) and cache_gb > 0):
            raise ScotError(f"must be a number > 0, got {cache_gb}", option="cache_gb")
        for name, value in (("batch_size", batch_size), ("save_viz", save_viz)):
            if value < 0:
                raise ScotError(f"must not be negative, got {value}", option=name)
        if batch_size == 0:
            batch_size = 8 if str(device).startswith("cuda") else 1
        return cls(thres, batch_size, int(cache_gb * 2**30), save_viz)
