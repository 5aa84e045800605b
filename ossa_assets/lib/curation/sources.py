"""Corpus sources: where documents come from, configured in YAML, read as a set of files.

Every source kind becomes the same thing for curation: a listing of relative paths, each with a
size and a way to read its bytes. Adding a source is a YAML entry, never a code change:

    sources:
      - name: shared-openapi          # unique; becomes a dynamic partition of its domain
        domain: api_spec
        kind: local                   # local | git | hf_dataset | jsonl | parquet | fsspec
        path: ${OSSA_CORPUS_ROOT}/openapi
        include: ["**/*"]             # globs, dot-folders included (.gitlab-ci.yml, .github/...)
        exclude: []
        license: Apache-2.0           # default licence for documents that state none

Kinds:
- local: a directory (`path`).
- git: a repository (`url`: a local path or a URL) at `ref`, cloned into a cache directory under
  the data root; optional `subdir`. Nothing is fetched when the cache already has the commit.
- hf_dataset: a `datasets` dataset saved to disk (`path`, `split`), one record per document.
- jsonl / parquet: files (`path`, a glob allowed) of records, one per document.
  Record sources name their fields: `text_field` (default text) and `path_field` (default path;
  the record's index when absent); a record's path gets the suffix `suffix` when it has none,
  so the curator knows the format (e.g. `.yaml`).
- fsspec: any fsspec URL (`url`: file://, memory://, s3://, ...) with `storage_options`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import yaml

KINDS = ("local", "git", "hf_dataset", "jsonl", "parquet", "fsspec")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class SourceSpec:
    name: str
    domain: str
    kind: str
    path: str | None = None
    url: str | None = None
    ref: str | None = None
    subdir: str | None = None
    include: tuple[str, ...] = ("**/*",)
    exclude: tuple[str, ...] = ()
    license: str | None = None
    license_manifest: dict[str, Any] | None = None
    text_field: str = "text"
    path_field: str = "path"
    suffix: str = ""
    split: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceFile:
    relpath: str
    size: int
    read: Callable[[], bytes]
    mtime: float = 0.0
    # local files: st_ctime, set by the kernel when the file is created or its metadata changes
    # (cp -p, rsync -a, git and tar can backdate mtime, never ctime); other kinds: the mtime
    ctime: float | None = None

    def __post_init__(self) -> None:
        if self.ctime is None:
            self.ctime = self.mtime


def _expand(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(1) in env:
                return env[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            raise ValueError(f"sources: ${{{m.group(1)}}} is not set and has no default")

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    return value


def load_sources(path: str | Path, domains: tuple[str, ...], env: dict[str, str] | None = None) -> list[SourceSpec]:
    """Read and validate a sources YAML file; `${VAR}` / `${VAR:-default}` expand from env."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    entries = raw.get("sources") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty `sources:` list")
    env = {**os.environ, **(env or {})}
    specs: list[SourceSpec] = []
    seen: set[str] = set()
    allowed = set(SourceSpec.__dataclass_fields__)
    for i, entry in enumerate(entries):
        where = f"{path}: sources[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: each source is a mapping")
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(allowed)}")
        entry = _expand(entry, env)
        name, domain, kind = entry.get("name"), entry.get("domain"), entry.get("kind")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{where}: name {name!r} must match {_NAME.pattern} (it is a partition key)")
        if name in seen:
            raise ValueError(f"{where}: duplicate source name {name!r}")
        if domain not in domains:
            raise ValueError(f"{where} ({name}): domain {domain!r} is not one of {domains}")
        if kind not in KINDS:
            raise ValueError(f"{where} ({name}): kind {kind!r} is not one of {KINDS}")
        need = "url" if kind in ("git", "fsspec") else "path"
        if not entry.get(need):
            raise ValueError(f"{where} ({name}): kind {kind} needs `{need}`")
        seen.add(name)
        for key in ("include", "exclude"):
            if key in entry:
                entry[key] = tuple(entry[key])
        if entry.get("license") == "":
            entry["license"] = None  # unknown, not "the empty licence"
        specs.append(SourceSpec(**entry))
    return specs


def _matches(rel: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    p = PurePosixPath(rel)

    def hit(patterns: tuple[str, ...]) -> bool:
        # PurePosixPath.match("**/*") needs a separator; fnmatch covers top-level files, and
        # neither treats a leading dot specially, so dot-folders are included.
        return any(p.match(g) or fnmatch.fnmatchcase(rel, g) or (g.startswith("**/") and fnmatch.fnmatchcase(rel, g[3:]))
                   for g in patterns)

    return hit(include) and not hit(exclude)


def _walk_local(root: Path, spec: SourceSpec, ctime: bool = True) -> Iterator[SourceFile]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"source {spec.name!r}: {root} is not a directory")
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if p.is_symlink() or not p.is_file():
                continue  # a link could point outside the source root
            rel = p.relative_to(root).as_posix()
            if not _matches(rel, spec.include, spec.exclude):
                continue
            st = p.stat()
            yield SourceFile(rel, st.st_size, (lambda p=p: p.read_bytes()), st.st_mtime,
                             st.st_ctime if ctime else None)


