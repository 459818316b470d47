"""The crash-safe journal of an evaluation run.

Each scored pair is appended to ``pairs.jsonl`` as one JSON line, flushed and fsync'd,
so an interruption or crash loses nothing already scored.  A line cut short by a crash
is dropped (and the file truncated to the last whole line, by the process that appends
to it) when the journal is read back, and ``--resume`` continues after the pairs it
holds.  A lock file keeps two processes from writing one journal.  Every record holds the
digest of the inputs it was scored from (``inputs``, :class:`~.scoring.PairInputs`); a
resumed run drops the records whose inputs changed (:func:`drop_records`) and scores
those pairs again.

Under torchrun each rank appends to its own ``pairs.rank<R>.jsonl``; a run folder's
journals are read back together (:func:`load_journals`), whatever the number of
processes that wrote them or that resume them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ScotError
from ..pck import PCKTable
from ..writing import WriteError, atomic_write_bytes

JOURNAL = "pairs.jsonl"
LOCK = "run.lock"
_RANK_JOURNAL = re.compile(r"pairs\.rank(\d+)\.jsonl")


def journal_name(rank: int | None = None) -> str:
    """The journal a process appends to: ``pairs.jsonl``, or ``pairs.rank<R>.jsonl`` for rank R under torchrun."""
    return JOURNAL if rank is None else f"pairs.rank{rank}.jsonl"


def lock_name(rank: int | None = None) -> str:
    """The lock file of a process: ``run.lock`` (a single process, or rank 0), ``run.rank<R>.lock`` for rank R > 0."""
    return LOCK if not rank else f"run.rank{rank}.lock"


def journal_files(run_dir: Path) -> list[Path]:
    """The journals in ``run_dir``: ``pairs.jsonl`` first, then ``pairs.rank<R>.jsonl`` by rank."""
    ranks = sorted((int(m.group(1)), p) for p in run_dir.glob("pairs.rank*.jsonl")
                   if (m := _RANK_JOURNAL.fullmatch(p.name)))
    plain = [run_dir / JOURNAL] if (run_dir / JOURNAL).is_file() else []
    return plain + [p for _, p in ranks if p.is_file()]


@dataclass
class RunState:
    """What has been scored so far (restored from the journal on --resume)."""

    table: PCKTable = field(default_factory=PCKTable)
    records: list[dict] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    feature_seconds: float = 0.0
    match_seconds: float = 0.0
    images_extracted: int = 0
    wall_seconds: float = 0.0
    others: list[dict] = field(default_factory=list)
    """The clocks (timing records) of the run folder's other journals, written by other processes."""

    def timing_record(self) -> dict:
        """The journal line that carries the run's clocks (the last one wins on reading)."""
        return {"kind": "timing", "feature_seconds": self.feature_seconds, "match_seconds": self.match_seconds,
                "images_extracted": self.images_extracted, "wall_seconds": self.wall_seconds}

    def totals(self) -> dict:
        """This process's clocks together with :attr:`others`: seconds and images summed,
        the wall time the longest of them (processes of one launch run side by side)."""
        out = self.timing_record()
        for rec in self.others:
            for key in ("feature_seconds", "match_seconds", "images_extracted"):
                out[key] += rec[key]
            out["wall_seconds"] = max(out["wall_seconds"], rec["wall_seconds"])
        return out


def _whole_lines(path: Path) -> Iterator[tuple[bytes, dict]]:
    """The lines of a journal (bytes, record), up to a line cut short by a crash (dropped with all after it)."""
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                rec = json.loads(raw)
                if not raw.endswith(b"\n"):
                    raise ValueError("partial line")
            except ValueError:
                return
            yield raw, rec


