"""Curation of one source, incrementally: files -> outcomes -> scrubbed, filtered documents.

Each file's outcome is cached under its content hash, the hashes of the files it read (a
multi-file spec's fragments), the digests of the source-wide indexes it used, and the curation
settings. A re-run re-curates only files whose own bytes or dependencies changed; everything
else is loaded from the cache.

Each document also records when it *arrived* (`arrival`): in a source's first curation (no
index of an earlier one), its file's mtime, the only history there is; afterwards, for a file
that is new or whose bytes (or the bytes of a file it read) changed since the previous
curation, max(mtime, ctime) of the changed files, since ctime cannot be backdated by cp -p,
rsync -a or git; an unchanged file keeps the arrival it had.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ossa_assets.lib.curation.common import FileOutcome, Limits, ParsedDocument, Rejected, SourceContext, Unit
from ossa_assets.lib.curation.secrets import scrub, scrub_obj
from ossa_assets.lib.curation.sources import SourceFile, SourceSpec
from ossa_assets.lib.domains import REGISTRY

# Bump when any rule that changes outcomes changes (parsers, curators, scrubbing, filters): it is
# part of every cache key and every corpus data version.
CURATION_CODE_VERSION = "9"

CURATORS = {d.name: d.curator for d in REGISTRY}

# Rejections that only mean "not a standalone document": a file some document of the source
# read (a multi-file spec's fragment) is a part of that document, not an invalid file.
FRAGMENT_ELIGIBLE = frozenset({"not_openapi", "not_nodeset", "not_pipeline", "unsupported_format"})

# Reasons that mean the file is broken, hostile or fails its format's validation (the invalid
# rate); the other reasons mean the file is fine but out of scope (not a document of the domain,
# a duplicate, filtered by language or size).
INVALID_REASONS = frozenset({
    "empty", "binary", "not_utf8", "too_large", "unreadable", "too_deep", "malformed_yaml",
    "malformed_json", "malformed_xml", "unsafe_xml", "yaml_alias_bomb", "yaml_unsafe_tag",
    "curator_error", "invalid_openapi", "unresolvable_ref", "remote_ref", "ref_outside_root",
    "bundle_too_large", "unsupported_openapi_version", "invalid_gitlab_ci", "invalid_github_actions",
    "invalid_pipeline", "invalid_nodeset", "ref_cycle", "validator_error",
})

_TOKEN = re.compile(r"\w+|[^\w\s]")
_EN_STOPWORDS = frozenset(
    "the of and to a in is that for it as with be on are this by an or not from at which can "
    "you if will has have its was may when all each must should".split()
)


@dataclass(frozen=True)
class CurationSettings:
    limits: Limits = Limits()
    min_bytes: int = 16  # anything smaller holds no document
    prose_languages: tuple[str, ...] = ("en",)  # prose in other languages is filtered; () = all
    max_text_chars: int = 2_000_000  # text kept per document (the document hash covers all of it)

    def key(self) -> str:
        from ossa_assets.lib.curation.cicd.schemas import schemas_key

        # the vendored platform schemas decide outcomes too: a check-jsonschema update re-curates
        return hashlib.sha256(
            json.dumps({"code": CURATION_CODE_VERSION, "schemas": schemas_key(), **asdict(self)},
                       sort_keys=True, default=str).encode()
        ).hexdigest()


@dataclass
class Quarantined:
    source: str
    path: str
    reason: str
    detail: str = ""


@dataclass
class CuratedDoc:
    doc_id: str  # sha256 of the file's bytes
    domain: str
    source: str
    path: str
    format: str
    text: str
    n_bytes: int
    n_tokens: int
    license: str
    language: str
    mtime: float
    meta: str  # JSON
    units: list[dict[str, Any]]
    secrets_redacted: int
    # when the document arrived (module docstring); None only in snapshots written before the
    # field existed, read back as the mtime
    arrived: float | None = None

    def __post_init__(self) -> None:
        if self.arrived is None:
            self.arrived = self.mtime


@dataclass
class SourceResult:
    source: str
    domain: str
    files_seen: int = 0
    documents: list[CuratedDoc] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    fragments: list[str] = field(default_factory=list)
    recomputed: int = 0
    from_cache: int = 0
    secrets: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def count_tokens(text: str) -> int:
    """A tokenizer-independent count (words and punctuation), for reports and filters."""
    return sum(1 for _ in _TOKEN.finditer(text))


_OTHER_STOPWORDS = frozenset(
    "der die das und ist nicht mit den von zu le la les des est une pour dans que el los las del por "
    "una para con il di che non per gli della em os uma não".split()
)


def prose_language(text: str) -> str:
    """en | other (another natural language) | code (listings with little prose) | und.

    A stopword heuristic, not a model: enough to keep English prose, drop prose in other
    languages, and not mistake a code-only page for a foreign language.
    """
    sample = text[:20_000]
    words = re.findall(r"[^\W\d_]+", sample.lower())
    if len(words) < 20:
        return "und"
    if sum(w in _EN_STOPWORDS for w in words) / len(words) >= 0.08:
        return "en"
    letters = [c for c in sample if c.isalpha()]
    non_ascii = sum(not c.isascii() for c in letters) / max(len(letters), 1)
    if non_ascii >= 0.2 or sum(w in _OTHER_STOPWORDS for w in words) / len(words) >= 0.08:
        return "other"
    return "code"


def _load(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


RAW_CACHE_BYTES = 64 * 2**20  # file bytes kept between hashing and curating (fragments read twice)


class _ByteLRU:
    """File bytes, least recently used dropped past a byte budget: memory stays bounded by the
    budget plus the largest file, whatever the source's size."""

    def __init__(self, budget: int):
        from collections import OrderedDict

        self.budget = budget
        self.used = 0
        self._d: "OrderedDict[str, bytes]" = OrderedDict()

    def get(self, key: str) -> bytes | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: str, value: bytes) -> None:
        if key in self._d:
            self.used -= len(self._d.pop(key))
        self._d[key] = value
        self.used += len(value)
        while self.used > self.budget and len(self._d) > 1:
            _, old = self._d.popitem(last=False)
            self.used -= len(old)


