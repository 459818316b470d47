"""``scot search-layers``: beam search over hyperpixel ids, maximising PCK@0.1.

This is how Hyperpixel Flow chose its layers (Min et al., ICCV 2019).  The search starts
from single *base* ids, which fix the hyperpixel grid (the stride of the shallowest
selected layer), and grows the ``beam`` best sets one id at a time, adding only deeper
ids so that the grid stays the base's.  Every evaluated set is scored on the same pairs
with the full SCOT pipeline.

Then, with ``tries`` (``--try NAME=VALUE``), the best set is scored again under every
combination of the values tried for the preset's options (:data:`SEARCHABLE`: feature
scales, centring, two-way matching, transfer rule, mirror-aware matching, exp2), the
search's own value of each included.  Only a change of feature scales runs the backbone
again (once per image and value, for the best set's ids); the others reuse the maps.  The
preset file gets the best combination found.

The backbone runs once per image for the whole search: each image's maps of *every*
candidate id (and its CAM) are kept, and each candidate set is fused from them.  Scores
are saved after every evaluation to a resume file, so an interrupted search continues
where it stopped.

Under torchrun (a :class:`~scot.distributed.group.Group`) every rank describes and scores
only its shard of the pairs (pairs grouped by image); each set's per-pair PCKs are summed
over the ranks (every pair's row comes from exactly one rank, the others add zeros) and
then averaged in pair order on every rank, so the scores, and the chosen set, are bit for
bit those of one process.  Rank 0 reads and writes the resume file.  A process alone is a
:class:`~scot.distributed.world.WorldOfOne` and runs the same code: one shard, sums over
itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .backbones import Backbone
from .config import PRESET_OPTIONS
from .datasets import Dataset
from .distributed.sharding import Sharding, images_per_shard
from .distributed.world import World, WorldOfOne
from .errors import ScotError
from .evaluation import mirror_keypoints, score_pair
from .features import NetworkView
from .io import read_json
from .model import SCOT
from .pck import ALPHAS, HEADLINE_ALPHA, pair_pck
from .presets import FILE_OPTIONS
from .writing import atomic_write_json

if TYPE_CHECKING:
    from .config import SCOTConfig
    from .datasets import Pair

Key = tuple[int, ...]
SEARCHABLE = FILE_OPTIONS
"""The options ``--try`` may vary: those a preset file records."""
PREPARE_AHEAD = 16  # images loaded at once by prepare (those of one resized size share their network passes)


def _key(ids: Sequence[int], options: dict[str, Any] | None = None) -> str:
    text = ",".join(str(i) for i in sorted(ids))
    return text + "".join(f" {k}={_shown(v)}" for k, v in sorted((options or {}).items()))


def _shown(value: Any) -> str:
    """An option value as ``--try`` writes it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class Evaluated:
    ids: Key
    pck: dict[str, float]  # alpha -> mean over pairs, percent
    seconds: float
    options: dict[str, Any] = field(default_factory=dict)  # the tried options' values, where not the search's own

    @property
    def score(self) -> float:
        return self.pck[f"{HEADLINE_ALPHA:.2f}"]


