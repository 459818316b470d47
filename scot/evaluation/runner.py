"""``scot eval``: run a benchmark through the SCOT API and report PCK like the paper.

One loop serves one process and every rank of a torchrun launch alike (a process alone
is a :class:`~scot.distributed.world.WorldOfOne`, whose collectives do nothing):

* the pairs are split by image (:class:`~scot.distributed.sharding.Sharding`): the units
  are the batches one process solves (``--batch-size`` consecutive pairs), so every pair
  is matched in the same company, whatever the number of processes, and gets the same
  result to the last bit; batches that share images stay on one rank and the ranks get
  equal estimated work.  A process alone holds every batch, in list order;
* every image is extracted once into a byte-budgeted LRU cache and reused across pairs;
* every scored pair is journaled (:mod:`.journal`) with the digest of its inputs
  (:class:`~.scoring.PairInputs`), so an interruption or a crash loses nothing already
  scored and ``--resume`` (by any number of processes) scores what is left, and again
  what changed (:func:`~.folder.claim_run_folder`);
* progress travels in the ranks' heartbeats; rank 0 shows the sum, and now and then,
  and at the end, writes ``per_pair.csv`` and ``summary.json`` atomically from every
  journal of the folder, pairs in list order, then draws ``pck_per_class.png``,
  ``pck_curve.png`` and optional pictures (:mod:`.report`).  No rank waits for another
  until the end, and that wait watches the others, so a rank that dies ends the run
  with one error naming it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..cache import LRUCache
from ..datasets import Dataset, Pair
from ..distributed.sharding import Sharding
from ..distributed.world import World, WorldOfOne
from ..errors import ScotError
from ..hyperpixels import Hyperpixels
from ..model import SCOT
from ..pck import HEADLINE_ALPHA
from ..writing import atomic_write_json, check_folder
from .folder import check_shared, claim_run_folder
from .journal import Journal, RunLock, RunState, absorb, journal_name, load_journals, lock_name
from .report import build_summary, write_figures, write_per_pair_csv
from .scoring import PairInputs, mirror_keypoints, score_pair
from .settings import EvalSettings

SNAPSHOT_SECONDS = 15.0
"""How often rank 0 rewrites ``per_pair.csv`` and ``summary.json`` while the run goes on."""


def run_identity(model: SCOT, dataset: Dataset, settings: EvalSettings, selection: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for a run to be resumed."""
    cfg = model.config.to_dict()
    cfg.pop("device", None)
    return {
        "dataset": dataset.name, "split": dataset.split, "pair_file": str(dataset.source_file),
        "selection": selection, "thres": settings.thres, "backbone": model.backbone.name,
        "weights": model.backbone.weights_source, "config": cfg,
    }


def score_batches(model: SCOT, batches: Iterable[list[Pair]], settings: EvalSettings, cache: LRUCache[Hyperpixels],
                  state: RunState) -> Iterator[list[dict]]:
    """Match and score ``batches`` of pairs, one batched solve each, in order.

    Images come from ``cache`` (described on a miss); ``state``'s clocks and image count
    advance.  Yields each batch's journal records; the caller journals and absorbs them.
    """

    mirrors = model.config.flip == "auto"  # sources are matched mirrored too: their mirror's description
    for batch in batches:
        t0 = time.perf_counter()
        wanted = {k: (path, p.flip) for p in batch for k, path in ((p.src_key, p.src), (p.trg_key, p.trg))}
        if mirrors:
            wanted.update({p.src_mirror_key: (p.src, not p.flip) for p in batch})
        found = {k: cache.get(k) for k in wanted}
        missing = [k for k, h in found.items() if h is None]  # described together (shared network passes)
        for k, h in zip(missing, model.extract_many([wanted[k][0] for k in missing], [wanted[k][1] for k in missing])):
            cache.put(k, h)
            found[k] = h
        state.images_extracted += len(missing)
        items, partners = [], []
        for pair in batch:
            s, t = found[pair.src_key], found[pair.trg_key]
            assert s is not None and t is not None
            if mirrors:
                s = dataclasses.replace(s, mirror=found[pair.src_mirror_key])
            items.append((s, t, pair.oriented(s.original_size[0], t.original_size[0])[0]))
            partners.append(mirror_keypoints(model, pair, s.original_size[0]))
        t1 = time.perf_counter()
        results = model.match_batch(items, keep_plan=False, check_bounds=False, mirror_keypoints=partners)
        records = [score_pair(pair, res, settings.thres, settings.alphas) for pair, res in zip(batch, results)]
        state.feature_seconds += t1 - t0
        state.match_seconds += time.perf_counter() - t1
        yield records


