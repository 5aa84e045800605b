"""Response cache for the serving process: in-process LRU by default, Redis by URL in production.

Keys include the model version, so a new deployment never serves an old model's cached answer.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from typing import Any, Optional


def cache_key(model_version: str, route: str, request: dict[str, Any]) -> str:
    body = json.dumps(request, sort_keys=True)
    return "ossa:resp:" + hashlib.sha256(f"{model_version}|{route}|{body}".encode()).hexdigest()


class MemoryCache:
    def __init__(self, max_items: int = 4096):
        self._data: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._max = max_items
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[dict[str, Any]]:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return json.loads(self._data[key])

    def set(self, key: str, value: dict[str, Any], ttl_s: int = 3600) -> None:
        with self._lock:
            self._data[key] = json.dumps(value)
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)


class RedisCache:
    def __init__(self, url: str):
        import redis

        self._r = redis.Redis.from_url(url, socket_timeout=2)
        self._r.ping()  # fail at start-up, not on the first request

    def get(self, key: str) -> Optional[dict[str, Any]]:
        raw = self._r.get(key)
        return json.loads(raw) if raw else None

    def set(self, key: str, value: dict[str, Any], ttl_s: int = 3600) -> None:
        self._r.set(key, json.dumps(value), ex=ttl_s)


def make_cache(url: Optional[str]):
    return RedisCache(url) if url else MemoryCache()