@dataclass
class LayerSearch:
    """State of one beam search; see :func:`search_layers`."""

    model: SCOT
    dataset: Dataset
    thres: str
    candidate_ids: list[int]
    resume_file: Path | None = None
    settings: dict = field(default_factory=dict)
    views: dict = field(default_factory=dict)
    done: dict[str, Evaluated] = field(default_factory=dict)
    models: dict[str, SCOT] = field(default_factory=dict)
    group: World = field(default_factory=WorldOfOne)
    """The processes sharing the search (a process alone by default)."""
    sharding: Sharding | None = None
    """The split of the pairs over the processes (:meth:`split`)."""

    def split(self) -> Sharding:
        """The split of the pairs over the processes by image and estimated work, one pair
        per unit (:meth:`Sharding.agree`, made on the first call, at the same point on
        every process); a process alone keeps them all, in list order."""
        if self.sharding is None:
            self.sharding = Sharding.agree(self.group, self.dataset, 1)
        return self.sharding

    @property
    def shard(self) -> list[int]:
        """Positions in ``dataset.pairs`` this process scores (all of them, in order, for a process alone)."""
        return self.split().shards[self.group.rank]

    @property
    def own_pairs(self) -> list[Pair]:
        """The pairs this process describes and scores."""
        return [self.dataset.pairs[i] for i in self.shard]

    def read_resume(self) -> dict[str, Any]:
        """The scores the resume file holds (``key -> {ids, pck, seconds}``), checked against the settings."""
        if self.resume_file is None or not self.resume_file.is_file():
            return {}
        data = read_json(self.resume_file, str(self.resume_file), option="resume_file")
        if not isinstance(data, dict) or not isinstance(data.get("evaluated", {}), dict):
            raise ScotError(f"{self.resume_file} is not a search's resume file", option="resume_file")
        if data.get("settings") != self.settings:
            raise ScotError(f"{self.resume_file} belongs to a search with other settings; use another file",
                            option="resume_file")
        return data.get("evaluated", {})

    def load_resume(self) -> None:
        """Take the resume file's scores (under torchrun rank 0 reads it and every rank gets them)."""
        evaluated = self.group.decide("resume file", self.read_resume)
        for key, rec in evaluated.items():
            self.done[key] = Evaluated(tuple(rec["ids"]), rec["pck"], rec["seconds"], rec.get("options", {}))

    def save_resume(self) -> None:
        if self.resume_file is None or self.group.rank != 0:
            return
        atomic_write_json(self.resume_file, {
            "settings": self.settings,
            "evaluated": {k: {"ids": list(e.ids), "pck": e.pck, "seconds": e.seconds, "options": e.options}
                          for k, e in self.done.items()},
        })

    def model_for(self, options: dict[str, Any]) -> SCOT:
        """The search's model with ``options`` changed (sharing its backbone)."""
        key = _key((), options)
        if key not in self.models:
            self.models[key] = (SCOT(self.model.config.replace(**options), backbone=self.model.backbone)
                                if options else self.model)
        return self.models[key]

    def view(self, path: Path, flip: bool, model: SCOT | None = None, ids: Sequence[int] | None = None) -> NetworkView:
        """One image's maps (every candidate id), or with another ``model`` whose network
        passes differ (its feature scales), the maps of ``ids`` that model gives."""
        if model is None or model.config.feature_scales == self.model.config.feature_scales:
            key: tuple = (str(path), flip)
            model, ids = self.model, self.candidate_ids
        else:
            key = (str(path), flip, model.config.feature_scales, tuple(sorted(ids or ())))
        if key not in self.views:
            self.views[key] = model.extractor.view(path, ids, flip=flip).to("cpu")  # host memory
        return self.views[key]

    def prepare(self, on_image: Callable[[int, int], None] | None = None) -> None:
        """Run the backbone once on every image of this process's pairs.

        ``on_image(done, total)`` follows each image; under torchrun both count the images
        of every rank (as of the last look at the others).
        """
        seen: dict[tuple[str, bool], None] = {}
        for p in self.own_pairs:
            seen.setdefault(p.src_key)
            seen.setdefault(p.trg_key)
        keys = list(seen)
        pair_keys = [(p.src_key, p.trg_key) for p in self.dataset.pairs]
        total = sum(images_per_shard(pair_keys, self.split().shards))
        for i, (path, flip) in enumerate(keys, start=1):
            if (path, flip) not in self.views:  # the next images of one size share the network passes
                ahead = [k for k in keys[i - 1 : i - 1 + PREPARE_AHEAD] if k not in self.views]
                for k, v in zip(ahead, self.model.extractor.views([Path(p) for p, _ in ahead], self.candidate_ids,
                                                                  flips=[f for _, f in ahead])):
                    self.views[k] = v.to("cpu")  # host memory
            self.group.set_progress(i)
            self.group.check()
            if on_image:
                on_image(self.group.progress()[0], total)

    def evaluate(self, ids: Sequence[int], options: dict[str, Any] | None = None) -> Evaluated:
        """PCK of one id set on the search pairs, with ``options`` changed from the search's
        configuration (cached across calls and runs)."""
        options = dict(options or {})
        key = _key(ids, options)
        if key in self.done:
            return self.done[key]
        t0 = time.perf_counter()
        model = self.model_for(options)
        hyper = {}
        rows: list[list[float]] = []
        mirrors = model.config.flip == "auto"  # sources are matched mirrored too
        for i in self.shard:
            pair = self.dataset.pairs[i]
            for k in (pair.src_key, pair.trg_key) + ((pair.src_mirror_key,) if mirrors else ()):
                if k not in hyper:
                    view = self.view(Path(k[0]), k[1], model, ids).to(model.device, ids)
                    hyper[k] = model.extractor.describe(view, ids)
            s, t = hyper[pair.src_key], hyper[pair.trg_key]
            if mirrors:
                s = dataclasses.replace(s, mirror=hyper[pair.src_mirror_key])
            src_kps, _, _ = pair.oriented(s.original_size[0], t.original_size[0])
            result = model.match(s, t, src_kps, keep_plan=False, check_bounds=False,
                                 mirror_keypoints=mirror_keypoints(model, pair, s.original_size[0]))
            rec = score_pair(pair, result, self.thres)
            rows.append([pair_pck(rec["dist"], a) for a in ALPHAS])
        rows = self._all_rows(key, rows)
        per_alpha = {f"{a:.2f}": [row[j] for row in rows] for j, a in enumerate(ALPHAS)}
        pck = {a: 100.0 * sum(v) / len(v) for a, v in per_alpha.items()}
        ev = Evaluated(tuple(sorted(ids)), pck, time.perf_counter() - t0, options)
        self.done[key] = ev
        self.save_resume()
        return ev

    def _all_rows(self, key: str, rows: list[list[float]]) -> list[list[float]]:
        """Every pair's row of PCKs, in pair order, from the rows of this rank's shard.

        Each rank writes its rows into a zero table of all pairs and the tables are summed
        (all_reduce): a row comes from one rank and gains only exact zeros from the others.
        """
        table = torch.zeros(len(self.dataset.pairs), len(ALPHAS), dtype=torch.float64)
        if self.shard:
            table[torch.tensor(self.shard)] = torch.tensor(rows, dtype=torch.float64)
        table = self.group.all_reduce_sum(f"ids {key}", table.to(self.group.device)).cpu()
        return table.tolist()


