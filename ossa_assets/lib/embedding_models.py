"""The three embedding models: training pairs mined from curated corpora, the model, its training
and its retrieval evaluation. No Dagster here.

| model      | dim  | what it embeds                                   | pairs it is trained on (anchor -> positive)
|------------|------|--------------------------------------------------|---------------------------------------------
| code       | 768  | specs, NodeSets, pipelines (non-prose documents) | operation summary -> operation, schema name -> schema, BrowseName/Description -> node, CI job name -> job
| docs       | 1536 | every curated document (the search route)        | section heading -> section body, node Description -> node
| capability | 512  | capability cards: what an agent can call         | operation summary -> HTTP operation card, method description -> OPC UA method card, job name -> CI job card

Every model starts from the packaged all-MiniLM-L6-v2 (384-d) or a configured local base, adds a
Dense projection to its dimension (semi-orthogonal initialisation: before training it ranks
exactly as the base does) and trains with MultipleNegativesRankingLoss inside a MatryoshkaLoss, so
the first 64/128/256/... dimensions are an embedding on their own.

The retrieval evaluation and the gate on it live in `retrieval_eval.py`.

Pairs come from the curated units (operations, schemas, nodes, jobs, sections) and keep their
document's split, so held-out pairs are from documents the model never saw. The anchor's words are
cut out of the positive: a summary that is also written inside the operation would make the pair
a string match, which any model wins.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

MAX_POSITIVE_CHARS = 2000  # beyond max_seq_length tokens anyway
MIN_ANCHOR_CHARS = 3


@dataclass(frozen=True)
class ModelKind:
    name: str
    dim: int
    matryoshka_dims: tuple[int, ...]
    alias: str  # the Qdrant alias readers use
    description: str


KINDS: dict[str, ModelKind] = {
    "code": ModelKind("code", 768, (768, 512, 256, 128, 64), "code-live",
                      "code search: specs, NodeSets and pipelines"),
    "docs": ModelKind("docs", 1536, (1536, 1024, 768, 512, 256, 128, 64), "docs-live",
                      "documentation search over every curated document"),
    "capability": ModelKind("capability", 512, (512, 256, 128, 64), "capability-live",
                            "agent capability discovery: operations, methods, jobs an agent can call"),
}


def kind_of(name: str) -> ModelKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown embedding model {name!r}; known: {sorted(KINDS)}") from None


# -- pairs -----------------------------------------------------------------------------------


def _meta(u: dict[str, Any]) -> dict[str, Any]:
    m = u.get("meta") or {}
    return json.loads(m) if isinstance(m, str) else m


def _pieces(title: str) -> list[str]:
    """The natural-language pieces of a unit title ("job — workflow", "A > B", "name (stage x)")."""
    parts = re.split(r" — | > | \(stage [^)]*\)", title)
    return sorted({p.strip() for p in parts if len(p.strip()) >= MIN_ANCHOR_CHARS}, key=len, reverse=True)


def strip_anchor(text: str, anchor_title: str) -> str:
    """`text` with the words of its anchor removed, so a pair is not a string match."""
    for p in _pieces(anchor_title):
        text = text.replace(p, " ")
    return text[:MAX_POSITIVE_CHARS].strip()


_NODE_LINE = re.compile(r"^(\w+): ?(.*)$", re.M)


def _node_fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, v in _NODE_LINE.findall(text)}


def _names(v: Any) -> str:
    """A comma list from what curators record: strings, or lists/dicts of them (a GitLab `needs:`
    entry can be {job: x, artifacts: true}, a matrix job a list)."""
    if v is None or v == "":
        return ""
    if isinstance(v, dict):
        return str(v.get("job") or v.get("name") or json.dumps(v, sort_keys=True))
    if isinstance(v, (list, tuple)):
        return ", ".join(x for x in (_names(i) for i in v) if x)
    return str(v)


def operation_card(m: dict[str, Any]) -> str:
    params = _names(m.get("parameters")) or "none"
    schemas = _names(m.get("schemas")) or "none"
    tags = _names(m.get("tags"))
    card = (f"HTTP operation {str(m.get('method', '')).upper()} {m.get('path', '')}; "
            f"operationId {m.get('operation_id') or '-'}; parameters: {params}; schemas: {schemas}")
    return card + (f"; tags: {tags}" if tags else "")


def method_card(text: str, m: dict[str, Any]) -> str:
    f = _node_fields(text)
    return (f"OPC UA method {_names(m.get('browse_name')) or f.get('BrowseName', '')}; parent: {f.get('Parent', '-')}; "
            f"namespace: {f.get('Namespace', '-')}")


def job_card(text: str, m: dict[str, Any]) -> str:
    runner = _names(m.get("runs_on")) or _names(m.get("image")) or "-"
    bits = [f"CI job; stage: {_names(m.get('stage')) or '-'}; runs on: {runner}",
            f"uses: {_names(m.get('uses')) or '-'}", f"needs: {_names(m.get('needs')) or '-'}"]
    # the commands it runs say what it does; the job's name is the anchor, so it is cut out
    return "; ".join(bits) + "\n" + text


def _unnamed_operation(u: dict[str, Any], m: dict[str, Any]) -> bool:
    """An operation without a summary is titled "METHOD /path": as an anchor that is the card's
    own words, and cut out of the card it leaves nothing."""
    return u["unit_type"] == "operation" and not (m.get("summary") or "").strip()


def _anchor_title(u: dict[str, Any], m: dict[str, Any]) -> str:
    """The unit's own name as a training anchor: an operation's title also names its API
    ("List pets — Swagger Petstore"), which every operation of the spec shares, so as an anchor
    it would only teach the model to match the API's name."""
    title = (u.get("title") or "").strip()
    if u["unit_type"] == "operation" and isinstance(m.get("name"), str) and m["name"].strip():
        return m["name"].strip()
    return title