def index_path(cache_root: Path, source: str) -> Path:
    """The per-source curation index: it exists once the source has been curated."""
    return Path(cache_root) / "index" / f"{source}.json"


def arrival(mtime: float, ctime: float, first_curation: bool) -> float:
    """When a new or changed file arrived (module docstring)."""
    return mtime if first_curation else max(mtime, ctime)


class _Cache:
    """Content-addressed outcome blobs plus, per source, the index of what each file depended on."""

    def __init__(self, root: Path, source: str):
        self.root = Path(root)
        self.index_path = index_path(self.root, source)
        self.index: dict[str, dict[str, Any]] = {}
        self.has_history = False  # an earlier curation of the source left a readable index
        if self.index_path.exists():
            try:
                self.index = json.loads(self.index_path.read_text())
                self.has_history = True
            except (OSError, json.JSONDecodeError):
                # a damaged index only costs a full re-curation; arrivals fall back to mtimes
                # rather than every file arriving now
                self.index = {}

    def blob(self, key: str) -> Path:
        return self.root / "blobs" / key[:2] / f"{key}.json.gz"

    def get(self, key: str) -> dict[str, Any] | None:
        p = self.blob(key)
        try:
            with gzip.open(p, "rt", encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError, EOFError):
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        p = self.blob(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{time.monotonic_ns()}.tmp")
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=3) as f:
            json.dump(value, f)
        tmp.replace(p)

    def save_index(self) -> None:
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.index, sort_keys=True))
        tmp.replace(self.index_path)


def _finish(spec: SourceSpec, sf: SourceFile, outcome: FileOutcome, doc_id: str, settings: CurationSettings,
            default_license: str | None, arrived: float | None = None) -> dict[str, Any]:
    """Outcome -> cacheable record: scrubbed, language/size filtered, licence resolved."""
    if outcome.status != "document" or outcome.document is None:
        counts: Counter[str] = Counter()
        return {"status": "rejected", "reason": outcome.reason or "rejected",
                "detail": scrub(outcome.detail, counts)}
    doc: ParsedDocument = outcome.document
    counts = Counter()
    text = scrub(doc.text[: settings.max_text_chars], counts)
    language = "n/a"
    if doc.format == "prose":
        language = prose_language(text)
        # "und" (too little text to tell) and "code" (listings) are kept: only prose clearly in
        # another natural language goes
        if settings.prose_languages and language not in (*settings.prose_languages, "und", "code"):
            return {"status": "rejected", "reason": "language", "detail": f"prose language {language}"}
    units = [
        {"unit_type": u.unit_type, "title": scrub(u.title, counts), "text": scrub(u.text, counts),
         "meta": json.dumps(scrub_obj(u.meta, counts), sort_keys=True, default=str)}
        for u in doc.units[: settings.limits.max_units]
        if isinstance(u, Unit) and u.title.strip() and u.text.strip()
    ]
    return {
        "status": "document",
        "doc": {
            "doc_id": doc_id, "domain": spec.domain, "source": spec.name, "path": sf.relpath,
            "format": doc.format, "text": text, "n_bytes": sf.size, "n_tokens": count_tokens(text),
            "license": doc.license or default_license or "", "language": language, "mtime": sf.mtime,
            "arrived": sf.mtime if arrived is None else arrived,
            "meta": json.dumps(scrub_obj(doc.meta, counts), sort_keys=True, default=str),
            "units": units, "secrets_redacted": sum(counts.values()),
        },
        "secrets": dict(counts),
    }


