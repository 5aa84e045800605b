"""Embedding + indexing throughput against bare encoding, and incremental re-indexing against a
full index build, on what the docs collection holds for a real corpus (../shared/corpora by
default): one record per unit of every curated document (vector_index's own `index_records`).

Per repetition and per embedding width (384: the packaged MiniLM; 1536: the docs model's shape,
MiniLM + Dense, the widest vectors Qdrant stores here):
  encode  SentenceTransformer.encode on every document text (batch 64, normalised)
  full    sync_collection into an empty local-mode Qdrant collection (embed + upsert + payload)
  incr    1 % of the records edited, then sync_collection again (embeds the edits, deletes
          the old versions)
and prints medians: index throughput / encode throughput (target >= 0.9) and incremental / full
time (target <= 0.05).

  python bench/bench_embeddings.py [--corpus DIR] [--repeat 3] [--changed 0.01] [--seq 128] [--limit 3000]

--limit takes an evenly spread subset of the records (the full corpus has ~11,000 units: about
four minutes per encode on 2 cores).

Each target is printed as `TARGET <what>: <target>; measured <x> -> MET | MISSED` (bench/verdict.py);
the bench exits 1 if any target is MISSED.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from verdict import Verdicts  # noqa: E402

from ossa_assets.lib import embedding_models as em  # noqa: E402
from ossa_assets.lib import embeddings as lib  # noqa: E402


def curated_records(corpus_root: Path, work: Path, limit: int) -> list[lib.IndexRecord]:
    from types import SimpleNamespace

    import bench_curation

    from ossa_assets.embeddings.assets import index_records

    _, results, _ = bench_curation.run(corpus_root, work)
    corpora = {d: SimpleNamespace(path=str(work / "out" / d), data_version="v1") for d in results}
    # identical texts share a point: keep one record per text so an edit maps to one new point
    # and one deleted point
    records = list({r.key: r for r in index_records("docs", corpora)}.values())
    step = max(1, len(records) // limit) if limit else 1
    return records[::step][:limit] if limit else records


def edit(records: list[lib.IndexRecord], fraction: float, seed: int) -> tuple[list[lib.IndexRecord], int]:
    idx = set(random.Random(seed).sample(range(len(records)), max(1, round(len(records) * fraction))))
    out = [lib.IndexRecord(text=r.text + f" (revised {seed})", payload=r.payload) if i in idx else r
           for i, r in enumerate(records)]
    return out, len(idx)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpora"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--changed", type=float, default=0.01)
    ap.add_argument("--seq", type=int, default=128, help="max_seq_length (tiny profile: 128)")
    ap.add_argument("--dims", default="384,1536")
    ap.add_argument("--limit", type=int, default=3000, help="records to index (0 = all)")
    args = ap.parse_args()
    verdicts = Verdicts()
    with tempfile.TemporaryDirectory(prefix="ossa-bench-emb-") as tmp:
        t = time.perf_counter()
        records = curated_records(Path(args.corpus), Path(tmp) / "curation", args.limit)
        print(f"{len(records)} records (document units) from {args.corpus} ({time.perf_counter() - t:.0f}s to curate)")
        for dim in (int(d) for d in args.dims.split(",")):
            model = (lib.load_embedder(None, args.seq) if dim == 384
                     else em.build_model(lib.packaged_minilm_path(), dim, args.seq, device="cpu"))
            texts = [r.text for r in records]
            model.encode(texts[:64], batch_size=64)  # warm-up
            enc, full, incr = [], [], []
            for i in range(args.repeat):
                t = time.perf_counter()
                model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
                enc.append(time.perf_counter() - t)
                client = lib.open_qdrant(path=str(Path(tmp) / f"qdrant-{dim}-{i}"))
                try:
                    res = lib.sync_collection(client, model, "bench", records, "m1")
                    full.append(res.seconds)
                    changed, n = edit(records, args.changed, seed=i)
                    res2 = lib.sync_collection(client, model, "bench", changed, "m1")
                    incr.append(res2.seconds)
                    assert res2.embedded == n and res2.deleted == n and res2.points == res.points
                finally:
                    client.close()
                print(f"[{dim}-d {i + 1}/{args.repeat}] encode {enc[-1]:.1f}s, embed+index {full[-1]:.1f}s "
                      f"(of which encoding {res.embed_seconds:.1f}s; {res.points} points), "
                      f"{n} edited -> re-index {incr[-1]:.2f}s")
            e, f, r = statistics.median(enc), statistics.median(full), statistics.median(incr)
            print(f"\n{dim}-d: encode {len(texts) / e:.1f} texts/s, embed+index {len(texts) / f:.1f} texts/s: "
                  f"throughput ratio {e / f:.3f}")
            print(f"{dim}-d: re-index after {args.changed:.0%} changed {r:.2f}s vs full {f:.1f}s: ratio {r / f:.3f}")
            verdicts.at_least(f"{dim}-d embed+index / bare encode throughput (median)", e / f, 0.9)
            verdicts.at_most(f"{dim}-d re-index after {args.changed:.0%} changed / full index (median)", r / f, 0.05)
            print()
    return verdicts.report()


if __name__ == "__main__":
    sys.exit(main())
