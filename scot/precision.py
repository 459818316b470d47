r"""Float32 means float32: the precision of matrix products and convolutions in SCOT calls.

PyTorch lets float32 matrix products and convolutions run in reduced precision through
process-wide settings: on Ampere and newer GPUs cuDNN convolutions use TF32 tensor cores
(10-bit mantissa, about 1e-3 relative error) *by default*, and products follow
``torch.backends.cuda.matmul.fp32_precision``; on the CPU, oneDNN may use bfloat16
after ``torch.set_float32_matmul_precision("medium")``.  SCOT's numbers (the cosines,
the Sinkhorn sums, the Hough histogram's one-hot products and its smoothing convolution)
are float32 everywhere, so :func:`fp32_precision` fixes the settings for the duration of
each extraction and matching call:

* CUDA matrix products and cuDNN convolutions: IEEE float32, or TF32 when the
  configuration's ``tf32`` option is on (an explicit opt-in, see ``docs/gpu.md``);
* oneDNN (CPU) products and convolutions: IEEE float32 always.

**The settings.**  They are those of the precision API (``torch.backends.fp32_precision``,
``torch.backends.cuda.matmul.fp32_precision``, ``torch.backends.cudnn.fp32_precision``,
``torch.backends.cudnn.conv.fp32_precision``, their ``rnn`` and ``mkldnn`` siblings), a
tree ``generic -> {cuda, mkldnn} -> {matmul, conv, rnn}`` in which ``"none"`` defers to the
parent.  The legacy switches (``allow_tf32``, ``set_float32_matmul_precision``) are never
read or written: mixing the two APIs makes PyTorch raise.

**Exact restoration.**  A leaf that was never set is not the same as one set to the
value it shows: cuDNN's ``conv`` and ``rnn`` leaves show ``"tf32"`` while unset but follow
their parent once it is set, whereas an explicit ``"tf32"`` does not.  The context
therefore writes a backend's parent node (``cuda``, ``mkldnn``) rather than its leaves,
which unset or ``"none"`` leaves follow, and writes a leaf only when it holds an explicit
value of its own (it then ignores its parent).  Whether a node follows its parent is
found by briefly setting the parent to a value the node does not show.  On exit every
written node gets back its own previous value, in reverse order, so every setting,
unset leaves and ``"none"`` included, behaves afterwards exactly as before.

**Concurrency.**  The settings are process-wide, not per thread.  Calls that want the
same precision share one application of it (a count of active calls, under a lock; the
last one out restores); a call that wants another precision waits until the others have
finished.  Changing these settings from another thread while a SCOT call runs is not
supported: that call's exit would restore the values it found on entry.  Nesting calls
with *different* precisions in one thread raises instead of waiting forever.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

NODES: tuple[tuple[str, str], ...] = (
    ("generic", "all"),
    ("cuda", "all"), ("cuda", "matmul"), ("cuda", "conv"), ("cuda", "rnn"),
    ("mkldnn", "all"), ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn"),
)
"""Every node of the precision tree, as (backend, op)."""

_OPS = ("matmul", "conv")  # what SCOT runs: products (cuBLAS, oneDNN) and convolutions (cuDNN, oneDNN)


def get(backend: str, op: str) -> str:
    """The precision a node shows (its own value, else its parent's, else its default)."""
    return torch._C._get_fp32_precision_getter(backend, op)


def _set(backend: str, op: str, value: str) -> None:
    torch._C._set_fp32_precision_setter(backend, op, value)


def snapshot() -> dict[str, str]:
    """Every node's shown precision, ``"backend.op" -> value``."""
    return {f"{b}.{o}": get(b, o) for b, o in NODES}


def _other(value: str) -> str:
    """A precision every node accepts that differs from ``value``."""
    return "tf32" if value == "ieee" else "ieee"


def _follows(node: tuple[str, str], parent: tuple[str, str]) -> bool:
    """Whether ``node`` takes its value from ``parent`` (it is unset or "none").

    Sets ``parent`` to a value the node does not show, reads the node, and puts back the
    value the parent shows, which must be its own (true for the generic root).
    """
    shown = get(*node)
    before = get(*parent)
    _set(*parent, _other(shown))
    try:
        return get(*node) != shown
    finally:
        _set(*parent, before)


def _own_value(node: tuple[str, str]) -> str:
    """The value a backend's ``all`` node holds itself ("none" when it defers to generic)."""
    shown = get(*node)
    if shown == "none" or shown != get("generic", "all"):
        return shown
    return "none" if _follows(node, ("generic", "all")) else shown


def _satisfied(shown: str, want: str) -> bool:
    """A node showing ``shown`` computes as ``want`` ("none" means full float32)."""
    return shown == want or (want == "ieee" and shown == "none")


@dataclass
class _Applied:
    precision: dict[str, str]  # backend -> wanted precision
    undo: list[tuple[str, str, str]] = field(default_factory=list)  # (backend, op, value to restore), in write order


def _apply(wanted: dict[str, str]) -> _Applied:
    """Make ``matmul`` and ``conv`` of each backend in ``wanted`` compute at its precision."""
    applied = _Applied(dict(wanted))
    try:
        for backend, want in wanted.items():
            if all(_satisfied(get(backend, op), want) for op in _OPS):
                continue
            parent = (backend, "all")
            applied.undo.append((backend, "all", _own_value(parent)))
            _set(backend, "all", want)
            for op in _OPS:
                shown = get(backend, op)
                if not _satisfied(shown, want):  # an explicit value of its own: it ignores the parent
                    applied.undo.append((backend, op, shown))
                    _set(backend, op, want)
    except BaseException:
        _restore(applied)
        raise
    return applied


def _restore(applied: _Applied) -> None:
    for backend, op, value in reversed(applied.undo):
        _set(backend, op, value)
    applied.undo.clear()


class _Shared:
    """The one application of the settings that concurrent calls share."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.active: tuple | None = None  # the precision applied, as sorted (backend, value) pairs
        self.users = 0  # calls inside a block
        self.applied: _Applied | None = None


_shared = _Shared()
_local = threading.local()


def wanted_precision(device: torch.device | str, tf32: bool = False) -> dict[str, str]:
    """Per backend, the precision SCOT computes float32 at on ``device``: oneDNN always
    IEEE; CUDA (on a CUDA device) TF32 with ``tf32``, else IEEE."""
    wanted = {"mkldnn": "ieee"}
    if torch.device(device).type == "cuda":
        wanted["cuda"] = "tf32" if tf32 else "ieee"
    return wanted


@contextmanager
def fp32_precision(device: torch.device | str = "cpu", tf32: bool = False) -> Iterator[None]:
    """Within the block, float32 products and convolutions compute as :func:`wanted_precision`
    says; every setting is restored exactly on exit (see the module docstring).

    Concurrent blocks with the same precision share one application; a block with another
    precision waits for them to finish.  Nesting blocks of different precisions in one
    thread raises RuntimeError.
    """
    wanted = wanted_precision(device, tf32)
    key = tuple(sorted(wanted.items()))
    stack: list = _local.__dict__.setdefault("stack", [])
    shared = _shared
    with shared.cond:
        if stack and stack[-1] != key:
            raise RuntimeError(f"a SCOT call computing at {dict(key)} is nested in one computing at {dict(stack[-1])}")
        while shared.users and shared.active != key:
            shared.cond.wait()
        if not shared.users:
            shared.applied = _apply(wanted)
            shared.active = key
        shared.users += 1
        stack.append(key)
    try:
        yield
    finally:
        with shared.cond:
            stack.pop()
            shared.users -= 1
            if not shared.users:
                if shared.applied is not None:
                    _restore(shared.applied)
                shared.applied, shared.active = None, None
                shared.cond.notify_all()