def curate_source(
    spec: SourceSpec,
    files: list[SourceFile],
    cache_root: Path,
    settings: CurationSettings,
    licenses: dict[str, str] | None = None,
    log: Callable[[str], None] | None = None,
) -> SourceResult:
    """Curate every file of one source (cached per file), then relabel fragments and dedupe."""
    t0 = time.perf_counter()
    curate_file = _load(CURATORS[spec.domain])
    limits = settings.limits
    skey = settings.key()
    cache = _Cache(cache_root, spec.name)
    licenses = licenses or {}
    by_path = {f.relpath: f for f in files}
    raw_cache = _ByteLRU(RAW_CACHE_BYTES)
    hashes: dict[str, str] = {}

    def read(rel: str) -> bytes:
        data = raw_cache.get(rel)
        if data is None:
            f = by_path[rel]
            if f.size > limits.max_bytes:
                raise Rejected("too_large", f"{f.size} bytes > {limits.max_bytes}")
            data = f.read()
            raw_cache.put(rel, data)
        return data

    def file_hash(rel: str) -> str:
        if rel not in hashes:
            f = by_path[rel]
            if f.size > limits.max_bytes:  # never read a huge file just to hash it
                hashes[rel] = f"size:{f.size}"
            else:
                hashes[rel] = hashlib.sha256(read(rel)).hexdigest()
        return hashes[rel]

    shared = SourceContext(by_path, read, limits, source=spec.name)
    index_digests: dict[str, str] = {}

    def current_index_digest(name: str, builder: str) -> str:
        if name not in index_digests:
            index_digests[name] = _digest(shared.index(name, _load(builder)))
        return index_digests[name]

    previous = dict(cache.index)  # the previous curation's view of each file

    def changed(rel: str) -> bool:
        """New, or its bytes changed, since the previous curation of the source."""
        entry = previous.get(rel)
        return entry is None or entry.get("hash") != file_hash(rel)

    def arrived_at(rel: str, deps: list[str]) -> float:
        sf = by_path[rel]
        if not cache.has_history:
            return arrival(sf.mtime, sf.ctime, True)
        kept = previous.get(rel, {}).get("arrived", sf.mtime)  # entries from before arrivals: mtime
        moved = [by_path[d] for d in (rel, *deps) if changed(d)]
        if not moved:
            return kept
        newest = max(arrival(f.mtime, f.ctime, False) for f in moved)
        return newest if changed(rel) else max(kept, newest)  # a fragment it reads changed

    records: dict[str, dict[str, Any]] = {}
    deps_of: dict[str, list[str]] = {}
    new_index: dict[str, dict[str, Any]] = {}
    result = SourceResult(spec.name, spec.domain, files_seen=len(files))
    for sf in files:
        rel = sf.relpath
        try:
            h = file_hash(rel)
        except (OSError, Rejected) as e:
            records[rel] = {"status": "rejected", "reason": "unreadable", "detail": str(e)[:300]}
            continue
        entry = cache.index.get(rel)
        cached = None
        if (
            entry
            and entry.get("settings") == skey
            and entry.get("hash") == h
            and all(d in by_path and file_hash(d) == dh for d, dh in entry.get("deps", {}).items())
            and all(current_index_digest(n, b) == dg for n, (b, dg) in entry.get("indexes", {}).items())
        ):
            cached = cache.get(entry["key"])
        if cached is not None:
            # the file and what it read are unchanged: it keeps its arrival (the index's is the
            # source's own; a blob's key does not name the source)
            arrived = entry.get("arrived", cached.get("doc", {}).get("arrived", sf.mtime))
            if cached["status"] == "document":
                cached["doc"]["arrived"] = arrived
            records[rel] = cached
            deps_of[rel] = sorted(entry.get("deps", {}))
            new_index[rel] = {**entry, "arrived": arrived}
            result.from_cache += 1
            continue
        ctx = SourceContext(by_path, read, limits, source=spec.name)
        ctx.share_indexes_with(shared)
        if sf.size < settings.min_bytes:
            outcome = FileOutcome(rel, "rejected", "empty" if sf.size == 0 else "too_small", f"{sf.size} bytes")
        elif sf.size > limits.max_bytes:
            outcome = FileOutcome(rel, "rejected", "too_large", f"{sf.size} bytes > {limits.max_bytes}")
        else:
            try:
                outcome = curate_file(rel, read(rel), ctx)
            except Rejected as r:
                outcome = FileOutcome.rejected(rel, r)
            except Exception as e:  # a curator bug must not lose the rest of the source
                outcome = FileOutcome(rel, "rejected", "curator_error", type(e).__name__)
        deps = {d: file_hash(d) for d in sorted(ctx.reads) if d != rel and d in by_path}
        arrived = arrived_at(rel, list(deps))
        record = _finish(spec, sf, outcome, h, settings, licenses.get(rel, spec.license), arrived)
        indexes = {n: (b, current_index_digest(n, b)) for n, b in ctx.used_index.items()}
        key = _digest({"settings": skey, "path": rel, "hash": h, "deps": deps, "indexes": indexes})
        cache.put(key, record)
        new_index[rel] = {"settings": skey, "hash": h, "deps": deps, "indexes": indexes, "key": key,
                          "arrived": arrived}
        records[rel] = record
        deps_of[rel] = sorted(deps)
        result.recomputed += 1
    cache.index = new_index
    cache.save_index()

    consumed = {d for rel, r in records.items() if r["status"] == "document" for d in deps_of.get(rel, [])}
    # files a GitLab pipeline includes are parts of that pipeline, whatever they look like alone
    # (jobs naming templates of a sibling include, or valid jobs its units already hold)
    # (jobs naming templates of a sibling include, or valid jobs its units already hold); a
    # `.gitlab-ci.yml` stays a pipeline of its own: GitLab runs it by itself as well
    included = {p for r in records.values() if r["status"] == "document" and r["doc"]["format"] == "gitlab_ci"
                for p in json.loads(r["doc"]["meta"]).get("included_local", [])
                if p.rsplit("/", 1)[-1] != ".gitlab-ci.yml"}
    seen_ids: dict[str, str] = {}
    secrets: Counter[str] = Counter()
    for rel in sorted(records):
        r = records[rel]
        if rel in included and (r["status"] == "document" or r["reason"] in FRAGMENT_ELIGIBLE | {"invalid_gitlab_ci"}):
            result.fragments.append(rel)
            continue
        if r["status"] != "document":
            if rel in consumed and r["reason"] in FRAGMENT_ELIGIBLE:
                result.fragments.append(rel)
            else:
                result.quarantined.append(Quarantined(spec.name, rel, r["reason"], r.get("detail", "")))
            continue
        d = r["doc"]
        if d["doc_id"] in seen_ids:
            result.quarantined.append(Quarantined(spec.name, rel, "duplicate", f"same bytes as {seen_ids[d['doc_id']]}"))
            continue
        seen_ids[d["doc_id"]] = rel
        secrets.update(r.get("secrets", {}))
        result.documents.append(CuratedDoc(**d))
    result.secrets = dict(sorted(secrets.items()))
    result.seconds = time.perf_counter() - t0
    if log:
        log(f"source {spec.name}: {len(files)} files, {result.recomputed} curated, {result.from_cache} from cache, "
            f"{len(result.documents)} documents, {len(result.fragments)} fragments, {len(result.quarantined)} quarantined")
    return result


def save_source_result(result: SourceResult, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    with gzip.open(out_dir / "documents.jsonl.gz", "wt", encoding="utf-8", compresslevel=3) as f:
        for d in result.documents:
            f.write(json.dumps(asdict(d)) + "\n")
    with open(out_dir / "quarantine.jsonl", "w", encoding="utf-8") as f:
        for q in result.quarantined:
            f.write(json.dumps(asdict(q), sort_keys=True) + "\n")
    summary = {k: v for k, v in asdict(result).items() if k not in ("documents", "quarantined")}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))


def load_source_result(out_dir: Path) -> SourceResult:
    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text())
    result = SourceResult(**summary)
    with gzip.open(out_dir / "documents.jsonl.gz", "rt", encoding="utf-8") as f:
        # a snapshot written before arrivals existed: CuratedDoc's arrived defaults to the mtime
        result.documents = [CuratedDoc(**json.loads(line)) for line in f]
    with open(out_dir / "quarantine.jsonl", encoding="utf-8") as f:
        result.quarantined = [Quarantined(**json.loads(line)) for line in f if line.strip()]
    return result
