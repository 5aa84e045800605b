"""Curating a real corpus: throughput, and incremental re-curation against a full one.

For each repetition, on a private copy of the corpus (../shared/corpora by default):
  full   every source curated with an empty cache, then each domain assembled and saved
  incr   1 % of the files changed (a trailing newline: same content, new bytes), then the same
         work again with the cache of the full run
and prints documents/s of the full run, the incremental/full time ratio (target <= 0.10), and
per domain the documents in and out with the quarantine reasons.

  python bench/bench_curation.py [--corpus DIR] [--repeat N] [--changed 0.01]

Each target is printed as `TARGET <what>: <target>; measured <x> -> MET | MISSED` (bench/verdict.py);
the bench exits 1 if any target is MISSED.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from verdict import Verdicts  # noqa: E402

from ossa_assets.lib.curation import corpus, pipeline  # noqa: E402
from ossa_assets.lib.curation.sources import SourceSpec, list_files, manifest_licenses  # noqa: E402

SUBDIRS = {"api_spec": "openapi", "industrial_protocol": "opcua", "devops_workflow": "cicd"}


def run(corpus_root: Path, work: Path) -> tuple[float, dict[str, corpus.CorpusResult], int]:
    t = time.perf_counter()
    results = {}
    files_total = 0
    for domain, sub in SUBDIRS.items():
        spec = SourceSpec(name=sub, domain=domain, kind="local", path=str(corpus_root / sub),
                          license_manifest={"path": str(corpus_root / "manifest.jsonl"), "path_field": "file",
                                            "license_field": "license", "strip_prefix": f"{sub}/", "optional": True})
        files = list_files(spec, work)
        files_total += len(files)
        src = pipeline.curate_source(spec, files, work / "cache", pipeline.CurationSettings(),
                                     manifest_licenses(spec, None))
        res = corpus.assemble(domain, [src], validation_fraction=0.1, test_fraction=0.05, near_dup_threshold=0.85,
                              config={}, signature_cache=work / "minhash")
        out = work / "out" / domain
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        corpus.save_corpus(res, out)
        results[domain] = res
    return time.perf_counter() - t, results, files_total


def touch_fraction(corpus_root: Path, fraction: float, seed: int) -> int:
    files = sorted(p for p in corpus_root.rglob("*") if p.is_file() and p.name != "manifest.jsonl")
    chosen = random.Random(seed).sample(files, max(1, round(len(files) * fraction)))
    for p in chosen:
        with open(p, "ab") as f:
            f.write(b"\n")
    return len(chosen)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpora"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--changed", type=float, default=0.01)
    args = ap.parse_args()
    full_t, incr_t, docs_s = [], [], []
    last: dict[str, corpus.CorpusResult] = {}
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="ossa-bench-cur-") as tmp:
            copy = Path(tmp) / "corpus"
            shutil.copytree(args.corpus, copy)
            work = Path(tmp) / "work"
            t_full, results, n_files = run(copy, work)
            n_changed = touch_fraction(copy, args.changed, seed=i)
            t_incr, _, _ = run(copy, work)
            full_t.append(t_full)
            incr_t.append(t_incr)
            docs = sum(len(r.documents) for r in results.values())
            docs_s.append(n_files / t_full)
            last = results
            print(f"[{i + 1}/{args.repeat}] full {t_full:.1f}s ({n_files} files, {docs} documents kept), "
                  f"{n_changed} files changed -> incremental {t_incr:.1f}s, ratio {t_incr / t_full:.3f}")
    print(f"\ncorpus: {args.corpus}")
    print(f"full curation: median {statistics.median(full_t):.1f}s, {statistics.median(docs_s):.1f} files/s")
    print(f"re-curation after {args.changed:.0%} changed: median {statistics.median(incr_t):.1f}s")
    print(f"ratio incremental/full: {statistics.median(incr_t) / statistics.median(full_t):.3f}")
    verdicts = Verdicts()
    verdicts.at_most(f"re-curation after {args.changed:.0%} changed / full curation (median)",
                     statistics.median(incr_t) / statistics.median(full_t), 0.10)
    for domain, r in last.items():
        rep = r.report
        print(f"\n{domain}: {rep['files_seen']} files in -> {rep['documents']} documents out, "
              f"{rep['fragments']} fragments, {rep['quarantined']} quarantined "
              f"(invalid rate {rep['invalid_rate']:.3f}, duplicate rate {rep['duplicate_rate']:.3f})")
        for reason, n in sorted(rep["reasons"].items(), key=lambda kv: -kv[1]):
            print(f"  {reason:<28} {n}")
        print(f"  units: {rep['units_by_type']}  tokens: {rep['tokens_per_split']}  secrets: {rep['secrets_redacted']}")
    return verdicts.report()


if __name__ == "__main__":
    sys.exit(main())
