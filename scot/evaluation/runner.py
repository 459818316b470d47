"""``scot eval``: run a benchmark through the SCOT API and report PCK like the paper.

The runner:

* extracts every image once into a byte-budgeted LRU cache and reuses it across pairs;
* matches pairs in batches through the batched solver;
* journals each finished pair (:mod:`.journal`), so an interruption or crash loses
  nothing already scored and ``--resume`` continues after the last pair;
* rewrites ``per_pair.csv`` and ``summary.json`` atomically as it goes and at the end,
  then draws ``pck_per_class.png``, ``pck_curve.png`` and optional pictures
  (:mod:`.report`).

Under torchrun the ranks share the work (:mod:`.sharded`); a run folder written by any
number of processes is resumed by any number of processes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from ..cache import LRUCache
from ..datasets import Dataset, Pair
from ..errors import ScotError
from ..features import Hyperpixels
from ..io import atomic_write_json, check_folder
from ..model import SCOT
from ..pck import ALPHAS, HEADLINE_ALPHA
from .journal import JOURNAL, Journal, RunLock, RunState, absorb, journal_files, load_journals
from .report import build_summary, write_figures, write_per_pair_csv
from .scoring import score_pair

if TYPE_CHECKING:
    from ..distributed import Group

RUN_FILE = "run.json"
SNAPSHOT_SECONDS = 15.0


@dataclass
class EvalSettings:
    """How a run scores and batches (not what the model does)."""

    thres: str  # "img" or "bbox"
    batch_size: int = 1
    cache_bytes: int = 2 << 30
    save_viz: int = 0
    alphas: tuple[float, ...] = ALPHAS

    @classmethod
    def create(cls, thres: str, batch_size: int = 0, cache_gb: float = 2.0, save_viz: int = 0,
               device: Any = "cpu") -> "EvalSettings":
        """Checked settings; ``batch_size`` 0 means 1 on the CPU and 8 on a GPU."""
        import math

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


def run_identity(model: SCOT, dataset: Dataset, settings: EvalSettings, selection: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for a run to be resumed."""
    cfg = model.config.to_dict()
    cfg.pop("device", None)
    return {
        "dataset": dataset.name, "split": dataset.split, "pair_file": str(dataset.source_file),
        "selection": selection, "thres": settings.thres, "backbone": model.backbone.name,
        "weights": model.backbone.weights_source, "config": cfg,
    }


def _batches(pairs: list[Pair], size: int) -> Iterator[list[Pair]]:
    for i in range(0, len(pairs), size):
        yield pairs[i : i + size]


def score_batches(model: SCOT, batches: Iterable[list[Pair]], settings: EvalSettings, cache: LRUCache[Hyperpixels],
                  state: RunState) -> Iterator[list[dict]]:
    """Match and score ``batches`` of pairs, one batched solve each, in order.

    Images come from ``cache`` (described on a miss); ``state``'s clocks and image count
    advance.  Yields each batch's journal records; the caller journals and absorbs them.
    """

    for batch in batches:
        t0 = time.perf_counter()
        wanted = {k: (path, p.flip) for p in batch for k, path in ((p.src_key, p.src), (p.trg_key, p.trg))}
        found = {k: cache.get(k) for k in wanted}
        missing = [k for k, h in found.items() if h is None]  # described together (shared network passes)
        for k, h in zip(missing, model.extract_many([wanted[k][0] for k in missing], [wanted[k][1] for k in missing])):
            cache.put(k, h)
            found[k] = h
        state.images_extracted += len(missing)
        items = []
        for pair in batch:
            s, t = found[pair.src_key], found[pair.trg_key]
            assert s is not None and t is not None
            items.append((s, t, pair.oriented(s.original_size[0], t.original_size[0])[0]))
        t1 = time.perf_counter()
        results = model.match_batch(items, keep_plan=False, check_bounds=False)
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
    group: Group | None = None,
    on_sharding: Callable[[Any], None] | None = None,
) -> dict | None:
    """Score ``dataset`` with ``model``; write everything to ``run_dir``; return the summary.

    ``on_progress(done, total, pairs_per_second, running_pck)`` is called after each batch.
    KeyboardInterrupt and errors leave a consistent, resumable run directory behind.

    With a torchrun ``group`` (:mod:`scot.distributed`) of more than one rank, every rank
    calls this with the same arguments: each scores its shard and rank 0 writes the
    reports and returns the summary; the other ranks return None (see :mod:`.sharded`).
    ``on_sharding(sharding)`` then tells rank 0 how the pairs are split (a
    :class:`~.sharded.Sharding`) before the work starts.
    """
    if group is not None and group.world_size > 1:
        from .sharded import evaluate_sharded

        return evaluate_sharded(model, dataset, run_dir, settings, selection, group, resume, on_progress, on_sharding)
    check_folder(run_dir, "output_dir")
    lock = RunLock(run_dir)
    try:
        return _evaluate(model, dataset, run_dir, settings, selection, resume, on_progress)
    finally:
        lock.release()


