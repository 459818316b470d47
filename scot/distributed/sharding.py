"""How the pairs of a run are split over ranks: pairs that share images stay on one rank.

Pure functions of the pair list (no process group): :func:`shard_by_images` splits work
items by the images they use, so that each image is described on as few ranks as
possible and every rank's image cache keeps working; :func:`pair_costs` estimates each
pair's matching work from its images' shapes; :class:`Sharding` is the split that
``scot eval`` (batches of pairs) and ``scot search-layers`` (single pairs) use.  A world
of one process gets one shard holding everything, in list order.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..datasets import Dataset
from ..image import image_size

if TYPE_CHECKING:
    from .world import World


def shard_by_images(items: Sequence[Sequence[Hashable]], world_size: int, weights: Sequence[float] | None = None,
                    image_cost: float = 1.0) -> list[list[int]]:
    """Split work items over ranks so that items sharing an image land on the same rank.

    An item is the list of image keys it uses: a pair's two images, or every image of a
    batch of pairs.  Images are numbered in order of first appearance.  The items are
    ordered by connected component of the image graph (components in order of their
    first item), and inside a component by the highest-numbered image they use, then the
    lowest: the items among the first k images of a component come before those that
    bring in image k + 1, so every prefix of a component uses as few images as it can.
    That order is cut into ``world_size`` runs of (almost) equal work.  A cut may move by
    up to a quarter of a run's work to where fewer images are used on both of its sides,
    one such image costing ``image_cost`` times the mean work of an item; between two
    components none is.

    The result depends only on the arguments, so a restarted or resumed launch gets the
    same shards.

    Args:
        items: the image keys of each item, in list order (at least one key each).
        world_size: number of ranks (>= 1).
        weights: the work of each item (> 0); None: 1 each.
        image_cost: the work of describing one image, in mean items (1: as much as a pair).

    Returns:
        ``world_size`` lists of positions into ``items``, each ascending; together they
        hold every position once.  With fewer items than ranks some lists are empty.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    n = len(items)
    number: dict[Hashable, int] = {}
    parent: list[int] = []

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    uses: list[list[int]] = []
    for keys in items:
        numbers = []
        for key in keys:
            if key not in number:
                number[key] = len(number)
                parent.append(number[key])
            numbers.append(number[key])
        uses.append(numbers)
        for other in numbers[1:]:
            a, b = root(numbers[0]), root(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    component = [root(u[0]) for u in uses]
    first_item: dict[int, int] = {}
    for i, c in enumerate(component):
        first_item.setdefault(c, i)
    order = sorted(range(n), key=lambda i: (first_item[component[i]], max(uses[i]), min(uses[i]), i))

    # shared[c]: images used both before and after a cut at c by the items of the component it splits
    shared = [0] * (n + 1)
    start = 0
    while start < n:
        stop = start
        while stop < n and component[order[stop]] == component[order[start]]:
            stop += 1
        left, seen = [], set()
        for k in range(start, stop):
            seen.update(uses[order[k]])
            left.append(len(seen))
        right, seen = [0] * (stop - start), set()
        for k in range(stop - 1, start - 1, -1):
            seen.update(uses[order[k]])
            right[k - start] = len(seen)
        for c in range(start + 1, stop):
            shared[c] = left[c - 1 - start] + right[c - start] - len(seen)
        start = stop

    done = [0.0]  # done[c]: the work of order[:c]
    for i in order:
        done.append(done[-1] + (1.0 if weights is None else float(weights[i])))
    total = done[-1]
    reach = total / (4 * world_size)
    per_image = image_cost * total / n if n else 0.0
    cuts = [0]
    for k in range(1, world_size):
        ideal = k * total / world_size
        window = [c for c in range(cuts[-1], n + 1) if abs(done[c] - ideal) <= reach] or [
            min(range(cuts[-1], n + 1), key=lambda c: abs(done[c] - ideal))]
        cuts.append(min(window, key=lambda c: (abs(done[c] - ideal) + per_image * shared[c], abs(done[c] - ideal), c)))
    cuts.append(n)
    return [sorted(order[a:b]) for a, b in zip(cuts, cuts[1:])]


def round_robin(n: int, world_size: int) -> list[list[int]]:
    """Positions 0..n-1 dealt to ``world_size`` ranks in turn (rank r gets r, r + W, ...)."""
    return [list(range(r, n, world_size)) for r in range(world_size)]


def images_per_shard(items: Sequence[Sequence[Hashable]], shards: Sequence[Sequence[int]]) -> list[int]:
    """How many distinct images each shard's items use (what each rank has to describe)."""
    return [len({key for i in shard for key in items[i]}) for shard in shards]


@dataclass
class Sharding:
    """How a launch splits a dataset's pairs over its ranks.

    Attributes:
        batches: per rank, its batches in order, each a list of positions into ``dataset.pairs``.
        images: per rank, the distinct images of its shard (what it describes).
        round_robin_images: the same count for a round-robin split (rank r: pairs r, r + W, ...).
        work: per rank, the estimated matching work of its shard (:func:`pair_costs`).
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

    @classmethod
    def agree(cls, world: World, dataset: Dataset, batch_size: int = 1) -> Sharding:
        """The split of ``dataset`` that every process of ``world`` uses.

        Rank 0 reads the images' sizes (:func:`pair_costs`) and every rank plans from its
        estimates, so all get the same split; a world of one needs no estimate: its one
        shard holds every batch, in list order.
        """
        costs = world.decide("pair costs", lambda: pair_costs(dataset)) if world.world_size > 1 else None
        return cls.plan(dataset, world.world_size, batch_size, costs)

    @property
    def shards(self) -> list[list[int]]:
        """Per rank, the positions into ``dataset.pairs`` it scores (ascending)."""
        return [[i for chunk in rank for i in chunk] for rank in self.batches]

    @property
    def world_size(self) -> int:
        return len(self.batches)

    def describe(self) -> str:
        """One line: pairs and images per rank, against a round-robin split."""
        return (f"sharded by image over {self.world_size} ranks: "
                f"pairs per rank {_listed(len(s) for s in self.shards)} | images per rank {_listed(self.images)} "
                f"(round-robin split: {_listed(self.round_robin_images)})")

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
