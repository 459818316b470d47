"""A byte-budgeted LRU cache of per-image hyperpixels.

Benchmarks reuse each image in many pairs (PF-WILLOW: 900 pairs over 100 images), so an
image's features, CAM and boxes are computed once and kept while the budget allows.  The
pair lists are grouped by category, so a budget of a few hundred MB already gives near
perfect reuse; memory stays bounded however long the pair list is.

**On a GPU** the cached images keep their matching operands on the device, in the same
memory as the N x M workspaces of :meth:`SCOT.match_batch <scot.SCOT.match_batch>`, which
sizes its batches from the device's free memory (so it sees what the cache holds).  The
byte count of a value (``size_of``, e.g. :meth:`Hyperpixels.nbytes
<scot.hyperpixels.Hyperpixels.nbytes>`) therefore counts against the budget wherever it
lives, and entries living on a CUDA device are also kept below :data:`DEVICE_SHARE` of
that device's memory, so a budget larger than the GPU (the default 2 GB on a small card)
cannot crowd the matching out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import torch

from .device import total_memory

DEVICE_SHARE = 0.25
"""The largest share of a GPU's memory that cached values living on it may take."""

V = TypeVar("V")


class LRUCache(Generic[V]):
    """Values by key, evicting the least recently used while their total size exceeds the budget.

    Args:
        budget_bytes: the total ``size_of`` the cache may hold (one entry always stays).
        size_of: bytes of a value, measured when it is put.
    """

    def __init__(self, budget_bytes: int, size_of: Callable[[V], int]) -> None:
        self.budget = int(budget_bytes)
        self.size_of = size_of
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[0]

    def limit(self, value: V) -> int:
        """The byte budget that holds once ``value`` is in: the cache's, and for a value with
        a ``device`` on CUDA at most :data:`DEVICE_SHARE` of that device's memory."""
        device = getattr(value, "device", None)
        if isinstance(device, torch.device) and device.type == "cuda":
            total = total_memory(device)
            if total is not None:
                return min(self.budget, int(DEVICE_SHARE * total))
        return self.budget

    def put(self, key: Hashable, value: V) -> None:
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        size = self.size_of(value)
        self._items[key] = (value, size)
        self.bytes += size
        limit = self.limit(value)
        while self.bytes > limit and len(self._items) > 1:
            _, (_, old) = self._items.popitem(last=False)
            self.bytes -= old

    def __len__(self) -> int:
        return len(self._items)

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The cached value of ``key``, or ``compute()`` put under it."""
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value
