"""TtlCache: entries expire after their time and the cache stays within its bound."""

from __future__ import annotations

from tether.ttlcache import TtlCache


def test_entries_expire_and_the_oldest_go_first() -> None:
    now = [0.0]
    cache: TtlCache[str, int] = TtlCache(ttl_s=5, max_entries=2, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)
    now[0] = 5.0
    assert cache.get("a") is None
    assert cache.get("c") is None