def ids_of_stride(backbone: Backbone, stride: int, side: int) -> list[int]:
    """The hyperpixel ids of ``backbone`` whose stride (jump) is ``stride`` on a ``side`` square image."""
    ids = [i for i in range(backbone.num_ids) if backbone.geometry(i, side, side).jump == stride]
    if not ids:
        strides = sorted({backbone.geometry(i, side, side).jump for i in range(backbone.num_ids)})
        raise ScotError(f"{backbone.name} has no layer of stride {stride} (strides: {strides})", option="grid_stride")
    return ids


def check_beam(beam: int, max_size: int) -> None:
    """Raise a ScotError naming ``beam`` or ``max_size`` unless both are at least 1."""
    if beam < 1 or max_size < 1:
        raise ScotError(f"must be at least 1, got {min(beam, max_size)}", option="beam" if beam < 1 else "max_size")


def search_layers(
    model: SCOT,
    dataset: Dataset,
    *,
    thres: str,
    base_ids: Sequence[int],
    candidate_ids: Sequence[int],
    beam: int = 3,
    max_size: int = 6,
    resume_file: Path | None = None,
    on_image: Callable[[int, int], None] | None = None,
    on_depth: Callable[[int, int], None] | None = None,
    on_eval: Callable[[Evaluated, Evaluated], None] | None = None,
    group: World | None = None,
    on_sharding: Callable[[Sharding], None] | None = None,
    tries: dict[str, list[Any]] | None = None,
    on_options: Callable[[int], None] | None = None,
) -> list[Evaluated]:
    """Beam search; returns every evaluated set, best first.

    ``tries`` (option -> values, :func:`parse_tries`) then scores the best set under every
    combination of those values and the configuration's own (``on_options(n)`` first,
    with the number of combinations; ``on_eval`` after each).

    ``on_eval(evaluated, best_so_far)`` follows every scored set.  Under torchrun every
    rank of ``group`` calls this with the same arguments and gets the same result (see
    the module's docstring); ``on_sharding(sharding)`` tells rank 0 how the pairs are
    split over the processes.  ``group`` None: this process alone.

    Depth 1 scores each base id alone; depth k extends each of the ``beam`` best sets of
    depth k-1 by one candidate id deeper than its base, up to ``max_size`` ids.
    """
    check_beam(beam, max_size)
    bb = model.backbone
    all_ids = sorted(set(base_ids) | set(candidate_ids))
    bb.check_ids(all_ids)
    settings = {
        "backbone": bb.name, "weights": bb.weights_source, "dataset": dataset.name, "split": dataset.split,
        "pairs": [p.pair_id for p in dataset.pairs], "thres": thres,
        "config": {k: v for k, v in model.config.to_dict().items() if k not in ("hyperpixel_ids", "device")},
    }
    world: World = group if group is not None else WorldOfOne()
    search = LayerSearch(model, dataset, thres, all_ids, resume_file, settings, group=world)
    sharding = search.split()
    if on_sharding is not None and world.rank == 0:
        on_sharding(sharding)
    search.load_resume()
    search.prepare(on_image)

    frontier: list[Key] = [(b,) for b in sorted(set(base_ids))]
    best: Evaluated | None = None
    for depth in range(1, max_size + 1):
        if on_depth:
            on_depth(depth, len(frontier))
        scored = []
        for ids in frontier:
            ev = search.evaluate(ids)
            scored.append(ev)
            if best is None or ev.score > best.score:
                best = ev
            if on_eval:
                on_eval(ev, best)
        scored.sort(key=lambda e: (-e.score, len(e.ids), e.ids))
        keep = [e.ids for e in scored[:beam]]
        nxt: list[Key] = []
        for ids in keep:
            for c in candidate_ids:
                if c > min(ids) and c not in ids:
                    new = tuple(sorted(ids + (c,)))
                    if new not in nxt:
                        nxt.append(new)
        if not nxt:
            break
        frontier = nxt
    if tries:
        assert best is not None
        combos = option_combinations(model.config, tries)
        if on_options:
            on_options(len(combos))
        for options in combos:
            ev = search.evaluate(best.ids, options)
            if ev.score > best.score:
                best = ev
            if on_eval:
                on_eval(ev, best)
    return sorted(search.done.values(), key=lambda e: (-e.score, len(e.ids), e.ids, _key((), e.options)))


