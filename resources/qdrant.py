"""Qdrant: local mode on a path (tiny mode, no server) or a server by URL (production)."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator, Optional

import dagster as dg
from pydantic import Field


class QdrantResource(dg.ConfigurableResource):
    url: Optional[str] = Field(default=None, description="Qdrant server URL; None = local mode.")
    path: Optional[str] = Field(default=None, description="Local-mode storage directory.")
    api_key: Optional[str] = Field(default=None, description="Server API key (set via EnvVar).")
    lock_timeout_s: float = Field(
        default=120.0,
        description="Local mode allows one process at a time: how long to wait for the lock.",
    )

    @contextlib.contextmanager
    def client(self) -> Iterator["object"]:
        """A short-lived client. Local mode locks its directory per process, so steps, the
        serving process and checks take turns instead of holding it open."""
        from ossa_assets.lib.embeddings import open_qdrant

        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                c = open_qdrant(url=self.url, path=self.path, api_key=self.api_key)
                break
            except RuntimeError as e:  # "Storage folder ... is already accessed by another instance"
                if self.url or "already accessed" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            yield c
        finally:
            c.close()