def claim_run_folder(run_dir: Path, identity: dict[str, Any], resume: bool) -> None:
    """Check that ``run_dir`` may hold this run, then record its identity in ``run.json``.

    Raises:
        ScotError: with ``resume``, the folder was run with other settings; without it,
            the folder already holds scored pairs (of any process).
    """
    run_file = run_dir / RUN_FILE
    if resume and run_file.is_file():
        previous = json.loads(run_file.read_text())
        if previous != identity:
            diff = sorted(k for k in identity if previous.get(k) != identity.get(k))
            raise ScotError(f"{run_dir} was run with different settings ({', '.join(diff)} differ)", option="resume")
    elif journal_files(run_dir) and not resume:
        raise ScotError(f"{run_dir} already holds results; resume it or choose another folder", option="output_dir")
    atomic_write_json(run_file, identity)


def _evaluate(model: SCOT, dataset: Dataset, run_dir: Path, settings: EvalSettings, selection: dict[str, Any],
              resume: bool, on_progress: Callable[[int, int, float, float], None] | None) -> dict:
    identity = run_identity(model, dataset, settings, selection)
    claim_run_folder(run_dir, identity, resume)
    state = load_journals(run_dir, own=JOURNAL) if resume else RunState()
    todo = [p for p in dataset.pairs if p.index not in state.done]
    total = len(dataset.pairs)
    cache: LRUCache[Hyperpixels] = LRUCache(settings.cache_bytes, lambda h: h.nbytes())
    journal = Journal(run_dir / JOURNAL)
    status = "interrupted"
    wall0 = time.perf_counter() - state.wall_seconds
    last_snapshot = time.perf_counter()

    def snapshot(final_status: str) -> dict:
        state.wall_seconds = time.perf_counter() - wall0
        journal.write([state.timing_record()])
        summary = build_summary(model, dataset, identity, state, final_status, total, cache, settings)
        write_per_pair_csv(run_dir / "per_pair.csv", state.records, settings.alphas)
        atomic_write_json(run_dir / "summary.json", summary)
        return summary

    try:
        for records in score_batches(model, _batches(todo, max(1, settings.batch_size)), settings, cache, state):
            journal.write(records)
            for rec in records:
                absorb(state, rec)
            if on_progress is not None:
                elapsed = time.perf_counter() - wall0
                on_progress(len(state.records), total, len(state.records) / max(elapsed, 1e-9),
                            state.table.mean_over_pairs(HEADLINE_ALPHA))
            if time.perf_counter() - last_snapshot > SNAPSHOT_SECONDS:
                snapshot("running")
                last_snapshot = time.perf_counter()
        status = "complete"
    finally:
        summary = snapshot(status)
        journal.close()
    return write_figures(model, dataset, state, run_dir, summary, settings.save_viz)


def resolve_run_folder(output_dir: Path | None, results: Path, dataset: str, backbone: str, resume: bool) -> Path:
    """The run folder: ``output_dir``, with ``resume`` the newest unfinished run under
    ``results``, else a new ``results/<dataset>-<backbone>-<time>``."""
    if output_dir is not None:
        return output_dir
    if resume:
        found = find_resumable(results, dataset, backbone)
        if found is None:
            raise ScotError(f"no unfinished {dataset} run with {backbone} in {results}", option="resume")
        return found
    return results / f"{dataset}-{backbone}-{time.strftime('%Y%m%d-%H%M%S')}"


def find_resumable(results_root: Path, dataset: str, backbone: str) -> Path | None:
    """The newest run directory of ``dataset``/``backbone`` that is not complete."""
    if not results_root.is_dir():
        return None
    candidates = sorted(results_root.glob(f"{dataset}-{backbone}-*"), key=lambda p: p.name, reverse=True)
    for cand in candidates:
        summary = cand / "summary.json"
        if journal_files(cand):
            try:
                if json.loads(summary.read_text()).get("status") == "complete":
                    continue
            except (OSError, ValueError):
                pass
            return cand
    return None