def parse_tries(texts: Sequence[str]) -> dict[str, list[Any]]:
    """``--try NAME=VALUE`` texts as option -> values, each value checked as the option is.

    NAME is one of :data:`SEARCHABLE` (``-`` may stand for ``_``); VALUE as on the command
    line: ``on``/``off`` for a switch, ``1,1.5,2`` for feature scales.  A value given twice
    counts once.
    """
    from .config import check_option, kind

    out: dict[str, list[Any]] = {}
    for text in texts:
        name, sep, raw = text.partition("=")
        name, raw = name.strip().replace("-", "_"), raw.strip()
        if not sep or not name or not raw:
            raise ScotError(f"'{text}': expected NAME=VALUE, e.g. transfer=mean", option="try")
        if name not in SEARCHABLE:
            raise ScotError(f"'{name}' cannot be tried; the options a preset records are {', '.join(SEARCHABLE)}",
                            option="try")
        value: Any = raw
        try:
            if kind(name) == "bool":
                switch = {"on": True, "true": True, "yes": True, "off": False, "false": False, "no": False}
                if raw.lower() not in switch:
                    raise ScotError(f"'{raw}' is not on or off")
                value = switch[raw.lower()]
            elif kind(name) in ("float", "int"):
                try:
                    value = float(raw)
                except ValueError:
                    raise ScotError(f"'{raw}' is not a number") from None
            value = check_option(name, value)
        except ScotError as exc:
            raise ScotError(f"'{text}': {exc.message}", option="try") from None
        if value not in out.setdefault(name, []):
            out[name].append(value)
    return out


