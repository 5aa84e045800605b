"""Shared pieces of the graph store: names, validation patterns, the backend protocol."""

from __future__ import annotations

import re
from typing import Any, Protocol

KIND_RE = re.compile(r"^[A-Z][A-Za-z]{1,40}$")
REL_RE = re.compile(r"^[A-Z_]{2,40}$")
PROP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
NEO4J_SCHEMA = "CREATE CONSTRAINT artifact_id IF NOT EXISTS FOR (n:Artifact) REQUIRE n.id IS UNIQUE"

Row = list[Any]


class GraphBackend(Protocol):
    batch_size: int  # rows (or ids) per statement
    max_batch_bytes: int | None  # JSON size of one statement's rows; None: no limit

    def read(self, query: str, params: dict[str, Any]) -> list[Row]: ...
    def write(self, query: str, params: dict[str, Any]) -> list[Row]: ...
    def close(self) -> None: ...

