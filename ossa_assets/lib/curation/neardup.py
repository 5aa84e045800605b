"""Near-duplicate detection: MinHash signatures over word shingles, grouped with LSH.

Real corpora copy documents between repositories with small edits (a starter workflow vendored
with a different branch name, a spec fixture with one field renamed). Exact hashing misses
those; MinHash estimates Jaccard similarity of 5-word shingles in constant space per document
and LSH finds candidate pairs without comparing all pairs.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

NUM_PERM = 128
SCHEME = "affine64"  # datasketch >= 2.0 needs the scheme named to rebuild a MinHash from cached values
SHINGLE = 5
MAX_SHINGLES = 50_000  # a 13 MB NodeSet has millions; its first 50k shingles identify it well enough
_WORD = re.compile(r"[A-Za-z0-9_]+|[^\sA-Za-z0-9_]")


def signature(text: str, seed: int = 1) -> np.ndarray:
    """MinHash hash values (uint64[NUM_PERM]) of a text's word shingles."""
    from datasketch import MinHash

    words = _WORD.findall(text.lower())
    m = MinHash(num_perm=NUM_PERM, seed=seed, scheme=SCHEME)
    if len(words) < SHINGLE:
        shingles = [" ".join(words).encode()]
    else:
        n = min(len(words) - SHINGLE + 1, MAX_SHINGLES)
        shingles = [" ".join(words[i : i + SHINGLE]).encode() for i in range(n)]
    m.update_batch(shingles)
    return m.hashvalues.copy()


def clusters(
    keys: Sequence[str], signatures: Iterable[np.ndarray], threshold: float = 0.85
) -> list[list[str]]:
    """Groups of keys whose estimated Jaccard similarity reaches `threshold` (connected
    components of LSH candidate pairs confirmed by their signature similarity)."""
    from datasketch import MinHash, MinHashLSH

    sigs = list(signatures)
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    mins = {}
    for k, hv in zip(keys, sigs):
        m = MinHash(num_perm=NUM_PERM, hashvalues=hv, scheme=SCHEME)
        mins[k] = m
        lsh.insert(k, m)
    parent = {k: k for k in keys}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for k in keys:
        for other in lsh.query(mins[k]):
            if other != k and mins[k].jaccard(mins[other]) >= threshold:
                a, b = find(k), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(find(k), []).append(k)
    return [sorted(g) for g in groups.values() if len(g) > 1]