def option_combinations(config: SCOTConfig, tries: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the tried values and ``config``'s own, as the changes from
    ``config`` (its own setting, ``{}``, first)."""
    names = sorted(tries)
    axes = [[getattr(config, n)] + [v for v in tries[n] if v != getattr(config, n)] for n in names]
    return [{n: v for n, v, own in zip(names, values, (getattr(config, n) for n in names)) if v != own}
            for values in itertools.product(*axes)]


@dataclass
class SearchPlan:
    """Where a search starts and what it may add."""

    thres: str
    base_ids: list[int]
    candidates: list[int]
    backbone: str

    def describe(self, dataset: Dataset) -> str:
        return (f"search on {dataset.name} {dataset.split}: {len(dataset)} pairs, {len(dataset.image_keys())} images | "
                f"{self.backbone} | base ids {self.base_ids} | PCK threshold {self.thres}")


def plan_search(model: SCOT, dataset: Dataset, thres: str | None, grid_stride: int, base_ids: str | None,
                candidates: str | None) -> SearchPlan:
    """The search's base ids (``base_ids``, else the ids of stride ``grid_stride``), the ids
    it may add (``candidates``, else every id) and its PCK threshold (else the dataset's)."""
    from .config import parse_hyperpixel_ids

    if thres is not None and thres not in ("img", "bbox"):
        raise ScotError(f"must be img or bbox, got '{thres}'", option="thres")
    bb = model.backbone
    side = model.config.image_side
    bases = (list(parse_hyperpixel_ids(base_ids, option="base_ids") or ()) if base_ids
             else ids_of_stride(bb, grid_stride, side))
    cands = list(parse_hyperpixel_ids(candidates, option="candidates") or ()) if candidates else list(range(bb.num_ids))
    bb.check_ids(bases, option="base_ids")
    bb.check_ids(cands, option="candidates")
    return SearchPlan(thres or dataset.default_thres, bases, cands, bb.name)


def _label(e: Evaluated) -> str:
    return str(list(e.ids)) + _key((), e.options)


def format_results(results: Sequence[Evaluated], top: int = 5) -> str:
    """The number of sets scored, and the best ``top`` with their PCK at every alpha."""
    lines = [f"{len(results)} sets evaluated; best: {_label(results[0])} PCK@0.10 {results[0].score:.2f}%"]
    for e in results[:top]:
        lines.append(f"  {_label(e):<32} " + "  ".join(f"@{a}: {v:.2f}" for a, v in e.pck.items()))
    return "\n".join(lines)


def write_preset(path: Path, results: Sequence[Evaluated], model: SCOT, dataset: Dataset, thres: str,
                 command: str, top: int = 10) -> dict:
    """The preset JSON that ``--preset-file`` loads (best set first)."""
    bb = model.backbone
    best = results[0]
    g = bb.geometry(best.ids[0], model.config.image_side, model.config.image_side)
    config = model.config.replace(**best.options).to_dict()  # the options the best set was scored with
    doc = {
        "backbone": bb.name,
        "hyperpixel_ids": list(best.ids),
        "exp2": config["exp2"],
        "options": {k: v for k, v in config.items() if k in PRESET_OPTIONS},
        "grid_stride": g.jump,
        "metric": f"PCK@{HEADLINE_ALPHA:.2f}, mean over pairs (%)",
        "dataset": {"name": dataset.name, "split": dataset.split, "pairs": len(dataset), "thres": thres},
        "found_with": command,
        "results": [{"hyperpixel_ids": list(e.ids), "pck": e.pck, "seconds": round(e.seconds, 2),
                     **({"options": e.options} if e.options else {})} for e in results[:top]],
        "evaluated_sets": len(results),
    }
    atomic_write_json(path, doc)
    return doc
