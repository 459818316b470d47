"""``scot eval`` under torchrun: every rank scores a shard of the pairs, rank 0 reports.

* The pairs are split by image (:func:`scot.distributed.shard_by_images`): pairs that
  share images stay on one rank, so each image is described on as few ranks as possible
  and every rank's image cache works as in one process.  The units of the split are the
  batches one process would solve (``--batch-size`` consecutive pairs), so every pair is
  matched in the same company and gets the same result to the last bit.  The ranks get
  equal shares of the estimated matching work (:func:`pair_costs`), not of the pairs.
  The split depends only on the pair list, the images' shapes, the batch size and the
  number of ranks: a restarted launch gets the same shards.
* Rank 0 checks and records the run's identity as one process does, and writes
  ``launch.json`` with a token that every other rank must read back: all ranks write
  into one folder (on a shared file system when the ranks are on several nodes).
* Each rank locks and appends to its own journal, ``pairs.rank<R>.jsonl``; on
  ``--resume`` (or after a torchrun restart) every rank reads all journals of the folder
  and scores what is left of its shard.
* Progress travels in the ranks' heartbeats (:class:`scot.distributed.Group`); rank 0
  shows the sum.  No rank waits for another until the end, and that wait watches the
  others, so a rank that dies ends the run with one error naming it.
* When all ranks are done, rank 0 reads every journal and writes ``summary.json``,
  ``per_pair.csv`` and the charts from the records in pair order, as one process does;
  the summary adds the world size and the split (``sharding``).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..cache import LRUCache
from ..datasets import Dataset
from ..distributed import Group, images_per_shard, round_robin, shard_by_images
from ..errors import ScotError
from ..features import Hyperpixels
from ..image import image_size
from ..io import atomic_write_json, check_folder
from ..model import SCOT
from ..pck import HEADLINE_ALPHA
from .journal import Journal, RunLock, RunState, absorb, journal_name, load_journals, lock_name
from .report import build_summary, write_figures, write_per_pair_csv
from .runner import SNAPSHOT_SECONDS, EvalSettings, claim_run_folder, resolve_run_folder, run_identity, score_batches

LAUNCH_FILE = "launch.json"


@dataclass
class Sharding:
    """How a launch splits a dataset's pairs over its ranks.

    Attributes:
        batches: per rank, its batches in order, each a list of positions into ``dataset.pairs``.
        images: per rank, the distinct images of its shard (what it describes).
        round_robin_images: the same count for a round-robin split (rank r: pairs r, r + W, ...).
    """

    batches: list[list[list[int]]]
    images: list[int]
    round_robin_images: list[int]
    work: list[float]

    @classmethod
    def plan(cls, dataset: Dataset, world_size: int, batch_size: int = 1, costs: list[float] | None = None) -> Sharding:
        """Split ``dataset``'s batches of ``batch_size`` consecutive pairs over ``world_size`` ranks.

        Args:
            costs: the estimated work of each pair (:func:`pair_costs`); None: equal.
        """
        keys = [(p.src_key, p.trg_key) for p in dataset.pairs]
        costs = [1.0] * len(keys) if costs is None else costs
        size = max(1, batch_size)
        chunks = [list(range(i, min(i + size, len(keys)))) for i in range(0, len(keys), size)]
        split = shard_by_images([[k for i in chunk for k in keys[i]] for chunk in chunks], world_size,
                                [sum(costs[i] for i in chunk) for chunk in chunks], 1.0 / size)
        batches = [[chunks[b] for b in shard] for shard in split]
        shards = [[i for chunk in rank for i in chunk] for rank in batches]
        return cls(batches, images_per_shard(keys, shards), images_per_shard(keys, round_robin(len(keys), world_size)),
                   [sum(costs[i] for i in shard) for shard in shards])

    @property
    def shards(self) -> list[list[int]]:
        """Per rank, the positions into ``dataset.pairs`` it scores (ascending)."""
        return [[i for chunk in rank for i in chunk] for rank in self.batches]

    @property
    def world_size(self) -> int:
        return len(self.batches)

    def describe(self) -> str:
        """One line: pairs and images per rank, against a round-robin split."""
        return (f"sharded by image over {self.world_size} ranks: pairs per rank {_listed(len(s) for s in self.shards)} | "
                f"images per rank {_listed(self.images)} (round-robin split: {_listed(self.round_robin_images)})")

    def record(self, described: list[int] | None = None) -> dict[str, Any]:
        """The ``sharding`` entry of ``summary.json``; ``described``: images each rank actually described."""
        doc: dict[str, Any] = {
            "method": "batches grouped by image, balanced by estimated matching work", "world_size": self.world_size,
            "pairs_per_rank": [len(s) for s in self.shards], "images_per_rank": self.images,
            "round_robin_images_per_rank": self.round_robin_images,
            "estimated_work_per_rank": [round(w, 3) for w in self.work],
        }
        if described is not None:
            doc["images_described_per_rank"] = described
        return doc


def _listed(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def pair_costs(dataset: Dataset) -> list[float]:
    """The estimated matching work of each pair, relative to two square images.

    Both images of a pair are resized to the same long side, so each has a number of
    hyperpixels proportional to its short side over its long side, and matching N x M
    hyperpixels takes work proportional to N M: a pair costs the product of its two
    images' ratios.  Reads the images' sizes, not their pixels where the format allows.
    """
    ratio: dict[str, float] = {}
    for path, _ in dataset.image_keys():
        w, h = image_size(path)
        ratio[path] = min(w, h) / max(w, h)
    return [ratio[str(p.src)] * ratio[str(p.trg)] for p in dataset.pairs]


def find_launched(results_root: Path, dataset: str, backbone: str, run_id: str) -> Path | None:
    """The newest run folder of ``dataset``/``backbone`` under ``results_root`` that the
    launch ``run_id`` (torchrun's rendezvous id) started, or None."""
    if not run_id or not results_root.is_dir():
        return None
    for cand in sorted(results_root.glob(f"{dataset}-{backbone}-*"), key=lambda p: p.name, reverse=True):
        try:
            if json.loads((cand / LAUNCH_FILE).read_text()).get("run_id") == run_id:
                return cand
        except (OSError, ValueError, AttributeError):
            continue
    return None


def shared_run_folder(group: Group, output_dir: Path | None, results: Path, dataset: str, backbone: str,
                      resume: bool) -> tuple[Path, bool]:
    """The run folder, chosen by rank 0 and the same on every rank, and whether to resume.

    As :func:`~.runner.resolve_run_folder`; in a launch that torchrun restarted the run
    resumes, and without ``output_dir`` in the folder that this launch started (found by
    its ``launch.json``), else in a new one.
    """
    restarted = group.launch.restart_count > 0

    def choose() -> str:
        if restarted and output_dir is None:
            found = find_launched(results, dataset, backbone, group.launch.run_id)
            return str(found or resolve_run_folder(None, results, dataset, backbone, False))
        return str(resolve_run_folder(output_dir, results, dataset, backbone, resume))

    return Path(group.decide("run folder", choose)), resume or restarted


def evaluate_sharded(model: SCOT, dataset: Dataset, run_dir: Path, settings: EvalSettings, selection: dict[str, Any],
                     group: Group, resume: bool = False,
                     on_progress: Callable[[int, int, float, float], None] | None = None,
                     on_sharding: Callable[[Sharding], None] | None = None) -> dict | None:
    """:func:`~.runner.evaluate` on one rank of ``group``: score this rank's shard.

    Every rank calls it with the same arguments.  Returns the summary on rank 0 (which
    writes every report) and None on the others; ``on_progress`` is called on rank 0
    only, with the count over all ranks, and ``on_sharding`` once on rank 0 with the split.
    """
    identity = run_identity(model, dataset, settings, selection)
    lock: RunLock | None = None
    try:
        with group.step("lock run folder"):
            check_folder(run_dir, "output_dir")
            lock = RunLock(run_dir, lock_name(group.rank))
        token = group.decide("claim run folder", lambda: _claim(run_dir, identity, resume, group))
        with group.step("shared run folder"):
            _check_shared(run_dir, token)
        costs = group.decide("pair costs", lambda: pair_costs(dataset))
        sharding = Sharding.plan(dataset, group.world_size, settings.batch_size, costs)
        if on_sharding is not None and group.rank == 0:
            on_sharding(sharding)
        return _score_shard(model, dataset, run_dir, settings, identity, group, sharding, resume,
                            on_progress if group.rank == 0 else None)
    finally:
        if lock is not None:
            lock.release()


def _claim(run_dir: Path, identity: dict[str, Any], resume: bool, group: Group) -> str:
    """Rank 0: check and record the run's identity and write ``launch.json``; return its token."""
    claim_run_folder(run_dir, identity, resume)
    token = secrets.token_hex(8)
    atomic_write_json(run_dir / LAUNCH_FILE, {"world_size": group.world_size, "run_id": group.launch.run_id,
                                              "restart_count": group.launch.restart_count, "token": token})
    return token


def _check_shared(run_dir: Path, token: str) -> None:
    """Fail unless ``run_dir`` holds the ``launch.json`` that rank 0 has just written."""
    try:
        seen = json.loads((run_dir / LAUNCH_FILE).read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        seen = None
    if seen != token:
        raise ScotError(f"{run_dir} is not the folder rank 0 writes to; every rank needs the same run folder "
                        f"(a shared file system when the ranks are on several nodes)", option="output_dir")


def _score_shard(model: SCOT, dataset: Dataset, run_dir: Path, settings: EvalSettings, identity: dict[str, Any],
                 group: Group, sharding: Sharding, resume: bool,
                 on_progress: Callable[[int, int, float, float], None] | None) -> dict | None:
    main = group.rank == 0
    own = journal_name(group.rank)
    state = load_journals(run_dir, own=own) if resume else RunState()
    mine = [dataset.pairs[i] for i in sharding.shards[group.rank]]
    todo = [p for p in mine if p.index not in state.done]
    batches = [[dataset.pairs[i] for i in chunk if dataset.pairs[i].index not in state.done]
               for chunk in sharding.batches[group.rank]]
    key = f"{HEADLINE_ALPHA:.2f}"
    in_shard = {p.index for p in mine}
    done_here = len(mine) - len(todo)
    pck_here = sum(r["pck"][key] for r in state.records if r["index"] in in_shard)
    group.set_progress(done_here, pck_here)

    total = len(dataset.pairs)
    cache: LRUCache[Hyperpixels] = LRUCache(settings.cache_bytes, lambda h: h.nbytes())
    journal = Journal(run_dir / own)
    wall0 = time.perf_counter() - state.wall_seconds
    last_snapshot = time.perf_counter()

    def report() -> None:
        if on_progress is not None:
            done, pck_sum = group.progress()
            on_progress(done, total, done / max(time.perf_counter() - wall0, 1e-9),
                        100.0 * pck_sum / done if done else math.nan)

    def clocks() -> None:
        """This rank's clocks into its journal."""
        state.wall_seconds = time.perf_counter() - wall0
        journal.write([state.timing_record()])

    def reports(status: str, merged: RunState, described: list[int] | None = None) -> dict:
        """Rank 0: ``summary.json`` and ``per_pair.csv`` of every journal in the folder."""
        summary = build_summary(model, dataset, identity, merged, status, total, None, settings, group.world_size,
                                sharding.record(described))
        write_per_pair_csv(run_dir / "per_pair.csv", merged.records, settings.alphas)
        atomic_write_json(run_dir / "summary.json", summary)
        return summary

    def snapshot(status: str) -> None:
        clocks()
        if main:
            reports(status, load_journals(run_dir, own=None))

    def waiting() -> None:
        """While this rank waits for the others: progress, and rank 0's reports now and then."""
        nonlocal last_snapshot
        report()
        if main and time.perf_counter() - last_snapshot > SNAPSHOT_SECONDS:
            reports("running", load_journals(run_dir, own=None))
            last_snapshot = time.perf_counter()

    finished = False
    try:
        for records in score_batches(model, (b for b in batches if b), settings, cache, state):
            journal.write(records)
            for rec in records:
                absorb(state, rec)
            done_here += len(records)
            pck_here += sum(rec["pck"][key] for rec in records)
            group.set_progress(done_here, pck_here)
            group.check()
            report()
            if time.perf_counter() - last_snapshot > SNAPSHOT_SECONDS:
                snapshot("running")
                last_snapshot = time.perf_counter()
        clocks()
        journal.close()
        described = group.gather("shard finished", state.images_extracted, on_wait=waiting)
        finished = True
    finally:
        if not finished:
            try:
                if not journal.fh.closed:
                    clocks()
                if main:
                    reports("interrupted", load_journals(run_dir, own=None))
            except Exception:  # the error that stopped the run matters more
                pass
            journal.close()
    report()
    if not main:
        return None

    merged = load_journals(run_dir, own=None)
    missing = sum(p.index not in merged.done for p in dataset.pairs)
    if missing:
        raise ScotError(f"{missing} of {total} pairs are missing from the journals in {run_dir}; every rank needs "
                        f"the same run folder (a shared file system when the ranks are on several nodes)",
                        option="output_dir")
    summary = reports("complete", merged, described)
    return write_figures(model, dataset, merged, run_dir, summary, settings.save_viz)