def _git_checkout(spec: SourceSpec, cache_dir: Path) -> Path:
    """Clone the repository into the cache (or fetch into it) and check out `ref`.

    git runs with hooks and credential helpers disabled and no prompt: reading a source must
    never execute code from it. A commit sha already in the cache is checked out without a fetch.
    """
    key = hashlib.sha256(f"{spec.url}".encode()).hexdigest()[:16]
    repo = Path(cache_dir) / f"{spec.name}-{key}"
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
    safe = ["-c", "core.hooksPath=/dev/null", "-c", "credential.helper="]

    def git(*args: str) -> str:
        out = subprocess.run(["git", *safe, *args], cwd=repo if repo.exists() else None, env=env,
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"source {spec.name!r}: git {args[0]} failed: {out.stderr.strip()[:500]}")
        return out.stdout.strip()

    def resolve(candidates: list[str]) -> str | None:
        for c in candidates:
            try:
                return git("rev-parse", "--verify", "--quiet", f"{c}^{{commit}}")
            except RuntimeError:
                continue
        return None

    ref = spec.ref or "HEAD"
    is_sha = bool(re.fullmatch(r"[0-9a-f]{7,40}", ref))
    candidates = [ref] if is_sha else (["origin/HEAD", "HEAD"] if ref == "HEAD" else [f"origin/{ref}", ref])
    if not (repo / ".git").is_dir():
        repo.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", *safe, "clone", "--quiet", "--no-checkout", str(spec.url), str(repo)],
                       env=env, capture_output=True, text=True, timeout=600, check=False)
        if not (repo / ".git").is_dir():
            raise RuntimeError(f"source {spec.name!r}: could not clone {spec.url}")
        target = resolve(candidates)
    else:
        target = resolve(candidates) if is_sha else None  # a branch may have moved: fetch
        if target is None:
            git("fetch", "--quiet", "--tags", "--force", "origin", "+refs/heads/*:refs/remotes/origin/*")
            target = resolve(candidates)
    if target is None:
        raise RuntimeError(f"source {spec.name!r}: ref {ref!r} not found in {spec.url}")
    git("checkout", "--quiet", "--force", "--detach", target)
    git("clean", "-qfdx")
    return repo / (spec.subdir or "")


def _records(spec: SourceSpec) -> Iterator[dict[str, Any]]:
    import glob

    if spec.kind == "hf_dataset":
        from datasets import load_from_disk

        ds = load_from_disk(str(spec.path))
        if hasattr(ds, "keys"):  # a DatasetDict: one split, or all in order
            names = [spec.split] if spec.split else sorted(ds.keys())
            for n in names:
                yield from ds[n]
        else:
            yield from ds
        return
    paths = sorted(glob.glob(str(spec.path))) or [str(spec.path)]
    for p in paths:
        if spec.kind == "jsonl":
            import json

            with open(p, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)
        else:  # parquet
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(p).iter_batches(batch_size=512):
                yield from batch.to_pylist()


def _record_files(spec: SourceSpec) -> Iterator[SourceFile]:
    for i, rec in enumerate(_records(spec)):
        text = rec.get(spec.text_field)
        rel = str(rec.get(spec.path_field) or f"record-{i:08d}")
        rel = PurePosixPath(rel.lstrip("/")).as_posix()
        if spec.suffix and not PurePosixPath(rel).suffix:
            rel += spec.suffix
        data = (text if isinstance(text, str) else "").encode("utf-8")
        if isinstance(text, bytes):
            data = text
        if not _matches(rel, spec.include, spec.exclude):
            continue
        yield SourceFile(rel, len(data), (lambda d=data: d))


def _fsspec_files(spec: SourceSpec) -> Iterator[SourceFile]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(spec.url), **spec.storage_options)
    root = root.rstrip("/")
    for path, info in sorted(fs.find(root, detail=True, withdirs=False).items()):
        rel = path[len(root):].lstrip("/")
        if not rel or not _matches(rel, spec.include, spec.exclude):
            continue
        mtime = info.get("mtime") or info.get("LastModified") or 0.0
        try:
            mtime = float(mtime)
        except (TypeError, ValueError):
            mtime = 0.0
        yield SourceFile(rel, int(info.get("size") or 0), (lambda p=path: fs.cat_file(p)), mtime)


def list_files(spec: SourceSpec, cache_dir: Path) -> list[SourceFile]:
    """Every file (or record) of a source, sorted by relative path; duplicates paths are kept once."""
    if spec.kind == "local":
        files = _walk_local(Path(str(spec.path)), spec)
    elif spec.kind == "git":
        files = _walk_local(_git_checkout(spec, cache_dir), spec, ctime=False)  # a checkout's ctime is the checkout's
    elif spec.kind == "fsspec":
        files = _fsspec_files(spec)
    else:
        files = _record_files(spec)
    seen: dict[str, SourceFile] = {}
    for f in files:
        seen.setdefault(f.relpath, f)
    return [seen[k] for k in sorted(seen)]


def manifest_licenses(spec: SourceSpec, root: Path | None) -> dict[str, str]:
    """relpath -> licence from a JSONL manifest named by the source (e.g. the corpora's manifest)."""
    m = spec.license_manifest
    if not m:
        return {}
    import json

    path = Path(m["path"])
    if not path.is_absolute() and root is not None:
        path = root / path
    if not path.exists():
        if m.get("optional"):
            return {}
        raise FileNotFoundError(f"source {spec.name!r}: licence manifest {path} not found")
    strip = m.get("strip_prefix", "")
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        rel, lic = rec.get(m.get("path_field", "path")), rec.get(m.get("license_field", "license"))
        if isinstance(rel, str) and isinstance(lic, str):
            if strip and rel.startswith(strip):
                rel = rel[len(strip):]
            out[rel] = lic
    return out
