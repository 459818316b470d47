"""The crash-safe journal of an evaluation run.

Each scored pair is appended to ``pairs.jsonl`` as one JSON line, flushed and fsync'd,
so an interruption or crash loses nothing already scored.  A line cut short by a crash
is dropped (and the file truncated to the last whole line) when the journal is read
back, and ``--resume`` continues after the pairs it holds.  A lock file keeps two
processes from writing one journal.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ScotError
from ..pck import PCKTable

JOURNAL = "pairs.jsonl"
LOCK = "run.lock"


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

    def timing_record(self) -> dict:
        """The journal line that carries the run's clocks (the last one wins on reading)."""
        return {"kind": "timing", "feature_seconds": self.feature_seconds, "match_seconds": self.match_seconds,
                "images_extracted": self.images_extracted, "wall_seconds": self.wall_seconds}


def load_journal(run_dir: Path) -> RunState:
    state = RunState()
    path = run_dir / JOURNAL
    if not path.is_file():
        return state
    good_bytes = 0
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                rec = json.loads(raw)
                if not raw.endswith(b"\n"):
                    raise ValueError("partial line")
            except ValueError:
                break  # a line cut short by a crash: drop it and everything after
            good_bytes += len(raw)
            absorb(state, rec)
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as fh:
            fh.truncate(good_bytes)
    return state


def absorb(state: RunState, rec: dict) -> None:
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
    def __init__(self, path: Path) -> None:
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        for rec in records:
            self.fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()




class RunLock:
    """An exclusive lock on a run folder for as long as a process writes into it."""

    def __init__(self, run_dir: Path) -> None:
        import fcntl

        self.path = run_dir / LOCK
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            raise ScotError(f"{run_dir} is being written by another scot process; wait for it or choose another folder",
                            option="output_dir") from None

    def release(self) -> None:
        self.fh.close()