def load_journal(run_dir: Path, name: str = JOURNAL, repair: bool = True) -> RunState:
    """The state held by one journal of ``run_dir``.

    Args:
        name: the journal's file name.
        repair: truncate a line cut short by a crash; only the process that will append
            to the journal may do so (the others just stop reading there).
    """
    state = RunState()
    path = run_dir / name
    if not path.is_file():
        return state
    good_bytes = 0
    for raw, rec in _whole_lines(path):
        good_bytes += len(raw)
        absorb(state, rec)
    if repair and good_bytes != path.stat().st_size:
        with open(path, "r+b") as fh:
            fh.truncate(good_bytes)
    return state


def load_journals(run_dir: Path, own: str | None = JOURNAL) -> RunState:
    """Every journal of ``run_dir`` merged into one state, records in pair-index order.

    Args:
        own: the journal this process appends to: it alone is repaired, and its clocks
            become the state's own; the other journals' clocks go to ``others``.  None
            reads the folder without changing anything.

    Returns:
        The merged :class:`RunState`; a pair found in several journals counts once.
    """
    states = {p.name: load_journal(run_dir, p.name, repair=p.name == own) for p in journal_files(run_dir)}
    merged = RunState()
    for rec in sorted((r for s in states.values() for r in s.records), key=lambda r: r["index"]):
        absorb(merged, rec)
    if own in states:
        mine = states[own]
        merged.feature_seconds, merged.match_seconds = mine.feature_seconds, mine.match_seconds
        merged.images_extracted, merged.wall_seconds = mine.images_extracted, mine.wall_seconds
    merged.others = [s.timing_record() for name, s in states.items() if name != own]
    return merged


def drop_records(run_dir: Path, stale: Callable[[dict], bool]) -> list[dict]:
    """Remove from every journal of ``run_dir`` the pair records for which ``stale(record)``.

    A journal that loses records is rewritten atomically (readers see the old or the new
    file), without a line cut short by a crash; the others are not touched.  Only a
    process that holds the run folder's lock may call this, before any process appends.

    Returns:
        The records removed.
    """
    dropped: list[dict] = []
    for path in journal_files(run_dir):
        kept: list[bytes] = []
        lost = 0
        for raw, rec in _whole_lines(path):
            if rec.get("kind") != "timing" and stale(rec):
                dropped.append(rec)
                lost += 1
            else:
                kept.append(raw)
        if lost:
            atomic_write_bytes(path, b"".join(kept))
    return dropped


def absorb(state: RunState, rec: dict) -> None:
    """Add a journal line to ``state``: a pair's record (once per pair) or the clocks."""
    if rec.get("kind") == "timing":
        state.feature_seconds = rec["feature_seconds"]
        state.match_seconds = rec["match_seconds"]
        state.images_extracted = rec["images_extracted"]
        state.wall_seconds = rec["wall_seconds"]
        return
    if rec["index"] in state.done:
        return
    state.done.add(rec["index"])
    state.records.append(rec)
    state.table.add(rec["category"], rec["dist"], rec.get("flags"))


class Journal:
    """A journal open for appending: every :meth:`write` is written whole and fsync'd, or not
    at all (the file is cut back to its last whole line when the disk fills up).

    Raises:
        WriteError: naming the journal, when it cannot be opened or written.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fh = open(path, "ab", buffering=0)  # unbuffered: nothing is left to write at close
        except OSError as exc:
            raise WriteError(path, exc) from None

    def write(self, records: list[dict]) -> None:
        data = b"".join(json.dumps(rec, separators=(",", ":")).encode() + b"\n" for rec in records)
        fd = self.fh.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise WriteError(self.path, exc) from None

    def close(self) -> None:
        self.fh.close()


class RunLock:
    """An exclusive lock on a run folder for as long as a process writes into it.

    Under torchrun each rank locks its own file (:func:`lock_name`); rank 0 holds the
    one a single process takes, so a single process and a launch exclude each other.
    """

    def __init__(self, run_dir: Path, name: str = LOCK) -> None:
        import fcntl

        self.path = run_dir / name
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            raise ScotError(f"{run_dir} is being written by another scot process; wait for it or choose another folder",
                            option="output_dir") from None

    def release(self) -> None:
        self.fh.close()
