"""The production response cache against the real Redis on 127.0.0.1:6379.

Apart from the Postgres tests on purpose: a machine without Postgres still tests Redis.
"""

from __future__ import annotations

import uuid

import pytest


def _redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=2).ping())
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")


def test_redis_response_cache_roundtrip():
    from ossa_assets.lib.cache import cache_key, make_cache

    cache = make_cache("redis://127.0.0.1:6379/0")
    assert type(cache).__name__ == "RedisCache", "a Redis URL must give the Redis cache"
    key = cache_key(f"v-{uuid.uuid4().hex}", "/api-model/v1", {"prompt": "x", "max_new_tokens": 3})
    assert cache.get(key) is None
    cache.set(key, {"completion": "abc"}, ttl_s=30)
    assert cache.get(key) == {"completion": "abc"}
    other_version = cache_key("another", "/api-model/v1", {"prompt": "x", "max_new_tokens": 3})
    assert cache.get(other_version) is None
