"""Which solver a configuration runs, chosen once from its options.

:class:`SolverPlan` is asked by :meth:`scot.config.SCOTConfig.validate` (may low-memory
mode stream this configuration?) and held by :class:`scot.matcher.Matcher` (which path
to run, and whether a pair too large for memory may fall back to streaming).  The
choices, in order:

* ``none``: optimal transport off, HPF's clamped cosine;
* ``streamed``: low-memory mode, no N x M matrix (:mod:`scot.streaming`);
* ``kernel``: plain Sinkhorn for a fixed number of iterations at a 1/ε no larger than
  :data:`SAFE_INV_EPS`, on the stored log-kernel with the votes formed in place
  (:func:`scot.ot.kernel_sinkhorn`);
* ``general``: everything else (a tolerance, the log domain, a small ε), through
  :func:`scot.votes.scot_votes` with the ε policy of :mod:`scot.ot`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import SCOTConfig

SAFE_INV_EPS = 80.0
"""Largest 1/ε for which exp(-C/ε) with C <= 1 stays a normal float32: the kernel path
cannot produce a non-finite scaling there, so it needs no ε policy."""

_UNSTREAMABLE = {  # option -> how a message names its value
    "ot": "ot off",
    "sinkhorn_mode": "sinkhorn_mode log",
    "sinkhorn_tol": "sinkhorn_tol",
    "subpixel": "subpixel",
    "mutual": "mutual",
}


@dataclass(frozen=True)
class SolverPlan:
    """The solver of one configuration.

    Attributes:
        kind: ``none``, ``streamed``, ``kernel`` or ``general`` (see the module docstring).
        method: the :func:`scot.ot.sinkhorn` method of the general path, ``plain`` or ``log``.
        two_way: match target -> source too (``symmetric``).
        blockers: the options set that streaming cannot honour (empty: it can stream).
    """

    kind: str
    method: str
    two_way: bool
    blockers: tuple[str, ...]

    @classmethod
    def of(cls, cfg: SCOTConfig) -> SolverPlan:
        """The plan of ``cfg`` (resolved or not: an unset ``symmetric`` counts as one way)."""
        values = {"ot": not cfg.ot, "sinkhorn_mode": cfg.sinkhorn_mode == "log",
                  "sinkhorn_tol": cfg.sinkhorn_tol is not None, "subpixel": bool(cfg.subpixel), "mutual": cfg.mutual}
        blockers = tuple(name for name, is_set in values.items() if is_set)
        if not cfg.ot:
            kind = "none"
        elif cfg.low_memory:
            kind = "streamed"
        elif cfg.sinkhorn_mode == "plain" and cfg.sinkhorn_tol is None and 1.0 / cfg.eps <= SAFE_INV_EPS:
            kind = "kernel"
        else:
            kind = "general"
        return cls(kind, cfg.sinkhorn_mode, bool(cfg.symmetric), blockers)

    @property
    def can_stream(self) -> bool:
        """Low-memory streaming computes what this configuration asks for."""
        return not self.blockers

    def blocker_text(self) -> str:
        """The blocking options as a message names them: ``sinkhorn_mode log, subpixel``."""
        return ", ".join(_UNSTREAMABLE[name] for name in self.blockers)