def _capability(u: dict[str, Any]) -> tuple[str, str, str] | None:
    """(pair type, intent, card body) when the unit is something an agent can call."""
    t, text, m = u["unit_type"], u.get("text") or "", _meta(u)
    title = _anchor_title(u, m)
    if t == "operation" and m.get("path"):
        return t, title, operation_card(m)
    if t == "node" and m.get("node_class") == "Method":
        return "method", _node_fields(text).get("Description", "") or title, method_card(text, m)
    if t == "job":
        return t, title, job_card(text, m)
    return None


def _pairs_for_unit(kind: str, u: dict[str, Any]) -> Iterable[tuple[str, str, str]]:
    """(pair type, anchor, positive) for one unit and one model."""
    t, text = u["unit_type"], u.get("text") or ""
    title = _anchor_title(u, _meta(u))
    if len(title) < MIN_ANCHOR_CHARS or not text.strip():
        return
    if kind == "code" and t in ("operation", "schema", "node", "job") and not _unnamed_operation(u, _meta(u)):
        yield t, title, strip_anchor(text, title)
    elif kind == "docs":
        if t == "section":
            yield t, title.split(" > ")[-1], strip_anchor(text, title.split(" > ")[-1])
        elif t == "node":
            desc = _node_fields(text).get("Description", "")
            if len(desc) >= 12:
                yield "node_description", desc, strip_anchor(text, desc)
    elif kind == "capability":
        cap = _capability(u)
        if cap and not _unnamed_operation(u, _meta(u)):
            yield cap[0], cap[1], strip_anchor(cap[2], cap[1])


