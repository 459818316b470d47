"""The per-image cache: least recently used entries leave first, under a byte budget."""

from __future__ import annotations

from scot.cache import LRUCache


def test_evicts_least_recently_used_under_the_budget():
    cache: LRUCache[bytes] = LRUCache(budget_bytes=10, size_of=len)
    for key in "abc":
        cache.put(key, b"xxx")  # 9 bytes
    assert cache.get("a") == b"xxx"  # a is now the most recent
    cache.put("d", b"xxx")  # 12 > 10: the least recent (b) leaves
    assert cache.get("b") is None and cache.get("c") == b"xxx" and cache.get("a") == b"xxx"
    assert cache.bytes == 9 and len(cache) == 3
    cache.put("e", b"xxxxxxxx")  # 8 bytes: d, c, a leave in that order until it fits
    assert len(cache) == 1 and cache.bytes == 8 and cache.get("e") is not None


def test_an_entry_larger_than_the_budget_still_stays_alone():
    cache: LRUCache[bytes] = LRUCache(budget_bytes=4, size_of=len)
    cache.put("a", b"x")
    cache.put("big", b"0123456789")
    assert len(cache) == 1 and cache.get("big") is not None and cache.get("a") is None


def test_get_or_compute_counts_hits_and_misses_and_computes_once():
    cache: LRUCache[int] = LRUCache(budget_bytes=100, size_of=lambda v: 1)
    calls = []

    def compute() -> int:
        calls.append(1)
        return 7

    assert cache.get_or_compute("k", compute) == 7 and cache.get_or_compute("k", compute) == 7
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)


def test_replacing_a_key_updates_its_size():
    cache: LRUCache[bytes] = LRUCache(budget_bytes=100, size_of=len)
    cache.put("a", b"xxxx")
    cache.put("a", b"x")
    assert cache.bytes == 1 and len(cache) == 1