def evaluate(
    model: SCOT,
    dataset: Dataset,
    run_dir: Path,
    settings: EvalSettings,
    selection: dict[str, Any],
    resume: bool = False,
    on_progress: Callable[[int, int, float, float], None] | None = None,
    group: World | None = None,
    on_sharding: Callable[[Sharding], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> dict | None:
    """Score ``dataset`` with ``model``; write everything to ``run_dir``; return the summary.

    KeyboardInterrupt and errors leave a consistent, resumable run folder behind.

    Args:
        selection: how the pairs were chosen (part of the run's identity).
        resume: continue the run in ``run_dir``: keep its scores, except those of pairs
            whose inputs changed, and score the rest.
        on_progress: ``on_progress(done, total, pairs_per_second, running_pck)`` after
            each batch (on rank 0, counting the pairs of every rank).
        group: the processes sharing the run (:func:`scot.distributed.world.start`); None:
            this process alone.  Every rank calls this with the same arguments.
        on_sharding: ``on_sharding(sharding)`` tells rank 0 how the pairs are split over
            the processes, before the work starts.
        notice: ``notice(line)`` tells rank 0's user about scores that are done again.

    Returns:
        The summary on rank 0 (which writes every report), None on the other ranks.
    """
    world: World = group if group is not None else WorldOfOne()
    identity = run_identity(model, dataset, settings, selection)
    inputs = PairInputs(dataset.pairs)
    lock: RunLock | None = None
    try:
        with world.step("lock run folder"):
            check_folder(run_dir, "output_dir")
            lock = RunLock(run_dir, lock_name(world.rank))
        claim = world.decide("claim run folder", lambda: claim_run_folder(run_dir, identity, resume, inputs, world))
        with world.step("shared run folder"):
            check_shared(run_dir, claim["token"])
        if world.rank == 0 and claim["notice"] and notice is not None:
            notice(claim["notice"])
        sharding = Sharding.agree(world, dataset, settings.batch_size)
        if on_sharding is not None and world.rank == 0:
            on_sharding(sharding)
        return _run(model, dataset, run_dir, settings, identity, world, sharding, inputs, resume,
                    on_progress if world.rank == 0 else None)
    finally:
        if lock is not None:
            lock.release()


def _run(model: SCOT, dataset: Dataset, run_dir: Path, settings: EvalSettings, identity: dict[str, Any],
         world: World, sharding: Sharding, inputs: PairInputs, resume: bool,
         on_progress: Callable[[int, int, float, float], None] | None) -> dict | None:
    """The loop of :func:`evaluate`, on one process of ``world``: score this process's
    batches, journal them, show progress, and (rank 0) report."""
    main = world.rank == 0
    alone = world.world_size == 1
    own = journal_name(None if alone else world.rank)
    state = load_journals(run_dir, own=own) if resume else RunState()
    by_index = {p.index: p for p in dataset.pairs}
    mine = [dataset.pairs[i] for i in sharding.shards[world.rank]]
    batches = [[dataset.pairs[i] for i in chunk if dataset.pairs[i].index not in state.done]
               for chunk in sharding.batches[world.rank]]
    key = f"{HEADLINE_ALPHA:.2f}"
    in_shard = {p.index for p in mine}
    done_here = sum(p.index in state.done for p in mine)
    pck_here = sum(r["pck"][key] for r in state.records if r["index"] in in_shard)
    world.set_progress(done_here, pck_here)

    total = len(dataset.pairs)
    cache: LRUCache[Hyperpixels] = LRUCache(settings.cache_bytes, lambda h: h.nbytes())
    journal = Journal(run_dir / own)
    wall0 = time.perf_counter() - state.wall_seconds
    last_snapshot = time.perf_counter()

    def report() -> None:
        if on_progress is not None:
            done, pck_sum = world.progress()
            on_progress(done, total, done / max(time.perf_counter() - wall0, 1e-9),
                        100.0 * pck_sum / done if done else float("nan"))

    def clocks() -> None:
        """This process's clocks into its journal."""
        state.wall_seconds = time.perf_counter() - wall0
        journal.write([state.timing_record()])

    def scored() -> RunState:
        """Rank 0: every pair scored so far (in a group, as every journal of the folder holds it)."""
        return state if alone else load_journals(run_dir, own=None)

    def reports(status: str, merged: RunState, described: list[int] | None = None) -> dict:
        """Rank 0: ``summary.json`` and ``per_pair.csv`` of ``merged``."""
        summary = build_summary(model, dataset, identity, merged, status, total, cache if alone else None, settings,
                                world.world_size, None if alone else sharding.record(described))
        write_per_pair_csv(run_dir / "per_pair.csv", merged.records, settings.alphas)
        atomic_write_json(run_dir / "summary.json", summary)
        return summary

    def waiting() -> None:
        """While this process waits for the others: progress, and rank 0's reports now and then."""
        nonlocal last_snapshot
        report()
        if main and time.perf_counter() - last_snapshot > SNAPSHOT_SECONDS:
            reports("running", scored())
            last_snapshot = time.perf_counter()

    finished = False
    try:
        for records in score_batches(model, (b for b in batches if b), settings, cache, state):
            for rec in records:
                rec["inputs"] = inputs.digest(rec["index"])
            journal.write(records)
            for rec in records:
                absorb(state, rec)
            done_here += len(records)
            pck_here += sum(rec["pck"][key] for rec in records)
            world.set_progress(done_here, pck_here)
            world.check()
            report()
            if time.perf_counter() - last_snapshot > SNAPSHOT_SECONDS:
                clocks()
                if main:
                    reports("running", scored())
                last_snapshot = time.perf_counter()
        clocks()
        journal.close()
        described = world.gather("shard finished", state.images_extracted, on_wait=waiting)
        finished = True
    finally:
        if not finished:
            try:
                if not journal.fh.closed:
                    clocks()
                if main:
                    reports("interrupted", scored())
            except Exception:  # the error that stopped the run matters more
                pass
            journal.close()
    report()
    if not main:
        return None

    merged = scored()
    missing = sum(i not in merged.done for i in by_index)
    if missing:
        raise ScotError(f"{missing} of {total} pairs are missing from the journals in {run_dir}; every rank needs "
                        f"the same run folder (a shared file system when the ranks are on several nodes)",
                        option="output_dir")
    summary = reports("complete", merged, described)
    return write_figures(model, dataset, merged, run_dir, summary, settings.save_viz)