def mine_pairs(kind: str, units: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anchor/positive pairs of one model from curated units (any split), deduplicated."""
    kind_of(kind)
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for u in units:
        for pair_type, anchor, positive in _pairs_for_unit(kind, u):
            if len(positive) < MIN_ANCHOR_CHARS or (anchor, positive) in seen:
                continue
            seen.add((anchor, positive))
            out.append({"anchor": anchor, "positive": positive, "pair_type": pair_type,
                        "unit_id": u.get("unit_id", ""), "doc_id": u.get("doc_id", ""),
                        "domain": u.get("domain", ""), "source": u.get("source", "")})
    return out


def capability_cards(units: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the capability index holds: one card per operation, OPC UA method and CI job, with
    its name (unlike a training positive, an indexed card keeps every word a searcher may use)."""
    cards = []
    for u in units:
        cap = _capability(u)
        if cap and len((u.get("title") or "").strip()) >= MIN_ANCHOR_CHARS:
            cards.append({"text": f"{u['title']}\n{cap[2]}"[:MAX_POSITIVE_CHARS], "title": u.get("title", ""),
                          "unit_id": u.get("unit_id", ""), "doc_id": u.get("doc_id", ""),
                          "domain": u.get("domain", ""), "source": u.get("source", ""), "path": u.get("path", "")})
    return cards


# -- the model -------------------------------------------------------------------------------


def build_model(base_path: str, dim: int, max_seq_length: int, seed: int = 0, device: str | None = None):
    """Base encoder + pooling, a Dense projection to `dim`, then Normalize.

    The projection starts semi-orthogonal (W^T W = I when dim >= the base's width), so cosine
    similarities, and with them every ranking, start out exactly the base model's.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    base = SentenceTransformer(base_path, device=device, local_files_only=True)
    width = base.get_embedding_dimension()
    modules = [m for m in base if not isinstance(m, Normalize)]
    g = torch.Generator().manual_seed(seed)
    w = torch.empty(dim, width)
    # orthogonal_ has no generator argument: QR of a seeded Gaussian is the same construction
    q, r = torch.linalg.qr(torch.randn(max(dim, width), min(dim, width), generator=g))
    q = q * torch.sign(torch.diagonal(r))
    w.copy_(q if dim >= width else q.T)
    dense = Dense(width, dim, bias=True, activation_function=torch.nn.Identity(),
                  init_weight=w, init_bias=torch.zeros(dim))
    model = SentenceTransformer(modules=[*modules, dense, Normalize()], device=device)
    model.max_seq_length = max_seq_length
    return model


@dataclass
class EmbedTrainSettings:
    max_seq_length: int = 256
    batch_size: int = 32
    learning_rate: float = 2e-5
    max_steps: int = -1  # -1: epochs decide
    epochs: float = 1.0
    warmup_ratio: float = 0.1
    seed: int = 0


@dataclass
class EmbedTrainReport:
    kind: str
    dim: int
    matryoshka_dims: list[int]
    train_pairs: int
    steps: int
    train_seconds: float
    step_losses: list[float] = field(default_factory=list)
    base_path: str = ""


def train_embedding_model(
    kind: str,
    base_path: str,
    pairs: Sequence[dict[str, Any]],
    out_dir: str | Path,
    settings: EmbedTrainSettings,
    work_dir: str | Path,
    log_metrics: Callable[[dict[str, float], int], None] | None = None,
) -> EmbedTrainReport:
    """Train one model on anchor/positive pairs and save it as a sentence-transformers folder."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import PrinterCallback, TrainerCallback, set_seed

    k = kind_of(kind)
    if len(pairs) < 2:
        raise ValueError(f"{kind}: {len(pairs)} training pairs; in-batch negatives need at least 2")
    set_seed(settings.seed)
    model = build_model(base_path, k.dim, settings.max_seq_length, settings.seed)
    ds = Dataset.from_dict({"anchor": [p["anchor"] for p in pairs], "positive": [p["positive"] for p in pairs]})
    # MNRL scores every other positive in the batch as a negative: a batch smaller than the
    # data still has negatives; NO_DUPLICATES keeps an anchor's own twin out of them
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), matryoshka_dims=list(k.matryoshka_dims))
    losses: list[float] = []

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                if log_metrics:
                    log_metrics({"train_loss": float(logs["loss"])}, state.global_step)

    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir),
        per_device_train_batch_size=min(settings.batch_size, len(pairs)),
        learning_rate=settings.learning_rate,
        max_steps=settings.max_steps,
        num_train_epochs=settings.epochs,
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        seed=settings.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        dataloader_drop_last=len(pairs) > settings.batch_size,
        disable_tqdm=True,
        dataloader_pin_memory=device_is_cuda(),
    )
    # no model-card widgets (they encode samples at start) and no per-step prints on stdout:
    # the callback above logs to MLflow
    model.model_card_data.generate_widget_examples = False
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss, callbacks=[_Log()])
    trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    model.save(str(out_dir), create_model_card=False)
    report = EmbedTrainReport(kind=kind, dim=k.dim, matryoshka_dims=list(k.matryoshka_dims),
                              train_pairs=len(pairs), steps=int(out.global_step), train_seconds=seconds,
                              step_losses=losses, base_path=str(base_path))
    (Path(out_dir) / "ossa_train_report.json").write_text(json.dumps(asdict(report), indent=2))
    return report


def device_is_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
